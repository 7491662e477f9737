"""Checkpoints that prove their content (issue 22, item 5), through the real commands: one flipped bit in a tensor is
refused in one line by every command that loads a checkpoint, while the intact file still loads; `export` reads its
checkpoint once, and its model card describes exactly the weights it exported."""
import hashlib, json, os, shutil, struct, threading, time, zipfile
import pytest
import torch
from conftest import TINY, launch_cmd, make_image_folder, module_cmd, run_cli, run_module, run_together

COUNTS = {'train': {'a': 6, 'b': 6, 'c': 6}, 'val': {'a': 5, 'b': 5, 'c': 5}}  # 4 steps an epoch at batch 4


def job(data, out, *extra):
    return [*TINY, '--data_path', data, '--image-size', 16, '--batch-size', 4, '--output', out, *extra]


def train(data, out, *extra):
    res = run_cli(*job(data, out, *extra))
    assert res.returncode == 0, res.stderr[-3000:]
    return out / 'checkpoint.pth.tar'


def flip_bit(src, dst, entry:int, byte:int=3, bit:int=6):
    """Copy checkpoint `src` to `dst` with one bit flipped inside the zip entry `.../data/<entry>`, where torch keeps
    one storage's bytes. Byte 3, bit 6 of a float32 is its exponent's top bit: 0.005 becomes 1.7e36."""
    raw = bytearray(open(src, 'rb').read())
    info = next(i for i in zipfile.ZipFile(src).infolist() if i.filename.endswith(f'/data/{entry}'))
    name_len, extra_len = struct.unpack('<HH', raw[info.header_offset + 26:info.header_offset + 30])  # the local header's
    raw[info.header_offset + 30 + name_len + extra_len + byte] ^= 1 << bit
    open(dst, 'wb').write(bytes(raw))
    return dst


def raw_load(path): return torch.load(path, map_location='cpu', weights_only=True)


def refused(res, path, says='checksum'):
    "A non-zero exit, and stderr is one line naming `path` (no traceback)."
    lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
    assert res.returncode != 0, res.stdout[-2000:]
    assert len(lines) == 1 and 'Traceback' not in res.stderr, res.stderr[-3000:]
    assert str(path) in lines[0] and says in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "A one-epoch run (its checkpoint is epoch-end, step 4), a run stopped mid-epoch at step 6, and a copy of the first with one bit flipped."
    tmp = tmp_path_factory.mktemp('runs')
    data = make_image_folder(tmp / 'data', COUNTS, size=20)
    whole = train(data, tmp / 'whole', '--epochs', 1)
    mid = train(data, tmp / 'mid', '--epochs', 2, '--max-steps', 6)
    flipped = flip_bit(whole, tmp / 'flipped.pth.tar', entry=0)
    good, bad = raw_load(whole), raw_load(flipped)
    assert [k for k in good['state_dict'] if not torch.equal(good['state_dict'][k], bad['state_dict'][k])] == ['conv1.weight']
    assert bad['state_dict']['conv1.weight'].abs().max() > 1e30  # torch itself loads the damage without a word
    return data, whole, mid, flipped


def test_checkpoints_carry_checksums(runs):
    _, whole, mid, _ = runs
    for path in (whole, mid, whole.with_name('model_best.pth.tar')):
        sums = raw_load(path)['checksums']
        assert {'state_dict', 'optimizer'} <= sums.keys() and all(v.startswith('crc32:') for v in sums.values()), sums


@pytest.mark.parametrize('command', ['evaluate', 'resume', 'pretrained', 'predict', 'export'])
def test_flipped_bit_is_refused(runs, tmp_path, command):
    "Each command that loads a checkpoint refuses the damaged copy in one line, and loads the intact file it came from."
    data, whole, _, flipped = runs
    def cmd(ckpt, out):
        if command == 'evaluate': return launch_cmd(*job(data, tmp_path / out, '--evaluate', '--resume', ckpt))
        if command == 'resume': return launch_cmd(*job(data, tmp_path / out, '--resume', ckpt, '--epochs', 2, '--max-steps', 5))
        if command == 'pretrained': return launch_cmd(*job(data, tmp_path / out, '--pretrained', ckpt, '--epochs', 1, '--max-steps', 1))
        if command == 'predict': return module_cmd('predict', ckpt, data / 'val', '--device', 'cpu')
        return module_cmd('export', ckpt, '--format', 'pt2', '--out', tmp_path / out)
    bad, ok = run_together(cmd(flipped, 'bad'), cmd(whole, 'good'))  # two copies, two output folders
    line = refused(bad, flipped)
    assert 'state_dict' in line, line
    assert ok.returncode == 0 and 'Traceback' not in ok.stderr, ok.stderr[-3000:]


def test_flipped_optimizer_state_is_refused_on_resume(runs, tmp_path):
    data, whole, _, _ = runs
    n = len(raw_load(whole)['state_dict'])  # the optimizer's storages are written right after the weights'
    bad = flip_bit(whole, tmp_path / 'bad_opt.pth.tar', entry=n, byte=0, bit=0)
    good, damaged = raw_load(whole), raw_load(bad)
    assert all(torch.equal(good['state_dict'][k], damaged['state_dict'][k]) for k in good['state_dict'])
    line = refused(run_cli(*job(data, tmp_path / 'out', '--resume', bad, '--epochs', 2)), bad)
    assert 'optimizer' in line and 'state_dict' not in line, line


