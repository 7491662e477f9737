"""The GPU input path's decoding (chapter 2b): out-of-memory errors, the wait before nvJPEG writes, and the decode thread.

On the CPU, `GpuLoader` runs every line it runs on a GPU except nvjpeg itself (torchvision's CPU decoder) and the
side stream (a no-op). The CPU tests here replace only what they must: the decoder, with stand-ins that raise the
errors torchvision's `decode_jpegs_cuda.cpp` raises (messages quoted from its source and from the strings in the
installed `image_stable.so`), and the side stream, with one that keeps `SideStream`'s contract (`record()` marks
what is queued so far; the marker's `synchronize()` blocks the host until it has run) and logs the calls.

The CUDA tests, skipped here with the reason, run the real nvjpeg against work deliberately queued on the side
stream: the corruption pytorch/vision PR #9606 reproduces, which no CPU can show."""
import subprocess, sys, textwrap, threading
from contextlib import nullcontext

import pytest, torch
from conftest import ROOT, cli_env, make_image_folder

from resnext_nb.data import DataConfig, DataError, EpochBatches, ImageFolderSource
from resnext_nb.device import gpu_jpeg_unavailable_reason
import resnext_nb.gpu_jpeg as gpu_jpeg
from resnext_nb.gpu_jpeg import GpuLoader, decode_jpegs

NO_GPU_JPEG = gpu_jpeg_unavailable_reason('cuda')
needs_cuda = pytest.mark.skipif(NO_GPU_JPEG is not None, reason=f"needs CUDA with nvjpeg: {NO_GPU_JPEG}")
CPU = torch.device('cpu')

# What reaches Python when the device runs out of memory inside torchvision's decode_jpegs_cuda (0.29, stable ABI):
# the output tensors come from torch's caching allocator inside the decoder's try block, whose catch rethrows
# everything as `STD_TORCH_CHECK(false, "Error while decoding JPEG images: ", e.what())`, a plain RuntimeError;
# the stable ABI carries the allocator's text across ("... (originally from ... API call failed at ...)").
TORCH_OOM = ("Error while decoding JPEG images: CUDA out of memory. Tried to allocate 144.00 MiB. GPU 0 has a total "
             "capacity of 139.80 GiB of which 20.00 MiB is free. (originally from torch_call_dispatcher(\"aten::empty\", "
             "\"memory_format\", stack.data(), TORCH_ABI_VERSION) API call failed at torch/csrc/stable/ops.h, line 631)")
# nvJPEG's own buffers are cudaMalloc'ed by nvJPEG: it fails with NVJPEG_STATUS_ALLOCATOR_FAILURE (5 in nvjpeg.h),
# reported by `STD_TORCH_CHECK(status == NVJPEG_STATUS_SUCCESS, "Failed to decode batch: ", status)`.
NVJPEG_OOM = "Error while decoding JPEG images: Failed to decode batch: 5"
# A JPEG nvjpeg refuses: `"Failed to get image info: ", status` with NVJPEG_STATUS_BAD_JPEG (3).
REFUSED = "Error while decoding JPEG images: Failed to get image info: 3"


def decode_threads():
    return [t for t in threading.enumerate() if 'decode' in t.name]


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    "12 train images (3 batches of 4) and 4 val images, each JPEG distinct."
    return make_image_folder(tmp_path_factory.mktemp('gpu-loader') / 'data', {'train': {'a': 6, 'b': 6}, 'val': {'a': 2, 'b': 2}},
                             size=40, seed=1)


def gpu_loader(root, workers=0, device=CPU, split='train', train=None, **cfg):
    "A `GpuLoader` over `root/split` in batches of 4; `train` (random crops) defaults to `split == 'train'`."
    source = ImageFolderSource(root / split)
    train = split == 'train' if train is None else train
    return GpuLoader(source, EpochBatches(len(source), 4, train=train, seed=0), DataConfig(image_size=24, workers=workers, **cfg),
                     device, train=train, name=split)


