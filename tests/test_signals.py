"""Every stop signal saves (issue 22): SIGTERM and SIGHUP sent to the `--nproc 2` launcher reach every rank (SIGUSR1:
`test_reliability`); the ranks save, and the whole job is gone within seconds with one line and the signal's exit code. A
launcher killed outright leaves no rank behind. All with the default loader processes (no `--workers 0`)."""
import os, signal, subprocess, time
import pytest, torch
from conftest import alive, folder_fixture, job_pids, start_cli, tcp_port, wait_for_step


data = folder_fixture(40, (4, 4))


def job(data, out, *extra):
    "10 steps an epoch (4 images a step on each of 2 ranks), deterministic, the stop agreed at every step."
    return ['--data-path', data, '--arch', 'resnext_tiny', '--image-size', 16, '--batch-size', 8, '--epochs', 1,
            '--lr', 0.05, '--seed', 0, '--deterministic', '--print-freq', 1, '--device', 'cpu', '--output', out, *extra]


def start(args):
    return start_cli(*args, start_new_session=True)


@pytest.mark.parametrize('name', ['SIGTERM', 'SIGHUP'])  # SIGUSR1: test_reliability's 2-process case
def test_a_signal_to_the_launcher_saves_and_ends_the_job_in_seconds(data, tmp_path, name):
    out = tmp_path / 'run'
    proc = start(job(data, out, '--nproc', 2, '--port', tcp_port()))
    wait_for_step(out, 4, proc)
    pids = job_pids(out)
    sent = time.time()
    proc.send_signal(getattr(signal, name))
    proc.wait(timeout=60)
    took = time.time() - sent
    _, err = proc.communicate()
    assert proc.returncode == 128 + getattr(signal, name), err[-3000:]
    # issue 22 asks for 10 s; measured: about 1 s, 2 s with two busy loops beside it
    assert took < 10, f"the job took {took:.1f} s to end after {name}"
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith(f'resnext_nb: stopped by {name};') and 'Traceback' not in err, err[-3000:]
    time.sleep(0.5)
    assert not alive(pids), f"processes left after {name}: {alive(pids)}"
    ckpt = torch.load(out / 'checkpoint.pth.tar', map_location='cpu', weights_only=True)
    assert 4 <= ckpt['step'] < 20 and f"(step {ckpt['step']})" in lines[0]
    # the resume after SIGUSR1 to the launcher is exact: `test_reliability` (the other signals take the same path)


def test_sighup_saves_a_single_process_run(data, tmp_path):
    "A closed terminal (SIGHUP) stops a 1-process run like SIGTERM: saved, one line, exit 129."
    out = tmp_path / 'run'
    proc = start(job(data, out, '--epochs', 2))
    wait_for_step(out, 3, proc)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 129, err[-3000:]
    assert [l for l in err.splitlines() if l.strip()][-1].startswith('resnext_nb: stopped by SIGHUP;'), err
    assert torch.load(out / 'checkpoint.pth.tar', map_location='cpu', weights_only=True)['step'] >= 3


def test_no_rank_outlives_a_killed_launcher(data, tmp_path):
    "SIGKILL to the launcher cannot be forwarded: each rank learns of it from Linux (PR_SET_PDEATHSIG), saves and exits."
    out = tmp_path / 'run'
    proc = start(job(data, out, '--nproc', 2, '--port', tcp_port(), '--epochs', 3))
    wait_for_step(out, 3, proc)
    pids = job_pids(out)
    assert len(pids) >= 3, pids  # the launcher and two ranks (and their loader processes)
    proc.kill(); proc.wait(timeout=30)
    deadline = time.time() + 30
    while alive(pids) and time.time() < deadline: time.sleep(0.2)
    assert not alive(pids), f"ranks outlived the launcher: {alive(pids)}"
    assert torch.load(out / 'checkpoint.pth.tar', map_location='cpu', weights_only=True)['step'] >= 3


@pytest.mark.parametrize('when', ['validation', 'end'])
def test_a_signal_during_validation_or_after_training_ends_the_job_in_seconds(data, tmp_path, when):
    """SIGTERM as the last epoch's validation begins (it stops after the batch in hand) or once training is over
    (the plots, the exit): the job ends in seconds with one line; it never waits out the shutdown timeout."""
    out = tmp_path / 'run'
    proc = start(job(data, out, '--nproc', 2, '--port', tcp_port()))
    mark = 'step 10 ' if when == 'validation' else 'val loss'  # 10 steps an epoch; the epoch line follows validation
    for line in proc.stdout:
        if mark in line: break
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    out_rest, err = proc.communicate(timeout=60)
    took = time.time() - sent
    assert proc.returncode == 143 and took < 10, (proc.returncode, f"{took:.1f} s", err[-3000:])
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith('resnext_nb: stopped by SIGTERM;'), err[-3000:]
    ckpt = torch.load(out / 'checkpoint.pth.tar', map_location='cpu', weights_only=True)
    assert ckpt['step'] == 10 and "(step 10)" in lines[0], lines[0]
