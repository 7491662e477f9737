"""The branch an NPU run takes, on torch_npu's own optimizer and scaler code (issue 21): real training steps through
`python -m resnext_nb.launch` with the NPU stand-in (tests/npu_standin.py) in every process. Without the wheel and
without a reachable package index these skip with one line; on CI they fail instead."""
import os, signal, subprocess, sys
from pathlib import Path
import pytest, torch
from conftest import TINY, cli_env, folder_fixture, launch_cmd, make_image_folder, run_cli, run_together, wait_for_step
import npu_standin

WHEEL = npu_standin.wheel_or_skip()  # the cached torch_npu wheel; else one line: a skip here, a failure on CI
FP16 = ['--amp', '--amp-dtype', 'float16', '--loss-scale', 1024]  # the Ascend recipe's static fp16 scale


@pytest.fixture(scope='module')
def standin(tmp_path_factory):
    return npu_standin.sitecustomize_dir(tmp_path_factory.mktemp('standin'), WHEEL)


data = folder_fixture(16, (4, 4))


def npu_env(standin, **extra):
    env = cli_env(**extra)
    env['PYTHONPATH'] = os.pathsep.join([str(standin), *filter(None, [env.get('PYTHONPATH')])])
    return env


def job(data, out, *extra):
    "A short run; NCHW, as on an NPU (no channels_last there, and torch_npu combines only contiguous tensors)."
    return [*TINY, '--data_path', data, '--image-size', 16, '--batch-size', 8, '--epochs', 1, '--lr', 0.05,
            '--no-channels-last', '--deterministic', '--print-freq', 1, '--output', out, *extra]


def launch(standin, cwd, *args, timeout=600, **env):
    "Run the launcher with the stand-in (from `cwd`, so that PYTHONPATH decides which resnext_nb is imported)."
    r = subprocess.run(launch_cmd(*args), cwd=cwd, env=npu_env(standin, **env), capture_output=True, text=True,
                       timeout=timeout)
    print(r.stdout[-3000:], r.stderr[-6000:], sep='\n')
    return r


def checkpoint(out: Path) -> dict:
    return torch.load(out / 'checkpoint.pth.tar', map_location='cpu', weights_only=True)


def params(ckpt: dict) -> dict:
    "The checkpoint's parameters (batch-norm statistics left out: a skipped step's forward still updates them)."
    stats = ('running_mean', 'running_var', 'num_batches_tracked')
    return {k: v for k, v in ckpt['state_dict'].items() if not k.endswith(stats)}


def assert_npu_parts(ckpt: dict, scaler=True):
    "The run stepped with the wheel's NpuFusedSGD and, with fp16, scaled with the wheel's GradScaler."
    group = ckpt['optimizer']['param_groups'][0]
    assert 'foreach' not in group and set(group) >= {'lr', 'momentum', 'dampening', 'weight_decay', 'nesterov'}, \
        f"not NpuFusedSGD's param groups: {sorted(group)}"
    if scaler: assert ckpt['scaler']['scaler'].get('dynamic') is True, f"not torch_npu's GradScaler: {ckpt['scaler']}"


CONTRACTS = """
import torch, torch_npu
from torch_npu.utils import npu_combine_tensors, get_part_combined_tensor
a, b = torch.ones(2, 3), torch.full((4,), 2.0)
flat = npu_combine_tensors([a, b])
assert flat.tolist() == [1.0] * 6 + [2.0] * 4, flat     # the wheel's code copies each tensor in, in order,
flat.mul_(10)
assert (a.sum(), b.sum(), a.shape) == (60, 80, (2, 3))  # and each tensor now lives in the flat buffer
assert torch_npu.get_storage_size(a) == 6 and torch_npu.get_storage_size(flat) == 10
get_part_combined_tensor(flat, 6, 4).zero_()
assert b.sum() == 0                                     # a part of the buffer is a window on the same memory
try: npu_combine_tensors([a, torch.ones(4, 4).t()]); raise SystemExit('accepted a strided tensor')
except RuntimeError as e: assert 'must be contiguous' in str(e)
print(type(torch_npu.optim.NpuFusedSGD).__name__, torch_npu.optim.NpuFusedSGD.__module__, torch_npu.npu.amp.GradScaler.__module__)
"""