def jpegs(root, n=3):
    return [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in sorted((root / 'train').rglob('*.jpg'))[:n]]


def raising(error, only_batches=True):
    "A stand-in for torchvision's decode_jpeg that raises `error` (for a batch call only, or for every call)."
    real = loaders_decode_jpeg()
    def decode(data, **kw):
        if isinstance(data, list) or not only_batches: raise error
        return real(data, **kw)
    return decode


def loaders_decode_jpeg():
    from torchvision.io import decode_jpeg
    return decode_jpeg


# ------------------------------------------------------------------ finding 9: out of memory is not a refusal

@pytest.mark.parametrize('error', [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 144.00 MiB"),
                                   RuntimeError(TORCH_OOM), RuntimeError(NVJPEG_OOM)],
                         ids=['OutOfMemoryError', 'torch allocator via torchvision', 'nvJPEG allocator'])
def test_out_of_memory_propagates_instead_of_falling_back_to_pillow(folder, monkeypatch, error):
    import torchvision.io
    monkeypatch.setattr(torchvision.io, 'decode_jpeg', raising(error))
    with pytest.raises(torch.OutOfMemoryError) as e:
        decode_jpegs(jpegs(folder), CPU)
    msg = str(e.value)
    assert '\n' not in msg
    assert 'decoding a batch of 3 JPEGs' in msg and '--batch-size' in msg and '--data-backend pil' in msg, msg


def test_a_refused_jpeg_still_falls_back_to_pillow(folder, monkeypatch):
    import torchvision.io
    real = loaders_decode_jpeg()
    datas = jpegs(folder)
    def refuse_second(data, **kw):  # nvjpeg fails the whole batch for one image, then refuses that image alone
        if isinstance(data, list) or data is datas[1]: raise RuntimeError(REFUSED)
        return real(data, **kw)
    monkeypatch.setattr(torchvision.io, 'decode_jpeg', refuse_second)
    out = decode_jpegs(datas, CPU)
    assert [o is None for o in out] == [False, True, False]


def test_out_of_memory_in_the_loader_reaches_the_caller_in_one_line(folder, monkeypatch):
    import torchvision.io
    monkeypatch.setattr(torchvision.io, 'decode_jpeg', raising(RuntimeError(TORCH_OOM), only_batches=False))
    gl = gpu_loader(folder)
    with pytest.raises(torch.OutOfMemoryError, match=r'decoding a batch of 4 JPEGs.*lower --batch-size') as e:
        list(gl)
    assert '\n' not in str(e.value) and gl.cpu_decoded == []  # nothing went to Pillow
    assert decode_threads() == []


# ------------------------------------------------------------------ finding 3: wait for the side stream before decoding

class LoggingSideStream:
    "Keeps `SideStream`'s contract (record marks what is queued; its marker's synchronize waits on the host) and logs."
    def __init__(self, log): self.log = log
    def use(self): return nullcontext()
    def record(self):
        log = self.log
        class Marker:
            def synchronize(self): log.append('waited')
        return Marker()
    def hand_over(self, marker, *tensors): self.log.append('handed over')


@pytest.mark.parametrize('train', [True, False], ids=['train', 'val'])
def test_every_decode_waits_for_the_side_stream_first(folder, monkeypatch, train):
    log = []
    real = gpu_jpeg.decode_jpegs
    def logging_decode(datas, device):
        log.append('decode')
        return real(datas, device)
    monkeypatch.setattr(gpu_jpeg, 'decode_jpegs', logging_decode)
    gl = gpu_loader(folder, train=train, hflip=0.0)  # no flips, so no blocking copy hides a missing wait; 3 batches
    gl.side = LoggingSideStream(log)
    n = len(list(gl))
    decodes = [i for i, e in enumerate(log) if e == 'decode']
    assert n == len(decodes) == 3 and all(i > 0 and log[i - 1] == 'waited' for i in decodes), log


# ------------------------------------------------------------------ finding 4: decode in a background thread

