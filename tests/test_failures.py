"""A failure mid-epoch saves first (issue 22, item 2), through the real command: an unreadable training image, a loader
process killed by the system, and an unreadable validation image each end the run with exit code 1 and one line that
names the image (or the process) and the checkpoint; that checkpoint holds every step done, still loads, and once the
cause is fixed, `--resume auto` ends with the weights and records of a run that never failed."""
import os, re, shutil, signal, subprocess, time
from pathlib import Path
import pytest, torch
from conftest import (ROOT, TINY, children, cli_env, last_step, launch_cmd, make_image_folder, read_records, run_cli,
                      tcp_port)

TIMINGS = {'fps', 'peak_memory_mb', 'train_time_s'}
COUNTS = {'train': {'a': 30, 'b': 30}, 'val': {'a': 3, 'b': 3}}  # 15 steps an epoch at batch 4


def job(data, out, *extra):
    return [*TINY, '--data-path', data, '--image-size', 16, '--batch-size', 4, '--epochs', 2, '--lr', 0.05,
            '--deterministic', '--print-freq', 1, '--output', out, *extra]


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
    "The data, and an uninterrupted run on it: what every failed and resumed run must end as."
    tmp = tmp_path_factory.mktemp('failures')
    data = make_image_folder(tmp / 'data', COUNTS, size=20)
    r = run_cli(*job(data, tmp / 'straight'))
    assert r.returncode == 0, r.stderr[-3000:]
    return data, tmp / 'straight'


def one_line(res):
    "A failed run's stderr: exactly one line, no traceback; returns it."
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert res.returncode == 1, (res.returncode, res.stderr[-3000:])
    assert len(lines) == 1 and 'Traceback' not in res.stderr, res.stderr[-3000:]
    return lines[0]


def saved(out):
    from resnext_nb.checkpoints import read_checkpoint  # the library's own loader: checksums checked
    return read_checkpoint(out / 'checkpoint.pth.tar')


def same_as_straight(out, straight_out):
    want, got = saved(straight_out), saved(out)
    for k, v in want['state_dict'].items(): assert torch.equal(v, got['state_dict'][k]), k
    untimed = lambda o: [{k: v for k, v in r.items() if k not in TIMINGS} for r in read_records(o)]
    assert untimed(out) == untimed(straight_out)


def test_an_unreadable_training_image_saves_the_steps_done(straight, tmp_path):
    src, straight_out = straight
    data, out = Path(shutil.copytree(src, tmp_path / 'data')), tmp_path / 'run'
    bad = data / 'train' / 'a' / 'a_0025.jpg'  # epoch 0's shuffle puts it in the third batch
    good = bad.read_bytes(); bad.write_bytes(b'not a jpeg')
    line = one_line(run_cli(*job(data, out)))
    assert line.startswith(f"resnext_nb: error: cannot read image {bad}"), line
    assert f"{out / 'checkpoint.pth.tar'} (step 2) keeps every step done" in line and '--resume auto' in line, line
    assert (saved(out)['step'], saved(out)['sampler']) == (2, {'epoch': 0, 'start_batch': 2})
    bad.write_bytes(good)  # the fix the line asks for
    r = run_cli(*job(data, out, '--resume', 'auto'))
    assert r.returncode == 0 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    same_as_straight(out, straight_out)


def test_an_unreadable_validation_image_keeps_the_epochs_training(straight, tmp_path):
    src, straight_out = straight
    data, out = Path(shutil.copytree(src, tmp_path / 'data')), tmp_path / 'run'
    bad = data / 'val' / 'b' / sorted(os.listdir(data / 'val' / 'b'))[0]
    good = bad.read_bytes(); bad.write_bytes(b'not a jpeg')
    line = one_line(run_cli(*job(data, out)))
    assert line.startswith(f"resnext_nb: error: cannot read image {bad}") and '(step 15) keeps every step done' in line, line
    assert saved(out)['sampler'] == {'epoch': 0, 'start_batch': 15}  # trained, not validated: the resume validates first
    bad.write_bytes(good)
    r = run_cli(*job(data, out, '--resume', 'auto'))
    assert r.returncode == 0 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    same_as_straight(out, straight_out)


def loader_processes(pid):
    "The DataLoader worker processes of `pid`: its children started from the same command line (not the resource tracker)."
    cmd = Path(f'/proc/{pid}/cmdline').read_bytes()
    return [k for k, c in children(pid).items() if c == cmd]


