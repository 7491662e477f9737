"""Restart by itself (issue 24, item 3): under `--nproc 2 --max-restarts 1`, one rank SIGKILLed mid-epoch makes torch
elastic restart both ranks; they go on from the run's last checkpoint (`--checkpoint-every 2`, so at most one step
is trained again), and the job ends with exit 0, one line about the restart, the weights of an uninterrupted run
and logs that hold each step once."""
import json, os, signal, socket, subprocess
import pytest, torch
from conftest import folder_fixture, run_cli, start_cli, wait_for_step

data = folder_fixture(40, (4, 4))  # 10 steps an epoch at a global batch of 8


def port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def job(data, out, *extra):
    return ['--data-path', data, '--arch', 'resnext_tiny', '--image-size', 16, '--batch-size', 8, '--epochs', 2,
            '--lr', 0.05, '--seed', 0, '--deterministic', '--print-freq', 1, '--checkpoint-every', 2,
            '--device', 'cpu', '--output', out, '--nproc', 2, '--port', port(), '--max-restarts', 1, *extra]


def ranks_of(launcher:int) -> list[int]:
    "The launcher's rank processes: its children that torch started with multiprocessing's spawn."
    kids = subprocess.run(['pgrep', '-P', str(launcher)], capture_output=True, text=True).stdout.split()
    return [int(k) for k in kids if 'spawn_main' in open(f'/proc/{k}/cmdline').read()]


def steps(out):
    return [json.loads(l)['step'] for l in (out / 'metrics.jsonl').read_text().splitlines() if '"kind": "step"' in l]


def test_a_killed_rank_restarts_the_job_which_ends_as_if_uninterrupted(data, tmp_path):
    straight = run_cli(*job(data, tmp_path / 'straight'), timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    out = tmp_path / 'run'
    proc = start_cli(*job(data, out), start_new_session=True)
    wait_for_step(out, 5, proc)
    ranks = ranks_of(proc.pid)
    assert len(ranks) == 2, ranks
    os.kill(ranks[-1], signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    lines = [l for l in err.splitlines() if l.strip()]
    assert proc.returncode == 0 and len(lines) == 1, err[-3000:]
    assert lines[0].startswith('resnext_nb: a rank failed; restart 1 of 1 goes on from ') and '(step ' in lines[0], lines
    want = torch.load(tmp_path / 'straight' / 'checkpoint.pth.tar', map_location='cpu', weights_only=True)
    got = torch.load(out / 'checkpoint.pth.tar', map_location='cpu', weights_only=True)
    for k, v in want['state_dict'].items(): assert torch.equal(v, got['state_dict'][k]), k
    assert steps(out) == steps(tmp_path / 'straight') == list(range(1, 21))  # each step once, in order
