"""Recipes beyond the Ascend one (issue 14): torchvision's recipe at tiny size, with every piece of state it adds
(the EMA, MixUp/CutMix draws, TrivialAugment and random erasing, the repeated-augmentation sampler, gradient
accumulation), survives a SIGKILL mid-epoch bit for bit; and it trains on two CPU processes with sync BN."""
import os, signal, subprocess
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import ROOT, TINY, cli_env, folder_fixture, launch_cmd, read_records, run_cli, wait_for_step

STEPS_PER_EPOCH = 60 // 8 * 2  # batches per epoch: 7 whole updates of 2 batches of 4; 4 images a (reshuffled) epoch are left out


data = folder_fixture(30, (5, 4))


def tv_job(data, out, *extra):
    "torchvision's recipe at 16 px (train crop 13, val 17 -> 16), 2 epochs, an update every 2 batches, an EMA every 2 updates after 3 warmup batches."
    return [*TINY, '--data_path', data, '--recipe', 'tv-v2', '--image-size', 16, '--batch-size', 4, '--grad-accum-steps', 2,
            '--epochs', 2, '--warmup-epochs', 0.2, '--model-ema-steps', 2, '--ra-reps', 2, '--deterministic',
            '--print-freq', 1, '--checkpoint-every', 2, '--output', out, *extra]


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


@pytest.fixture(scope='module')
def straight(data, tmp_path_factory):
    "The uninterrupted run, with no loader processes."
    out = tmp_path_factory.mktemp('straight') / 'run'
    r = run_cli(*tv_job(data, out), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_the_recipe_is_stated_and_stored(straight):
    log = (straight / 'train.log').read_text()
    assert "=> recipe tv-v2, torchvision's IMAGENET1K_V2 recipe" in log
    assert 'lr 0.00390625 (0.5 at global batch 1024, scaled linearly to 8)' in log  # 0.5 x (4 x 2) / 1024
    assert 'epochs 600, overridden: 2' in log and 'warmup_epochs 5, overridden: 0.2' in log and 'train_crop_size 13' in log
    assert '=> gradient accumulation: 2 batches of 4 per update, as one batch of 8' in log
    state = load(straight / 'checkpoint.pth.tar')
    assert state['recipe']['name'] == 'tv-v2' and state['recipe']['values']['mixup_alpha'] == 0.2
    assert state['config']['data']['auto_augment'] == 'ta_wide' and state['config']['data']['ra_sampler'] is True
    assert {'model_ema', 'best_model'} <= state.keys() and int(state['model_ema']['n_averaged']) > 0
    epochs = read_records(straight, 'epoch')
    assert [r['val_count'] for r in epochs] == [9, 9] and all('ema_val_acc1' in r for r in epochs)
    summary = read_records(straight, 'summary')[-1]
    assert summary['best_model'] in ('model', 'ema')
    assert f"best Acc@1 {summary['best_acc1']:.3f}% (the {'EMA' if summary['best_model'] == 'ema' else 'model, not the EMA'})" in log


@pytest.mark.parametrize('workers', [0, 2])
def test_sigkill_mid_epoch_resumes_everything_exactly(data, straight, tmp_path, workers):
    "SIGKILL to the whole process group mid-epoch; `--resume auto` ends with the uninterrupted run's weights, EMA and optimiser."
    out = tmp_path / 'killed'
    job = tv_job(data, out, '--workers', workers)
    proc = subprocess.Popen(launch_cmd(*job), cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # its own group, as a scheduler kills a job
    wait_for_step(out, 9, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    cut = load(out / 'checkpoint.pth.tar')
    assert cut['sampler']['epoch'] == 0 and 0 < cut['sampler']['start_batch'] < STEPS_PER_EPOCH, cut['sampler']
    assert cut['sampler']['start_batch'] % 2 == 0, 'a checkpoint falls on an update, never between accumulated batches'

    resumed = run_cli(*job, '--resume', 'auto', timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want, got = load(straight / 'checkpoint.pth.tar'), load(out / 'checkpoint.pth.tar')
    assert (got['epoch'], got['step']) == (want['epoch'], want['step']) == (2, 2 * STEPS_PER_EPOCH)
    for part in ('state_dict', 'model_ema'):
        assert want[part].keys() == got[part].keys()
        for k, v in want[part].items(): assert torch.equal(v, got[part][k]), f"{part}.{k} differs after resume"
    for k, v in want['optimizer']['state'].items():
        assert torch.equal(v['momentum_buffer'], got['optimizer']['state'][k]['momentum_buffer'])
    assert [r['val_acc1'] for r in read_records(straight, 'epoch')] == [r['val_acc1'] for r in read_records(out, 'epoch')]
    assert [r['ema_val_acc1'] for r in read_records(straight, 'epoch')] == [r['ema_val_acc1'] for r in read_records(out, 'epoch')]


def test_two_cpu_processes_with_sync_bn(data, tmp_path, free_port):
    "torchvision's recipe with --sync-bn over 2 CPU processes trains, and validation counts each of the 9 images once."
    out = tmp_path / 'two'
    r = run_cli(*tv_job(data, out, '--epochs', 1, '--sync-bn', '--nproc', 2, '--port', free_port), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    log = (out / 'train.log').read_text()
    assert '=> sync BN: batch-norm statistics over all 2 ranks' in log and 'x 2, precision' in log
    (epoch,) = read_records(out, 'epoch')
    assert epoch['val_count'] == 9 and 'ema_val_acc1' in epoch
    state = load(out / 'checkpoint.pth.tar')
    assert state['world_size'] == 2 and state['config']['train']['sync_bn'] is True
    assert all(torch.isfinite(v).all() for v in state['state_dict'].values() if v.is_floating_point())


def _sync_bn_rank(rank, port, x, result):
    "One of two ranks: AllReduceBatchNorm on this rank's half of `x`; puts its output and gradient in `result`."
    from resnext_nb.device import sync_batchnorm
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        bn = sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3)), 'cpu')
        half = x[rank * 4:(rank + 1) * 4].clone().requires_grad_()
        out = bn(half)
        (out * torch.arange(out.numel()).view_as(out)).sum().backward()
        result[rank] = (out.detach(), half.grad, bn[0].running_var.clone())
    finally: dist.destroy_process_group()


def test_allreduce_batchnorm_over_two_ranks_is_batchnorm_over_the_whole_batch(free_port):
    x = torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    with mp.Manager() as manager:
        result = manager.dict()
        mp.spawn(_sync_bn_rank, args=(free_port, x, result), nprocs=2)
        parts = [result[0], result[1]]
    whole = x.clone().requires_grad_()
    ref = torch.nn.BatchNorm2d(3)
    out = ref(whole)
    weights = torch.cat([torch.arange(4 * 75).view(4, 3, 5, 5)] * 2).float()  # what each rank used on its half
    (out * weights).sum().backward()
    torch.testing.assert_close(torch.cat([p[0] for p in parts]), out.detach(), atol=1e-5, rtol=1e-5)
    # gradients of up to a few hundred: float32 rounds them at about 1e-5 (an unseeded input missed 1e-5 once)
    torch.testing.assert_close(torch.cat([p[1] for p in parts]), whole.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(parts[0][2], ref.running_var, atol=1e-6, rtol=1e-6)