def test_batch_n_plus_1_is_decoded_while_batch_n_is_in_use(folder, monkeypatch):
    "The stand-in decoder of batch k + 1 waits until the consumer holds batch k: only a decode thread gets past it."
    real = gpu_jpeg.decode_jpegs
    holding = [threading.Event() for _ in range(3)]
    calls, threads = [], []
    def decode_after_handover(datas, device):
        k = len(calls); calls.append(k); threads.append(threading.current_thread())
        if k > 0 and not holding[k - 1].wait(timeout=10):
            raise AssertionError(f"batch {k} was decoded before batch {k - 1} was handed out: the decode blocks the consumer")
        return real(datas, device)
    monkeypatch.setattr(gpu_jpeg, 'decode_jpegs', decode_after_handover)
    gl = gpu_loader(folder)
    got = []
    for k, (x, y) in enumerate(gl):
        got.append(x); holding[k].set()
    assert len(got) == 3 and threading.main_thread() not in threads


def test_the_thread_keeps_order_resume_and_equality(folder):
    full = [x for x, _ in gpu_loader(folder)]
    assert all(torch.equal(a, b) for a, b in zip(full, [x for x, _ in gpu_loader(folder, workers=2)]))
    gl = gpu_loader(folder)
    gl.set_epoch(0, 1)
    it = iter(gl)
    assert torch.equal(next(it)[0], full[1]) and gl.batches_done == 2
    assert torch.equal(next(it)[0], full[2]) and gl.batches_done == 3
    assert next(it, None) is None and decode_threads() == []


def test_an_error_in_the_decode_thread_is_raised_in_the_caller_with_its_message(folder, monkeypatch):
    msg = "cannot read image /data/x.jpg (OSError: broken data stream): replace or delete it, or pass --skip-bad-images"
    real = gpu_jpeg.decode_jpegs
    def fail_second(datas, device, calls=[]):
        calls.append(1)
        if len(calls) == 2: raise DataError(msg, '/data/x.jpg')
        return real(datas, device)
    monkeypatch.setattr(gpu_jpeg, 'decode_jpegs', fail_second)
    gl = gpu_loader(folder)
    got = []
    with pytest.raises(DataError) as e:
        for x, _ in gl: got.append(x)
    assert str(e.value) == msg and e.value.path == '/data/x.jpg'
    assert len(got) == 1 and gl.batches_done == 1  # batch 0 was handed out, batch 1 never was
    assert decode_threads() == []


def test_bad_images_follow_the_same_rules(tmp_path):
    root = make_image_folder(tmp_path / 'data', {'train': {'a': 6, 'b': 6}, 'val': {'a': 1, 'b': 1}}, size=40)
    bad = root / 'train' / 'b' / 'b_0001.jpg'
    bad.write_bytes(b'\xff\xd8\xff' + bytes(200))
    with pytest.raises(DataError, match=f"cannot read image {bad}"):
        list(gpu_loader(root, workers=2))
    skipping = gpu_loader(root, workers=2, skip_bad_images=True)
    assert sum(len(y) for _, y in skipping) == 11 and skipping.bad_images == [str(bad)]
    assert decode_threads() == []