def test_a_killed_loader_process_saves_the_steps_done(straight, tmp_path):
    "The system kills a loader process (as the OOM killer does) in the middle of epoch 0; workers 2, as users run."
    data, straight_out = straight
    out = tmp_path / 'run'
    args = job(data, out, '--workers', 2)  # the later flag wins; the worker count does not change the results
    proc = subprocess.Popen(launch_cmd(*args), cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while last_step(out) < 3 and proc.poll() is None: time.sleep(0.005)
    workers = loader_processes(proc.pid)
    assert workers and proc.poll() is None, 'the run ended before a loader process could be killed'
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    line = one_line(subprocess.CompletedProcess(proc.args, proc.returncode, '', err))
    assert re.match(rf"resnext_nb: error: a loader process died \(DataLoader worker \(pid(\(s\))? {workers[0]}\)", line), line
    step = saved(out)['step']
    assert 3 <= step < 30 and f"(step {step}) keeps every step done" in line, line
    r = run_cli(*args, '--resume', 'auto')
    assert r.returncode == 0 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    same_as_straight(out, straight_out)


def test_under_the_launcher_another_ranks_killed_loader_process_saves_too(straight, tmp_path):
    """`--nproc 2 --workers 1`: the system kills a loader process of rank 1 mid-epoch; the ranks agree to end, rank 0 saves
    every step done, and rank 1 says what happened in one line."""
    data, _ = straight
    out = tmp_path / 'run'
    proc = subprocess.Popen(launch_cmd(*job(data, out, '--nproc', 2, '--port', tcp_port(), '--workers', 1)), cwd=ROOT,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while last_step(out) < 3 and proc.poll() is None: time.sleep(0.005)
    ranks = sorted(k for k, c in children(proc.pid).items() if b'spawn_main' in c)  # started in order: rank 0, rank 1
    # its loader processes, train and val (forked from the rank: they carry its command line)
    workers = sorted(k for k, c in children(ranks[-1]).items() if b'spawn_main' in c) if len(ranks) == 2 else []
    assert workers and proc.poll() is None, 'the run ended before a loader process could be killed'
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    lines = [l for l in err.splitlines() if l.strip()]
    assert proc.returncode == 1 and 'Traceback' not in err and len(lines) == 3, err[-3000:]
    assert lines[0].startswith('resnext_nb: error: [rank 1] a loader process died'), lines
    step = saved(out)['step']
    assert 3 <= step < 30 and f"(step {step}) keeps every step done" in lines[0], lines


def test_under_the_launcher_rank_0s_failure_saves_too(straight, tmp_path, free_port):
    """`--nproc 2`: the rank that reads the bad image is rank 0; the ranks agree to end before the next batch, rank 0
    saves the steps done and tells the user; the other rank ends quietly, and the launcher lists only rank 0."""
    src, _ = straight
    data, out = Path(shutil.copytree(src, tmp_path / 'data')), tmp_path / 'run'
    bad = data / 'train' / 'a' / 'a_0025.jpg'  # in the third batch, dealt to rank 0
    bad.write_bytes(b'not a jpeg')
    r = run_cli(*job(data, out, '--nproc', 2, '--port', free_port))
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    assert lines[0].startswith(f"resnext_nb: error: [rank 0] cannot read image {bad}"), lines
    assert '(step 2) keeps every step done' in lines[0] and lines[1:] == [
        'resnext_nb: the job failed', next(l for l in lines if l.strip().startswith('rank 0 (pid'))], lines
    assert saved(out)['step'] == 2


def test_under_the_launcher_another_ranks_failure_saves_too(straight, tmp_path):
    """`--nproc 2` and the bad image in rank 1's third batch: the ranks agree to end before it, rank 0 saves the two steps
    done (as a SIGTERM's save, whose resume `test_reliability` shows exact under --nproc 2), and rank 1 tells the user in
    one line; rank 0 ends quietly, so the launcher lists rank 1 alone."""
    src, _ = straight
    data, out = Path(shutil.copytree(src, tmp_path / 'data')), tmp_path / 'run'
    bad = data / 'train' / 'b' / 'b_0018.jpg'  # index 48: in rank 1's third batch of epoch 0
    bad.write_bytes(b'not a jpeg')
    r = run_cli(*job(data, out, '--nproc', 2, '--port', tcp_port()))
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    assert lines[0].startswith(f"resnext_nb: error: [rank 1] cannot read image {bad}"), lines
    assert '(step 2) keeps every step done' in lines[0] and len(lines) == 3 and lines[1] == 'resnext_nb: the job failed', lines
    assert lines[2].strip().startswith('rank 1 (pid') and 'exit code 1' in lines[2], lines
    assert (saved(out)['step'], saved(out)['sampler']) == (2, {'epoch': 0, 'start_batch': 2})


def test_under_the_launcher_another_ranks_bad_validation_image_keeps_the_epochs_training(straight, tmp_path):
    "`--nproc 2`, the bad image in rank 1's share of val/: the ranks agree to end, and rank 0 saves the epoch's 15 steps."
    src, _ = straight
    data, out = Path(shutil.copytree(src, tmp_path / 'data')), tmp_path / 'run'
    bad = data / 'val' / 'a' / sorted(os.listdir(data / 'val' / 'a'))[1]  # val index 1: rank 1's first image
    bad.write_bytes(b'not a jpeg')
    r = run_cli(*job(data, out, '--nproc', 2, '--port', tcp_port()))
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 1 and 'Traceback' not in r.stderr and len(lines) == 3, r.stderr[-3000:]
    assert lines[0].startswith(f"resnext_nb: error: [rank 1] cannot read image {bad}"), lines
    assert '(step 15) keeps every step done' in lines[0] and lines[2].strip().startswith('rank 1 (pid'), lines
    assert saved(out)['sampler'] == {'epoch': 0, 'start_batch': 15}  # trained, not validated: the resume validates


def test_more_accumulation_steps_than_batches_is_one_line(straight, tmp_path):
    "15 batches an epoch and --grad-accum-steps 20: not one whole update of 20 batches in an epoch, said in one line."
    data, _ = straight
    r = run_cli(*job(data, tmp_path / 'run', '--grad-accum-steps', 20))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    assert 'train images, too few for one update of 4 images x 20 batches on each of 1 rank(s)' in r.stderr, r.stderr
    assert r.stderr.rstrip().endswith('lower --batch-size or --grad-accum-steps'), r.stderr