def test_the_standin_keeps_torch_npus_contracts(standin):
    "The wheel's own combine_tensors.py on the stand-in's native ops: tensors copied into, then aliased by, a flat buffer."
    r = subprocess.run([sys.executable, '-c', CONTRACTS], env=npu_env(standin), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ['type', 'torch_npu.optim.npu_fused_sgd', 'torch_npu.npu.amp.grad_scaler']


@pytest.mark.parametrize('nproc', [1, 2])
def test_trains_with_the_wheels_fused_sgd_and_scaler(standin, data, tmp_path, nproc):
    r = launch(standin, tmp_path, *job(data, tmp_path / 'out', *FP16, '--nproc', nproc))
    assert r.returncode == 0 and r.stderr == '', r.stderr[-3000:]  # no traceback, no stray warning (torch_npu's included)
    ckpt = checkpoint(tmp_path / 'out')
    assert_npu_parts(ckpt)
    assert (ckpt['step'], ckpt['scaler']['skipped_steps'], ckpt['scaler']['scaler']['scale']) == (32 // 8, 0, 1024.0)


def test_a_saturated_fp16_overflow_is_skipped_under_the_static_scale(standin, data, tmp_path):
    "The chip flags an overflow with finite (saturated) gradients at the last step: it is skipped, the scale stays 1024."
    clean = launch(standin, tmp_path, *job(data, tmp_path / 'clean', *FP16, '--max-steps', 3))
    flagged = launch(standin, tmp_path, *job(data, tmp_path / 'flagged', *FP16, '--max-steps', 4),
                     NPU_STANDIN_SATURATE_AT=4)
    assert clean.returncode == 0 and flagged.returncode == 0, flagged.stderr[-3000:]
    assert 'Gradient overflow. Skipping step' in flagged.stdout  # torch_npu's scaler says so itself
    want, got = checkpoint(tmp_path / 'clean'), checkpoint(tmp_path / 'flagged')
    assert_npu_parts(got)
    assert (want['step'], got['step']) == (3, 4)
    assert (got['scaler']['skipped_steps'], got['scaler']['scaler']['scale']) == (1, 1024.0)
    assert want['scaler']['skipped_steps'] == 0
    for k, v in params(want).items(): assert torch.equal(v, params(got)[k]), f"{k} moved on the skipped step"
    for k, v in want['optimizer']['state'].items():
        assert torch.equal(v['momentum_buffer'], got['optimizer']['state'][k]['momentum_buffer'])


def test_freeze_epochs_keep_the_body_then_train_it(standin, data, tmp_path):
    "--freeze-epochs 1 under the fused SGD: after epoch 0 the body is exactly its starting weights; all of it trains after."
    from resnext_nb.model import create_model
    torch.manual_seed(1)
    start = create_model('resnext_tiny', num_classes=2).state_dict()
    torch.save(start, tmp_path / 'start.pth')
    args = ['--pretrained', tmp_path / 'start.pth', '--freeze-epochs', 1, '--epochs', 2, '--wd', 1e-2]
    frozen = launch(standin, tmp_path, *job(data, tmp_path / 'frozen', *args, '--max-steps', 4))
    both = launch(standin, tmp_path, *job(data, tmp_path / 'both', *args))
    assert frozen.returncode == 0 and both.returncode == 0, (frozen.stderr + both.stderr)[-3000:]
    after0, after1 = checkpoint(tmp_path / 'frozen'), checkpoint(tmp_path / 'both')
    assert_npu_parts(after1, scaler=False)
    body = [k for k in params(after1) if not k.startswith('fc.')]
    assert body and all(torch.equal(params(after0)[k], start[k]) for k in body), "the body moved while frozen"
    assert not torch.equal(params(after0)['fc.weight'], start['fc.weight']), "the head did not train while frozen"
    assert [k for k in body if torch.equal(params(after1)[k], start[k])] == [], "some of the body never trained"


def test_sigkill_mid_epoch_then_resume_auto_is_exact(standin, tmp_path):
    "The fused optimizer's state (momentum in its flat buffers) and the scaler's survive a checkpoint exactly."
    data = make_image_folder(tmp_path / 'data', {'train': {'a': 24, 'b': 24}, 'val': {'a': 4, 'b': 4}}, size=20)
    args = lambda out: job(data, out, *FP16, '--batch-size', 4, '--epochs', 2, '--checkpoint-every', 2,
                           '--resume', 'auto')
    straight = launch(standin, tmp_path, *args(tmp_path / 'straight'))
    assert straight.returncode == 0, straight.stderr[-3000:]
    out = tmp_path / 'killed'
    proc = subprocess.Popen(launch_cmd(*args(out)), cwd=tmp_path, env=npu_env(standin),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_step(out, 7, proc)  # fails if the job ends or never gets there
    proc.send_signal(signal.SIGKILL); proc.wait(timeout=30)
    killed = checkpoint(out)
    assert 0 < killed['sampler']['start_batch'] < 12 and killed['sampler']['epoch'] == 0, killed['sampler']
    resumed = launch(standin, tmp_path, *args(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want, got = checkpoint(tmp_path / 'straight'), checkpoint(out)
    assert_npu_parts(got)
    assert (got['epoch'], got['step']) == (want['epoch'], want['step']) == (2, 24)
    for k, v in want['state_dict'].items(): assert torch.equal(v, got['state_dict'][k]), f"{k} differs after resume"
    for k, v in want['optimizer']['state'].items():
        assert torch.equal(v['momentum_buffer'], got['optimizer']['state'][k]['momentum_buffer']), f"momentum {k}"
    assert want['scaler'] == got['scaler']


def test_fused_sgd_matches_torch_sgd_over_an_epoch(standin, data, tmp_path):
    fused = launch(standin, tmp_path, *job(data, tmp_path / 'fused'))
    plain = launch(standin, tmp_path, *job(data, tmp_path / 'sgd', '--no-npu-fused-sgd'))
    assert fused.returncode == 0 and plain.returncode == 0, (fused.stderr + plain.stderr)[-3000:]
    f, s = checkpoint(tmp_path / 'fused'), checkpoint(tmp_path / 'sgd')
    assert_npu_parts(f, scaler=False)
    assert 'foreach' in s['optimizer']['param_groups'][0]  # torch.optim.SGD's
    assert f['step'] == s['step'] == 4
    close = lambda a, b, name: torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    for k, v in s['state_dict'].items(): close(f['state_dict'][k], v, k)
    for k, v in s['optimizer']['state'].items(): close(f['optimizer']['state'][k]['momentum_buffer'], v['momentum_buffer'], k)


def updates(out):
    "Each optimiser update's (epoch, update, digest of its images and augmentation), from `--log-samples`."
    import json
    recs = [json.loads(l) for l in (out / 'metrics.jsonl').read_text().splitlines()]
    return [(r['epoch'], r['update'], r['samples']) for r in recs if r['kind'] == 'update']


def test_a_checkpoint_from_the_npu_branch_continues_on_the_cpu(standin, data, tmp_path):
    """Issue 24, must-show 2: a checkpoint written mid-epoch by the NPU branch (the wheel's NpuFusedSGD state, and an
    RNG state under a device type this machine lacks, as an NPU or CUDA run saves it) continues on the plain CPU
    (torch.optim.SGD): every update trains the same images with the same augmentation as the uninterrupted NPU-branch
    run, and the weights agree to float rounding (the fused and plain SGD round differently)."""
    from resnext_nb.checkpoints import save_checkpoint
    args = lambda out, *more: job(data, out, '--epochs', 2, '--log-samples', '--random-erase', 0.5, *more)
    straight, cut = run_together(launch_cmd(*args(tmp_path / 'npu')),
                                 launch_cmd(*args(tmp_path / 'moved', '--max-steps', 2, '--checkpoint-every', 1)),
                                 timeout=600, cwd=tmp_path, env=npu_env(standin))
    assert straight.returncode == 0 and cut.returncode == 0, (straight.stderr + cut.stderr)[-3000:]
    ckpt = checkpoint(tmp_path / 'moved')
    assert_npu_parts(ckpt, scaler=False)
    assert (ckpt['step'], ckpt['sampler']) == (2, {'epoch': 0, 'start_batch': 2}), ckpt['sampler']
    ckpt['rng']['npu'] = torch.randint(0, 256, (16,), dtype=torch.uint8)  # what torch.npu.get_rng_state() returns
    save_checkpoint(ckpt, tmp_path / 'moved' / 'checkpoint.pth.tar')
    r = run_cli(*args(tmp_path / 'moved', '--resume', 'auto'), cwd=tmp_path)  # no stand-in: the CPU
    assert r.returncode == 0 and r.stderr == '', r.stderr[-3000:]
    done = checkpoint(tmp_path / 'moved')
    assert 'foreach' in done['optimizer']['param_groups'][0]  # torch's SGD took over the fused one's state
    assert updates(tmp_path / 'moved') == updates(tmp_path / 'npu') and len(updates(tmp_path / 'npu')) == 8
    want = checkpoint(tmp_path / 'npu')
    for k, v in params(want).items(): torch.testing.assert_close(done['state_dict'][k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_a_cpu_checkpoint_continues_on_the_npu_branch(standin, data, tmp_path):
    "The other way: torch.optim.SGD's state, written mid-epoch on the CPU, continues under the wheel's NpuFusedSGD."
    args = lambda out, *more: job(data, out, '--epochs', 2, '--log-samples', *more)
    straight, cut = run_together(launch_cmd(*args(tmp_path / 'cpu')),
                                 launch_cmd(*args(tmp_path / 'moved', '--max-steps', 2, '--checkpoint-every', 1)),
                                 timeout=600, cwd=tmp_path)
    assert straight.returncode == 0 and cut.returncode == 0, (straight.stderr + cut.stderr)[-3000:]
    assert 'foreach' in checkpoint(tmp_path / 'moved')['optimizer']['param_groups'][0]
    r = launch(standin, tmp_path, *args(tmp_path / 'moved', '--resume', 'auto'))
    assert r.returncode == 0 and r.stderr == '', r.stderr[-3000:]
    done = checkpoint(tmp_path / 'moved')  # its param groups keep the keys torch's SGD wrote; NpuFusedSGD ignores them
    assert updates(tmp_path / 'moved') == updates(tmp_path / 'cpu') and len(updates(tmp_path / 'cpu')) == 8
    want = checkpoint(tmp_path / 'cpu')
    for k, v in params(want).items(): torch.testing.assert_close(done['state_dict'][k], v, rtol=1e-5, atol=1e-6, msg=k)
