"""Runs that survive their environment (issue 12): preemption, one run per output folder, a full disk, the wrong
checkpoint, and bad values, each through the real command line. Every refusal is one line on stderr, with no
traceback, and the run that was there before still loads with `weights_only=True`."""
import shutil, signal, time
import pytest
import torch
from conftest import (TINY, alive, folder_fixture, job_pids, launch_cmd, make_image_folder, read_records, run_cli,
                      run_together, start_cli, tmpfs, wait_for_step)

STEPS_PER_EPOCH = 120 // 4


data = folder_fixture(60, (5, 4))


def job(data, out, *extra):
    "A small deterministic run: 30 steps an epoch, the metrics read back (and a stop agreed) every step."
    return [*TINY, '--data_path', data, '--image-size', 16, '--batch-size', 4, '--epochs', 2, '--lr', 0.05,
            '--deterministic', '--print-freq', 1, '--output', out, *extra]


@pytest.fixture(scope='module')
def previous(data, tmp_path_factory):
    "A finished one-epoch run whose folder later commands must leave intact."
    out = tmp_path_factory.mktemp('prev') / 'run'
    r = run_cli(*job(data, out, '--epochs', 1))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def loads(path):
    "The checkpoint loads safely and is a training checkpoint."
    state = torch.load(path, map_location='cpu', weights_only=True)
    assert {'epoch', 'arch', 'state_dict', 'optimizer', 'step'} <= state.keys()
    return state


def one_line(r, code, says):
    "Exit `code`, and stderr is exactly one line containing `says` (no traceback)."
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert r.returncode == code, (r.returncode, r.stderr[-3000:])
    assert len(lines) == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    assert says in lines[0], lines[0]
    return lines[0]


def same_weights(a, b):
    want, got = loads(a), loads(b)
    assert (got['epoch'], got['step']) == (want['epoch'], want['step'])
    for k, v in want['state_dict'].items(): assert torch.equal(v, got['state_dict'][k]), f"{k} differs"
    for k, v in want['optimizer']['state'].items(): assert torch.equal(v['momentum_buffer'], got['optimizer']['state'][k]['momentum_buffer'])


# ---------------------------------------------------------------- preemption

