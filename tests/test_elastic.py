"""Restart by itself (issue 24, item 3): under `--nproc 2 --max-restarts 1`, one rank SIGKILLed mid-epoch makes torch
elastic restart both ranks; they go on from the run's last checkpoint (`--checkpoint-every 2`, so at most one step
is trained again), and the job ends with exit 0, one line about the restart, the weights of an uninterrupted run
and logs that hold each step once. And under `--nnodes 1:2`, a machine that leaves leaves the job running on the
other, which goes on with the same updates (issue 24, item 3's second half)."""
import json, os, re, signal
import pytest, torch
from conftest import children, folder_fixture, run_cli, start_cli, tcp_port, wait_for_step

data = folder_fixture(40, (4, 4))  # 10 steps an epoch at a global batch of 8


def job(data, out, *extra):
    return ['--data-path', data, '--arch', 'resnext_tiny', '--image-size', 16, '--batch-size', 8, '--epochs', 1,
            '--lr', 0.05, '--seed', 0, '--deterministic', '--print-freq', 1, '--checkpoint-every', 2,
            '--device', 'cpu', '--output', out, '--nproc', 2, '--port', tcp_port(), '--max-restarts', 1, *extra]


def ranks_of(launcher:int) -> list[int]:
    "The launcher's rank processes: its children that torch started with multiprocessing's spawn."
    return [k for k, c in children(launcher).items() if b'spawn_main' in c]


def restarted_at(line: str) -> int:
    "The step the restart went on from, as the launcher's line gives it: '... goes on from PATH (step N)'."
    return int(re.search(r'\(step (\d+)\)', line)[1])


def steps(out):
    return [json.loads(l)['step'] for l in (out / 'metrics.jsonl').read_text().splitlines() if '"kind": "step"' in l]


@pytest.fixture(scope='module')
def straight(data, tmp_path_factory):
    "The uninterrupted 2-process run both tests compare with (`--log-samples` changes nothing it computes)."
    out = tmp_path_factory.mktemp('straight')
    r = run_cli(*job(data, out, '--log-samples'), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_a_killed_rank_restarts_the_job_which_ends_as_if_uninterrupted(data, straight, tmp_path):
    out = tmp_path / 'run'
    proc = start_cli(*job(data, out), start_new_session=True)
    wait_for_step(out, 3, proc)
    ranks = ranks_of(proc.pid)
    assert len(ranks) == 2, ranks
    os.kill(ranks[-1], signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    lines = [l for l in err.splitlines() if l.strip()]
    assert proc.returncode == 0 and len(lines) == 1, err[-3000:]
    assert lines[0].startswith('resnext_nb: a rank failed; restart 1 of 1 goes on from ') and '(step ' in lines[0], lines
    assert restarted_at(lines[0]) < 10, lines  # mid-epoch, as meant (an epoch is 10 steps)
    want = torch.load(straight / 'checkpoint.pth.tar', map_location='cpu', weights_only=True)
    got = torch.load(out / 'checkpoint.pth.tar', map_location='cpu', weights_only=True)
    for k, v in want['state_dict'].items(): assert torch.equal(v, got['state_dict'][k]), k
    assert steps(out) == steps(straight) == list(range(1, 11))  # each step once, in order


def test_an_elastic_job_goes_on_when_a_machine_leaves(data, straight, tmp_path):
    """`--nnodes 1:2`: two machines (two launchers here, one process each); SIGKILL one whole machine mid-epoch and
    the other restarts, goes on alone from the last checkpoint with 2 batches per update, and ends with exit 0 and
    the weights of an uninterrupted 2-process run (the same samples in every update, one thread per process)."""
    out, p = tmp_path / 'elastic', tcp_port()
    def machine(rank):
        args = [*job(data, out)[:-6], '--log-samples', '--nnodes', '1:2', '--node-rank', rank, '--nproc', 1,
                '--port', p, '--max-restarts', 1]  # job's own --nproc 2, --port and --max-restarts replaced
        return start_cli(*args, start_new_session=True)
    first, second = machine(0), machine(1)
    wait_for_step(out, 3, first)
    os.killpg(second.pid, signal.SIGKILL)  # the machine and every process on it
    second.wait(timeout=30)
    _, err = first.communicate(timeout=600)
    lines = [l for l in err.splitlines() if l.strip()]
    assert first.returncode == 0 and len(lines) == 1 and 'restart 1 of 1 goes on from' in lines[0], err[-3000:]
    assert restarted_at(lines[0]) < 10, lines  # mid-epoch
    log = (out / 'train.log').read_text()
    assert '=> moved from 2 to 1 process: its updates of 8 images stay 2 micro-batches of 4' in log, log[-2000:]
    updates = lambda o: [r for r in map(json.loads, (o / 'metrics.jsonl').read_text().splitlines())
                         if r['kind'] == 'update']
    assert updates(out) == updates(straight) and len(updates(out)) == 10
    want = torch.load(straight / 'checkpoint.pth.tar', map_location='cpu', weights_only=True)
    got = torch.load(out / 'checkpoint.pth.tar', map_location='cpu', weights_only=True)
    for k, v in want['state_dict'].items():
        if v.is_floating_point() and not k.endswith(('running_mean', 'running_var')):
            assert ((got['state_dict'][k] - v).norm() / v.norm()).item() <= 1e-5, k
