"""The benchmark through its real CLI (chapter 5), and the GPU input backend (chapter 2) where CUDA is present.

The CPU tests check structure, never speed: unit tests do not time anything. The CUDA tests are skipped, with
the reason, on machines without a CUDA GPU whose torchvision can decode JPEGs there."""
import json, subprocess, sys
import pytest, torch
from conftest import ROOT, cli_env, make_image_folder

from resnext_nb.device import gpu_jpeg_unavailable_reason

NO_GPU_JPEG = gpu_jpeg_unavailable_reason('cuda')
needs_cuda = pytest.mark.skipif(NO_GPU_JPEG is not None, reason=f"needs CUDA with nvjpeg: {NO_GPU_JPEG}")

ROWS = ['bare step (pytorch/examples)', 'best plain step', 'project, synthetic', 'project, JPEG folder, pil',
        'input only, pil', 'project, JPEG folder, gpu', 'input only, gpu', 'eval']
TINY = ['--arch', 'resnext_tiny', '--batch-size', '4', '--image-size', '32', '--warmup', '1', '--steps', '2',
        '--workers', '0', '--threads', '1', '--jpeg-size', '64x48']


def run_bench(*args, timeout=300):
    cmd = [sys.executable, '-m', 'resnext_nb.bench', *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def cpu_result(tmp_path_factory):
    out = tmp_path_factory.mktemp('bench')
    r = run_bench('--device', 'cpu', *TINY, '--out', out)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r.stdout, json.loads((out / 'bench-cpu.json').read_text())


def test_json_has_every_row_with_ratios(cpu_result):
    _, _, result = cpu_result
    assert [r['name'] for r in result['rows']] == ROWS
    by_name = {r['name']: r for r in result['rows']}
    assert by_name['bare step (pytorch/examples)']['vs_bare'] == 1.0
    assert by_name['best plain step']['vs_best'] == 1.0
    for r in result['rows']:
        assert set(r) >= {'name', 'kind', 'img_s', 'ms_per_step', 'batch', 'vs_bare', 'vs_best', 'notes'}
        if r['img_s'] is not None:
            assert r['img_s'] > 0 and r['vs_bare'] == pytest.approx(r['img_s'] / by_name['bare step (pytorch/examples)']['img_s'])
    assert by_name['best plain step']['notes'] == 'bf16, channels_last'
    assert by_name['bare step (pytorch/examples)']['notes'] == 'fp32, NCHW'


def test_gpu_rows_are_skipped_with_the_reason_on_the_cpu(cpu_result):
    _, _, result = cpu_result
    for r in result['rows']:
        if r['name'].endswith('gpu'):
            assert r['img_s'] is None and r['notes'].startswith('skipped: decoding JPEGs on the device needs a CUDA GPU')


def test_meta_names_the_machine_and_the_date(cpu_result):
    _, _, result = cpu_result
    m = result['meta']
    assert m['device_type'] == 'cpu' and m['device'].startswith('CPU') and m['torch'] == torch.__version__
    assert len(m['date']) == len('2026-11-27 15:00 UTC') and m['torch_threads'] == 1
    assert m['config']['arch'] == 'resnext_tiny' and m['config']['batch_size'] == 4
    assert [t['target'] for t in result['targets']] == ['project, synthetic ≥ 0.98 × best plain step']  # no JPEG target on a CPU


def test_table_and_chart(cpu_result):
    out, stdout, _ = cpu_result
    assert '| row | img/s | ms/step | × bare step | × best plain step | notes |' in stdout
    assert sum(line.startswith('| ') for line in stdout.splitlines()) == 1 + len(ROWS)
    assert '- target: project, synthetic ≥ 0.98 × best plain step:' in stdout and '3 × bare' not in stdout
    png = (out / 'bench-cpu.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 10_000


def test_bad_flags_fail_clearly(tmp_path):
    r = run_bench('--device', 'cpu', '--steps', '0', '--out', tmp_path)
    assert r.returncode != 0 and '--steps 0: must be positive' in r.stderr


def test_an_existing_folder_too_small_for_the_timed_window_says_so(tmp_path):
    data = make_image_folder(tmp_path / 'data', {'train': {'a': 4, 'b': 4}, 'val': {'a': 1, 'b': 1}})
    r = run_bench('--device', 'cpu', *TINY, '--data', data, '--out', tmp_path / 'out')
    assert r.returncode != 0 and 'the epoch ended after 2 steps, before the timed window closed' in r.stderr


# ---------------------------------------------------------------- CUDA only

@needs_cuda
def test_gpu_backend_rows_are_measured_on_cuda(tmp_path):
    r = run_bench('--device', 'cuda', *TINY, '--out', tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {row['name']: row for row in json.loads((tmp_path / 'bench-cuda.json').read_text())['rows']}
    assert rows['project, JPEG folder, gpu']['img_s'] > 0 and rows['input only, gpu']['img_s'] > 0
    assert 'gpu input' in rows['project, JPEG folder, gpu']['notes']


@needs_cuda
def test_gpu_loader_yields_device_batches_and_counts_cpu_fallbacks(tmp_path):
    from PIL import Image
    from resnext_nb.data import DataConfig
    from resnext_nb.loaders import build_loaders
    root = make_image_folder(tmp_path / 'data', {'train': {'a': 8, 'b': 8}, 'val': {'a': 2, 'b': 2}}, size=40)
    grey, cmyk = root / 'train' / 'a' / 'a_0000.jpg', root / 'train' / 'b' / 'b_0000.jpg'
    Image.open(grey).convert('L').save(grey)
    Image.open(cmyk).convert('CMYK').save(cmyk)
    loaders = build_loaders(DataConfig(data_path=str(root), image_size=24, batch_size=4, workers=2), device=torch.device('cuda'))
    assert loaders.backend == 'gpu'
    batches = list(loaders.train)
    assert all(x.is_cuda and x.dtype == torch.uint8 and x.shape == (4, 3, 24, 24) and y.is_cuda for x, y in batches)
    assert sorted(loaders.train.cpu_decoded) == sorted([str(grey), str(cmyk)])
    assert sum(len(y) for _, y in loaders.val) == 4


@needs_cuda
def test_gpu_crops_match_the_cpu_run_of_the_same_code(tmp_path):
    "Same boxes and flips from the same seeds; nvjpeg and libjpeg-turbo decode a little differently."
    from resnext_nb.data import DataConfig, EpochBatches, ImageFolderSource
    from resnext_nb.gpu_jpeg import GpuLoader
    root = make_image_folder(tmp_path / 'data', {'train': {'a': 4, 'b': 4}, 'val': {'a': 1, 'b': 1}}, size=48)
    source = ImageFolderSource(root / 'train')
    cfg = DataConfig(image_size=32, batch_size=4, workers=0)
    on_gpu = [x.cpu() for x, _ in GpuLoader(source, EpochBatches(len(source), 4), cfg, torch.device('cuda'))]
    on_cpu = [x for x, _ in GpuLoader(source, EpochBatches(len(source), 4), cfg, torch.device('cpu'))]
    for g, c in zip(on_gpu, on_cpu):
        assert (g.float() - c.float()).abs().mean() < 5