@pytest.mark.parametrize('nproc', [1, 2])
def test_a_stop_signal_mid_epoch_saves_and_resumes_exactly(data, tmp_path, free_port, nproc):
    """SIGTERM to the only process, or SIGUSR1 (SLURM's --signal) to the launcher of two, stops at a step, saves there,
    exits 128 + the signal within 10 s, leaving no process; the resumed run is exact. (`test_signals` times SIGTERM and SIGHUP
    under the launcher.)"""
    extra = ('--nproc', nproc, '--port', free_port) if nproc > 1 else ()
    sig = signal.SIGTERM if nproc == 1 else signal.SIGUSR1
    straight = run_cli(*job(data, tmp_path / 'straight', *extra), timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]

    out = tmp_path / 'cut'
    proc = start_cli(*job(data, out, *extra))
    seen = wait_for_step(out, 7, proc)
    pids, sent = job_pids(out), time.time()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=180)
    took = time.time() - sent
    assert proc.returncode == 128 + sig, err[-3000:]
    assert took < 10, f"the job took {took:.1f} s to end after {sig.name}"  # issue 22 asks for 10 s
    time.sleep(0.5)
    assert not alive(pids), f"processes left after {sig.name}: {alive(pids)}"
    line = [l for l in err.splitlines() if l.strip()]
    assert len(line) == 1 and f'stopped by {sig.name}' in line[0] and '--resume auto' in line[0], err[-3000:]
    ckpt = loads(out / 'checkpoint.pth.tar')
    assert seen <= ckpt['step'] < STEPS_PER_EPOCH, ckpt['step']  # the step where the signal was handled, mid-epoch
    assert ckpt['sampler'] == {'epoch': 0, 'start_batch': ckpt['step']}
    assert f"(step {ckpt['step']})" in line[0]
    assert not list(out.glob('.*.tmp'))

    resumed = run_cli(*job(data, out, *extra, '--resume', 'auto'), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    same_weights(tmp_path / 'straight' / 'checkpoint.pth.tar', out / 'checkpoint.pth.tar')
    # the epoch's training loss and accuracy count every rank's steps once, as in the run that never stopped
    train = lambda o: [(r['step'], r['train_loss'], r['train_acc1'], r['val_acc1'], r['val_count']) for r in read_records(o, 'epoch')]
    assert train(out) == train(tmp_path / 'straight')
    # (not val_loss: with the same weights it has differed from the 5th digit on between the two jobs under --nproc 2,
    # by up to about 1e-4 relative on this tiny run's loss of ~300; not yet explained, so not asserted)


def test_ctrl_c_in_the_foreground_saves_too(data, tmp_path):
    out = tmp_path / 'run'
    proc = start_cli(*job(data, out))
    wait_for_step(out, 3, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and 'stopped by SIGINT' in err, err[-3000:]
    assert 0 < loads(out / 'checkpoint.pth.tar')['step'] < STEPS_PER_EPOCH


def test_resume_auto_starts_fresh_without_a_checkpoint(data, tmp_path):
    r = run_cli(*job(data, tmp_path / 'new', '--epochs', 1, '--resume', 'auto'))
    assert r.returncode == 0, r.stderr[-3000:]
    assert loads(tmp_path / 'new' / 'checkpoint.pth.tar')['step'] == STEPS_PER_EPOCH
    one_line(run_cli(*TINY, '--resume', 'auto'), 2, "--resume auto needs --output DIR")


def test_a_killed_save_leaves_no_temporary_file_for_long(data, tmp_path, previous):
    out = tmp_path / 'run'
    r = run_cli(*job(data, out, '--epochs', 1))
    assert r.returncode == 0
    stale = out / f'.checkpoint.pth.tar.{999999}.tmp'
    stale.write_bytes(b'half a checkpoint')
    r = run_cli(*job(data, out, '--resume', 'auto'))  # continues into epoch 2, and clears the leftover first
    assert r.returncode == 0, r.stderr[-3000:]
    assert not stale.exists() and loads(out / 'checkpoint.pth.tar')['epoch'] == 2


# ---------------------------------------------------------------- one run per output folder

def test_a_second_run_into_a_busy_folder_refuses_and_the_first_finishes(data, tmp_path):
    out = tmp_path / 'run'
    first = start_cli(*job(data, out, "--epochs", 8))  # long enough to still be running when the second starts
    wait_for_step(out, 2, first)
    second = run_cli(*job(data, out))
    one_line(second, 2, f"--output {out} is in use by another run (pid {first.pid} on")
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert loads(out / 'checkpoint.pth.tar')['step'] == 8 * STEPS_PER_EPOCH


def test_a_folder_with_a_run_is_refused_unless_resumed_or_overwritten(data, previous):
    before = loads(previous / 'checkpoint.pth.tar')
    one_line(run_cli(*job(data, previous)), 2, "already holds a run (checkpoint.pth.tar): continue it with --resume auto, replace it with --overwrite")
    assert torch.equal(loads(previous / 'checkpoint.pth.tar')['state_dict']['fc.weight'], before['state_dict']['fc.weight'])


def test_overwrite_replaces_the_run(data, tmp_path):
    out = tmp_path / 'run'
    assert run_cli(*job(data, out, '--epochs', 1)).returncode == 0
    r = run_cli(*job(data, out, '--epochs', 1, '--overwrite', '--lr', 0.01))
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(read_records(out, 'summary')) == 1  # the old run's log is gone, not interleaved


# ---------------------------------------------------------------- the disk and the output folder

def test_disk_full_during_a_save_is_one_line_and_keeps_the_last_checkpoint(data, tmp_path):
    with tmpfs(tmp_path / 'disk', '10m') as disk:  # room for one checkpoint and model_best (4.4 MB each), not a third file
        if disk is None: pytest.skip("cannot mount a tmpfs here")
        r = run_cli(*job(data, disk / 'run', '--epochs', 3))
        line = one_line(r, 1, f"cannot save checkpoint {disk / 'run' / 'checkpoint.pth.tar'}")
        assert 'MiB free' in line and 'free some space or choose another --output' in line
        epochs_done = len(read_records(disk / 'run', 'epoch'))  # the failed save came after the last of them
        assert 1 < epochs_done <= 3 and loads(disk / 'run' / 'checkpoint.pth.tar')['epoch'] == epochs_done - 1  # the previous one
        assert not list((disk / 'run').glob('.*.tmp'))


def test_a_read_only_output_or_a_file_is_refused_before_loading(data, tmp_path):
    (tmp_path / 'afile').write_text('x')
    with tmpfs(tmp_path / 'ro', '1m', 'ro') as ro:
        if ro is None: pytest.skip("cannot mount a tmpfs here")
        in_ro, to_file = run_together(launch_cmd(*job(data, ro / 'run')), launch_cmd(*job(data, tmp_path / 'afile')))
        one_line(in_ro, 2, f"--output {ro / 'run'} is not writable (Read-only file system)")
    one_line(to_file, 2, f"--output {tmp_path / 'afile'} is a file: choose a folder")


# ---------------------------------------------------------------- the wrong checkpoint

def test_a_checkpoint_of_another_arch_or_class_count(data, tmp_path, previous):
    ckpt = previous / 'checkpoint.pth.tar'
    three = make_image_folder(tmp_path / 'three', {'train': {'a': 4, 'b': 4, 'c': 4}, 'val': {'a': 1, 'b': 1, 'c': 1}})
    resumed, scored, three_classes = run_together(
        launch_cmd(*job(data, previous, '--resume', ckpt, '--arch', 'resnet50')),
        launch_cmd(*job(data, tmp_path / 'e', '--evaluate', '--resume', ckpt, '--arch', 'resnet50')),
        launch_cmd(*job(three, tmp_path / 'e3', '--evaluate', '--resume', ckpt)))
    one_line(resumed, 2, "--arch resnet50 differs from the checkpoint's resnext_tiny: a resumed run keeps its recipe")
    one_line(scored, 1,
             f"checkpoint {ckpt} is resnext_tiny with 2 classes; this run is resnet50 with 2: pass --arch resnext_tiny")
    one_line(three_classes, 1,
             f"checkpoint {ckpt} is resnext_tiny with 2 classes; this run is resnext_tiny with 3: point --data_path at data with 2 classes")
    loads(ckpt)


def test_an_empty_checkpoint_or_a_folder(data, tmp_path, previous):
    (tmp_path / 'empty.pth.tar').write_bytes(b'')
    empty, folder = run_together(launch_cmd(*job(data, tmp_path / 'r1', '--resume', tmp_path / 'empty.pth.tar')),
                                 launch_cmd(*job(data, tmp_path / 'r2', '--evaluate', '--resume', previous)))
    one_line(empty, 2, "is empty (0 bytes)")
    one_line(folder, 1,
             f"checkpoint {previous} is a folder, not a file: pass the checkpoint inside it, e.g. {previous / 'checkpoint.pth.tar'}")
    loads(previous / 'checkpoint.pth.tar')


def test_evaluate_needs_only_the_val_split(data, tmp_path, previous):
    val_only = make_image_folder(tmp_path / 'v', {'train': {'a': 1, 'b': 1}, 'val': {'a': 5, 'b': 4}})
    shutil.rmtree(val_only / 'train')
    r = run_cli(*job(val_only, tmp_path / 'e', '--evaluate', '--resume', previous / 'checkpoint.pth.tar', '--batch-size', 64))
    assert r.returncode == 0, r.stderr[-3000:]
    assert '* Acc@1' in r.stdout and '(9 images)' in r.stdout


# ---------------------------------------------------------------- bad values, before any work

BAD_VALUES = [
    (['--lr', 'nan'], '--lr nan: must be a finite number'),
    (['--lr', 'inf'], '--lr inf: must be a finite number'),
    (['--batch-size', '0'], '--batch-size 0: must be positive'),
    (['--epochs', '0'], '--epochs 0: must be positive'),
]


def test_bad_values_exit_2_at_once(data, tmp_path):
    runs = run_together(*(launch_cmd(*job(data, tmp_path / f'run{k}', *flags)) for k, (flags, _) in enumerate(BAD_VALUES)))
    for k, ((flags, says), r) in enumerate(zip(BAD_VALUES, runs)):
        one_line(r, 2, says)
        assert not (tmp_path / f'run{k}').exists()  # refused before the output folder, and before the data


def test_a_data_path_that_is_a_file_or_missing(tmp_path):
    (tmp_path / 'f.txt').write_text('x')
    a_file, missing = run_together(launch_cmd(*TINY, '--data_path', tmp_path / 'f.txt', '--output', tmp_path / 'o1'),
                                   launch_cmd(*TINY, '--data_path', tmp_path / 'nope', '--output', tmp_path / 'o2'))
    one_line(a_file, 2, f"--data_path {tmp_path / 'f.txt'} is a file")
    one_line(missing, 2, f"--data_path {tmp_path / 'nope'} does not exist")


def test_resume_with_a_new_recipe_value_is_refused_and_run_flags_take_effect(data, tmp_path, previous):
    one_line(run_cli(*job(data, previous, '--resume', 'auto', '--lr', '1e6')), 2,
             "--lr 1000000.0 differs from the checkpoint's 0.05: a resumed run keeps its recipe")
    out = tmp_path / 'run'
    assert run_cli(*job(data, out, '--epochs', 1)).returncode == 0
    r = run_cli(*TINY, '--data_path', data, '--output', out, '--resume', 'auto', '--epochs', 2)  # recipe from the checkpoint
    assert r.returncode == 0, r.stderr[-3000:]
    last = loads(out / 'checkpoint.pth.tar')
    assert (last['epoch'], last['config']['train']['lr'], last['config']['data']['image_size']) == (2, 0.05, 16)


# ---------------------------------------------------------------- logs a scheduler can keep

def test_a_log_file_gets_lines_not_progress_bar_redraws(data, tmp_path):
    r = run_cli(*job(data, tmp_path / 'run', '--epochs', 1, '--print-freq', 10))
    assert r.returncode == 0 and '\r' not in r.stdout and '█' not in r.stdout
    assert sum(l.startswith('Epoch: [0]') for l in r.stdout.splitlines()) == 3