@pytest.mark.parametrize('device', [CPU, pytest.param(torch.device('cuda'), marks=needs_cuda)], ids=['cpu', 'cuda'])
def test_tar_shards_and_parquet_give_the_batches_of_their_folder(tmp_path, monkeypatch, device):
    """The GPU path reads shards through their sources' `encoded`: the same batches, pixel for pixel, as the folder
    they were written from, a greyscale image (decoded by Pillow) and a refused one named by its shard member."""
    import torchvision.io
    from PIL import Image
    from resnext_nb.prepare import prepare
    from resnext_nb.shards import open_shards
    monkeypatch.setenv('RESNEXT_NB_WDS_CACHE', str(tmp_path / 'cache'))
    root = make_image_folder(tmp_path / 'data', {'train': {'a': 6, 'b': 6}, 'val': {'a': 2, 'b': 2}}, size=40, seed=1)
    grey = root / 'train' / 'b' / 'b_0002.jpg'
    Image.open(grey).convert('L').save(grey)
    refused = (root / 'train' / 'a' / 'a_0003.jpg').read_bytes()
    real = loaders_decode_jpeg()
    def refuse(data, **kw):  # as nvjpeg: the whole batch fails for one image, and that image alone fails again
        if (bytes(data.numpy()) if torch.is_tensor(data) else None) == refused or isinstance(data, list) and any(
                bytes(d.numpy()) == refused for d in data): raise RuntimeError(REFUSED)
        return real(data, **kw)
    monkeypatch.setattr(torchvision.io, 'decode_jpeg', refuse)

    def passes(train_src, val_src):
        out = {}
        for split, src in (('train', train_src), ('val', val_src)):
            is_train = split == 'train'
            gl = GpuLoader(src, EpochBatches(len(src), 4, train=is_train, seed=0), DataConfig(image_size=24, workers=2),
                           device, train=is_train, name=split)
            out[split] = [(x.cpu(), y.cpu()) for x, y in gl], gl.cpu_decoded
        return out
    want = passes(ImageFolderSource(root / 'train'), ImageFolderSource(root / 'val'))
    assert sorted(want['train'][1]) == sorted([str(grey), str(root / 'train' / 'a' / 'a_0003.jpg')])
    for fmt, kind in (('wds', 'wds'), ('parquet', 'hf')):
        prepare(root, tmp_path / fmt, fmt, shard_size=5, progress=False)
        got = passes(*open_shards(kind, tmp_path / fmt))
        for split in ('train', 'val'):
            assert len(got[split][0]) == len(want[split][0]), (fmt, split)
            assert all(torch.equal(a, b) and torch.equal(ya, yb)
                       for (a, ya), (b, yb) in zip(got[split][0], want[split][0])), (fmt, split)
        # the same two images (3: a_0003, 8: b_0002), named as the shards name them
        names = {f"{tmp_path / 'wds'}/train-00000{i // 5}.tar:0000000{i}" if kind == 'wds'
                 else f"{tmp_path / 'parquet'}:train[{i}] (0000000{i}.jpg)" for i in (3, 8)}
        assert set(got['train'][1]) == names, got['train'][1]


def test_a_pass_left_early_or_closed_ends_its_thread_and_processes(folder):
    gl = gpu_loader(folder, workers=2)
    next(iter(gl))  # the pass is dropped at once
    assert decode_threads() == []
    it = iter(gl); next(it)  # mid-pass, as when a run stops
    procs = list(gl.pass_iter._workers)
    gl.close()
    assert decode_threads() == [] and [(p.is_alive(), p.exitcode) for p in procs] == [(False, 0), (False, 0)]
    assert len(list(gl)) == 3  # the loader still works
    gl.close()


def test_no_thread_is_left_at_interpreter_exit(folder):
    """A pass left suspended in a global, with its next batch being decoded: the interpreter still exits, cleanly.
    (0 workers: loader processes left running at exit are `Loader.close`'s concern, tested in the data chapter.)"""
    script = textwrap.dedent(f"""
        import torch
        from resnext_nb.data import DataConfig, EpochBatches, ImageFolderSource
        from resnext_nb.gpu_jpeg import GpuLoader
        source = ImageFolderSource({str(folder / 'train')!r})
        gl = GpuLoader(source, EpochBatches(len(source), 4, seed=0), DataConfig(image_size=24, workers=0), torch.device('cpu'))
        it = iter(gl); x, y = next(it)
        print('got', tuple(x.shape))
    """)
    r = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == 'got (4, 3, 24, 24)\n', r.stderr[-3000:]
    assert 'Traceback' not in r.stderr and 'Exception' not in r.stderr, r.stderr[-3000:]


# ------------------------------------------------------------------ CUDA only: the real nvjpeg

