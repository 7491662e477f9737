"""A run goes on exactly on another number of devices (issue 24, must-show 1). Stopped by SIGTERM mid-epoch on 2
processes and resumed on 1 (which then accumulates 2 batches per update), or stopped on 1 (2 batches per update)
and resumed on 2, it trains every optimiser update on the same images with the same augmentation as an
uninterrupted 2-process run (the `--log-samples` digests, compared update by update), and ends with its weights to
1e-5, relative: only the order of the floating-point sums differs (DDP's all-reduce against accumulation). With the
quick recipe from 1 to 2, and with torchvision's tv-v2 (MixUp/CutMix, TrivialAugment, random erasing, the
repeated-augmentation sampler, the EMA) from 2 to 1.

Batch-norm running statistics are left out of the comparison: under DDP each rank updates its own and rank 0's are
kept (broadcast at each forward), while one process accumulating updates them with every micro-batch; they feed
validation, never the gradients."""
import json, signal
import pytest, torch
from conftest import TINY, folder_fixture, run_cli, start_cli, tcp_port, wait_for_step

data = folder_fixture(32, (4, 4))  # 64 train images: 8 updates of 8 an epoch
RECIPES = {'quick': [], 'tv-v2': ['--recipe', 'tv-v2', '--model-ema-steps', 1]}
LAYOUTS = {1: ['--nproc', 1, '--batch-size', 4, '--grad-accum-steps', 2], 2: ['--nproc', 2, '--batch-size', 8]}


def job(data, out, recipe, *layout):
    return [*TINY, '--data-path', data, '--image-size', 16, '--epochs', 2, '--lr', 0.05, '--deterministic',
            '--print-freq', 1, '--log-samples', '--output', out, '--port', tcp_port(), *RECIPES[recipe], *layout]


def updates(out) -> list[tuple]:
    "Each update's (epoch, update, images, digest of its (index, sample seed) pairs), as logged."
    recs = [json.loads(l) for l in (out / 'metrics.jsonl').read_text().splitlines()]
    return [(r['epoch'], r['update'], r['images'], r['samples']) for r in recs if r['kind'] == 'update']


def weights(out, key='state_dict') -> dict:
    state = torch.load(out / 'checkpoint.pth.tar', map_location='cpu', weights_only=True)[key]
    return {k: v for k, v in state.items() if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked'))}


@pytest.fixture(scope='module')
def straight(data, tmp_path_factory):
    "The uninterrupted 2-process runs, one per recipe."
    def run(recipe):
        out = tmp_path_factory.mktemp(f'straight-{recipe}')
        r = run_cli(*job(data, out, recipe, *LAYOUTS[2]), timeout=600)
        assert r.returncode == 0 and r.stderr == '', r.stderr[-3000:]
        return out
    return {recipe: run(recipe) for recipe in RECIPES}


# each direction once, each recipe once: the dealing is the same code either way
@pytest.mark.parametrize('recipe,before,after', [('tv-v2', 2, 1), ('quick', 1, 2)], ids=['2to1-tv-v2', '1to2-quick'])
def test_stopped_mid_epoch_and_resumed_on_another_device_count(straight, data, tmp_path, recipe, before, after):
    out, per_update = tmp_path / 'run', 3 - before  # batches per update on each process: 2 on 1, 1 on 2
    proc = start_cli(*job(data, out, recipe, *LAYOUTS[before]))
    # the stop lands a few batches after the step the test sees (the log is polled, the signal goes through the
    # launcher): waiting for update 1 of 8 leaves room for it to land mid-epoch
    wait_for_step(out, per_update, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM and 'stopped by SIGTERM' in err, err[-3000:]
    sampler = torch.load(out / 'checkpoint.pth.tar', map_location='cpu', weights_only=True)['sampler']
    assert sampler['epoch'] == 0 and 0 < sampler['start_batch'] < 8 * per_update, sampler  # mid-epoch
    # only the device count: the launcher chooses --batch-size and --grad-accum-steps for it
    r = run_cli(*job(data, out, recipe, '--nproc', after, '--resume', 'auto'), timeout=600)
    assert r.returncode == 0 and r.stderr == '', r.stderr[-3000:]
    moved = [l for l in r.stdout.splitlines() if '=> moved from' in l]
    assert len(moved) == 1 and f'moved from {before} to {after} process' in moved[0], moved
    assert 'the same images, batch-norm batches and mixing' in moved[0], moved
    want = straight[recipe]
    assert updates(out) == updates(want) and len(updates(want)) == 16  # every update once, the same samples
    keys = ['state_dict'] + ['model_ema'] * (recipe == 'tv-v2')
    for key in keys:
        a, b = weights(out, key), weights(want, key)
        for k, v in b.items():
            if not v.is_floating_point(): assert torch.equal(a[k], v), (key, k); continue
            rel = ((a[k] - v).norm() / v.norm().clamp_min(1e-12)).item()
            assert rel <= 1e-5, f"{key}.{k}: relative difference {rel:.2e}"