def test_checkpoint_without_checksums_still_loads(runs, tmp_path):
    "An older checkpoint (or the Ascend recipe's) has no checksums: every command still loads it."
    data, whole, _, _ = runs
    state = raw_load(whole); del state['checksums']
    torch.save(state, old := tmp_path / 'old.pth.tar')
    res = run_module('predict', old, data / 'val', '--device', 'cpu')
    assert res.returncode == 0, res.stderr[-3000:]
    ev = run_cli(*job(data, tmp_path / 'ev', '--evaluate', '--resume', old))
    assert ev.returncode == 0, ev.stderr[-3000:]


def card_of(out): return json.loads((out / 'model_card.json').read_text())


def test_card_of_a_mid_epoch_checkpoint_claims_no_metrics(runs, tmp_path):
    "Stopped at step 6, inside epoch 1: epoch 0's validation (step 4) is not these weights'."
    _, _, mid, _ = runs
    res = run_module('export', mid, '--format', 'pt2', '--out', tmp_path / 'x')
    assert res.returncode == 0, res.stderr[-3000:]
    card = card_of(tmp_path / 'x')
    assert card['checkpoint']['step'] == 6 and card['checkpoint']['sha256'] == hashlib.sha256(mid.read_bytes()).hexdigest()
    assert not {'val_acc1', 'val_acc5', 'val_loss', 'best_acc1'} & card['metrics'].keys(), card['metrics']
    assert 'mid-epoch' in card['metrics']['note'], card['metrics']


def test_card_of_an_ema_model_best_has_the_emas_metrics(runs, tmp_path):
    "With an EMA that validates better than the model, `model_best` holds the EMA's weights, and its card the EMA's accuracy."
    data = runs[0]
    # a high lr makes the model swing and the EMA smooth it; which seed shows it varies by CPU: 4 on this project's
    # CI machines, tried first (each try is a run)
    for seed in (4, 2, 3, 5, 6, 7, 8, 9):
        out = tmp_path / f'ema{seed}'
        train(data, out, '--epochs', 3, '--seed', seed, '--lr', 0.5, '--warmup-epochs', 0,
              '--model-ema', '--model-ema-steps', 1, '--model-ema-decay', 0.9, '--deterministic')
        best = raw_load(out / 'model_best.pth.tar')
        rec = next(r for r in best['history'] if r['kind'] == 'epoch' and r['step'] == best['step'])
        if best['weights'] == 'ema' and rec['ema_val_acc1'] != rec['val_acc1']: break  # the case this test is about
    else: pytest.fail("in none of seeds 2-9 did the EMA validate better than the model: this test's case never arose")
    res = run_module('export', out / 'model_best.pth.tar', '--format', 'pt2', '--out', tmp_path / 'x')
    assert res.returncode == 0, res.stderr[-3000:]
    card = card_of(tmp_path / 'x')
    want = {'weights': 'ema', 'epoch': rec['epoch'], 'step': rec['step'], 'val_acc1': rec['ema_val_acc1'],
            'val_acc5': rec['ema_val_acc5'], 'val_loss': rec['ema_val_loss'], 'val_count': rec['val_count']}
    assert card['metrics'] == want, card['metrics']
    assert card['checkpoint']['step'] == best['step']


def test_export_reads_the_checkpoint_once(runs, tmp_path):
    """While the checkpoint is replaced over and over, as a running training rewrites it, the exported weights, the
    card's sha256, step and metrics all come from the same version of the file."""
    _, whole, mid, _ = runs
    versions = {hashlib.sha256(p.read_bytes()).hexdigest(): raw_load(p) for p in (whole, mid)}
    ckpt, stop = tmp_path / 'checkpoint.pth.tar', threading.Event()
    def rewrite():
        for i in range(10**9):
            if stop.is_set(): return
            os.link((whole, mid)[i % 2], tmp := tmp_path / f'.swap{i % 2}')
            os.replace(tmp, ckpt)  # what `atomic_write` does
            time.sleep(0.001)
    for attempt in range(2):
        ckpt.unlink(missing_ok=True); shutil.copy(whole, ckpt); stop.clear()  # the swaps left a link to `whole`
        swapper = threading.Thread(target=rewrite, daemon=True); swapper.start()
        try: res = run_module('export', ckpt, '--format', 'pt2', '--out', out := tmp_path / f'x{attempt}')
        finally: stop.set(); swapper.join()
        assert res.returncode == 0, res.stderr[-3000:]
        card = card_of(out)
        state = versions[card['checkpoint']['sha256']]
        assert card['checkpoint']['step'] == state['step']
        assert ('val_acc1' in card['metrics']) == (state['sampler']['start_batch'] == 0), (card['metrics'], state['sampler'])
        exported = torch.export.load(out / 'model.pt2').module().state_dict()
        assert all(torch.equal(exported[k], v) for k, v in state['state_dict'].items() if k in exported)
        assert len([k for k in state['state_dict'] if k in exported]) > 10
