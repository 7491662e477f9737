"""Exact resume: a job killed with SIGKILL in the middle of an epoch, then resumed, ends with the same weights
as a job that never stopped (chapter 3's must-show 1)."""
import signal, subprocess
import torch
from conftest import TINY, wait_for_step, cli_env, launch_cmd, make_image_folder, read_records, run_cli, ROOT


def _job(data, out, *extra):
    return [*TINY, '--data_path', data, '--image-size', 16, '--batch-size', 4, '--epochs', 2, '--lr', 0.05,
            '--deterministic', '--print-freq', 1, '--checkpoint-every', 2, '--output', out, *extra]



def test_sigkill_mid_epoch_then_resume_is_exact(tmp_path):
    data = make_image_folder(tmp_path / 'data', {'train': {'a': 60, 'b': 60}, 'val': {'a': 5, 'b': 4}}, size=20)
    steps_per_epoch = 120 // 4

    straight = run_cli(*_job(data, tmp_path / 'straight'))
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed_out = tmp_path / 'killed'
    proc = subprocess.Popen(launch_cmd(*_job(data, killed_out)), cwd=ROOT, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_step(killed_out, 9, proc)  # fails if the job ends or never gets there
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    ckpt = torch.load(killed_out / 'checkpoint.pth.tar', map_location='cpu', weights_only=True)
    assert 0 < ckpt['sampler']['start_batch'] < steps_per_epoch, f"not a mid-epoch checkpoint: {ckpt['sampler']}"
    assert ckpt['sampler']['epoch'] == 0

    resumed = run_cli(*_job(data, killed_out, '--resume', killed_out / 'checkpoint.pth.tar'))
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    want = torch.load(tmp_path / 'straight' / 'checkpoint.pth.tar', map_location='cpu', weights_only=True)
    got = torch.load(killed_out / 'checkpoint.pth.tar', map_location='cpu', weights_only=True)
    assert (got['epoch'], got['step']) == (want['epoch'], want['step']) == (2, 2 * steps_per_epoch)
    assert want['state_dict'].keys() == got['state_dict'].keys()
    for k, v in want['state_dict'].items():
        assert torch.equal(v, got['state_dict'][k]), f"{k} differs after resume"
    for k, v in want['optimizer']['state'].items():
        assert torch.equal(v['momentum_buffer'], got['optimizer']['state'][k]['momentum_buffer'])
    val = lambda out: [r['val_acc1'] for r in read_records(out, 'epoch')]
    assert val(tmp_path / 'straight')[-1] == val(killed_out)[-1]