@needs_cuda
def test_nvjpeg_never_writes_into_memory_the_side_stream_still_reads(folder):
    """pytorch/vision PR #9606's harness, through `GpuLoader._decode`: tensors the side stream is about to read are freed
    while a long kernel holds those reads back; the decoder's outputs come from the same pool. Without the wait
    the reductions see decoded pixels; with it, never."""
    gl = gpu_loader(folder, device=torch.device('cuda'))
    batch = gpu_jpeg.collate_encoded([gpu_jpeg.EncodedImages(gl.source)[(i, i)] for i in range(4)])
    nbytes = 3 * 40 * 40  # one decoded image: the freed blocks fit the decoder's outputs exactly
    def trial(decode):
        with gl.side.use():
            ts = [torch.full((nbytes,), 7, dtype=torch.uint8, device='cuda') for _ in range(8)]
            torch.cuda.synchronize()
            torch.cuda._sleep(100_000_000)  # ~50 ms of queued work ahead of the reads
            sums = [t.sum(dtype=torch.int64) for t in ts]
            del ts
            decode()
        torch.cuda.synchronize()
        return sum(int(s) != 7 * nbytes for s in sums)
    unguarded = sum(trial(lambda: decode_jpegs(gpu_jpeg.unpack_bytes(batch.data, batch.offsets), torch.device('cuda'))) for _ in range(30))
    guarded = sum(trial(lambda: gl._decode(batch)) for _ in range(30))
    print(f"corrupted reads: {unguarded} without the wait, {guarded} with it")
    assert guarded == 0, f"{guarded} reads corrupted even though the side stream was drained before decoding"


@needs_cuda
@pytest.mark.parametrize('train,hflip', [(False, 0.5), (True, 0.0), (True, 0.5)], ids=['val', 'train, --hflip 0', 'train'])
def test_a_slowed_side_stream_changes_no_pixel(folder, monkeypatch, train, hflip):
    """Every batch of a pass whose crops are held back on the side stream (so the next decode runs while they are
    still queued) equals the same pass run with the device drained after every crop. The 12 train images make 3
    batches, validation's centre crops included, so each pass has decodes that could overwrite a batch's images."""
    real = gpu_jpeg.resized_crops
    def crops_then(after):
        def wrapped(*a, **kw):
            if after == 'slow': torch.cuda._sleep(50_000_000)  # hold back this batch's crops on the side stream
            out = real(*a, **kw)
            if after == 'sync': torch.cuda.synchronize()
            return out
        return wrapped
    monkeypatch.setattr(gpu_jpeg, 'resized_crops', crops_then('sync'))
    cuda = torch.device('cuda')
    reference = [(x.cpu(), y.cpu()) for x, y in gpu_loader(folder, device=cuda, train=train, hflip=hflip)]
    monkeypatch.setattr(gpu_jpeg, 'resized_crops', crops_then('slow'))
    for _ in range(3):
        raced = [(x.cpu(), y.cpu()) for x, y in gpu_loader(folder, workers=2, device=cuda, train=train, hflip=hflip)]
        assert len(raced) == len(reference) == 3
        for k, ((x, y), (rx, ry)) in enumerate(zip(raced, reference)):
            assert torch.equal(y, ry) and torch.equal(x, rx), f"batch {k} differs from the drained run"


@needs_cuda
def test_the_real_decoder_running_out_of_memory_is_reported(tmp_path):
    "Cap torch's allocator below one decoded image: the real torchvision error must become our one-line OOM."
    from PIL import Image
    import io
    buf = io.BytesIO(); Image.new('RGB', (4000, 3000), 'gray').save(buf, format='JPEG')
    data = [torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)] * 2
    decode_jpegs(data[:1], torch.device('cuda'))  # the decoder exists before the cap
    torch.cuda.synchronize(); torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_reserved() + (16 << 20)) / total)  # < one 36 MB image
    try:
        with pytest.raises(torch.OutOfMemoryError, match='decoding a batch of 2 JPEGs'):
            decode_jpegs(data, torch.device('cuda'))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
