"""Nothing lost, nothing silently wrong (issue 22): a resumed run keeps its recipe, a finished run is left as it is, and
after any number of kills and resumes the logs tell one story, identical to an uninterrupted run's but for timings."""
import json, random, re, signal, subprocess, time
import pytest, torch
from conftest import ROOT, TINY, cli_env, folder_fixture, last_step, launch_cmd, read_records, run_cli

TIMINGS = {'fps', 'peak_memory_mb', 'train_time_s'}  # what may differ between two runs of the same recipe


data = folder_fixture(30, (3, 3))


def job(data, out, *extra):
    "15 steps an epoch, 2 epochs, deterministic, a checkpoint every 3 steps."
    return [*TINY, '--data-path', data, '--image-size', 16, '--batch-size', 4, '--epochs', 2, '--lr', 0.05,
            '--deterministic', '--print-freq', 1, '--checkpoint-every', 3, '--output', out, *extra]


def test_a_resumed_run_keeps_the_checkpoints_epochs_and_a_finished_one_stays_finished(data, tmp_path):
    out = tmp_path / 'run'
    first = run_cli(*job(data, out, '--recipe', 'tv-v2', '--epochs', 1))
    assert first.returncode == 0, first.stderr[-3000:]
    shown = run_cli('--resume', 'auto', '--output', out, '--print-config')  # nothing else given
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert 'train.epochs = 1  (checkpoint)' in shown.stdout and 'train.recipe = ' in shown.stdout, shown.stdout
    assert f"data.data_path = '{data}'  (checkpoint)" in shown.stdout, shown.stdout  # not the quick start's preset
    summary = next(out.glob('*_acc.log'), None) or next(p for p in out.glob('*.log') if p.name != 'train.log')
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.startswith('.')}
    again = run_cli('--resume', 'auto', '--output', out)
    assert again.returncode == 0 and again.stderr == '', again.stderr[-3000:]
    lines = again.stdout.strip().splitlines()
    assert len(lines) == 1 and 'has finished its 1 epochs' in lines[0] and '--epochs N' in lines[0], again.stdout
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.startswith('.')}
    assert after == before and summary.name in after  # the summary, logs and reports are left as they were


def comparable(out):
    "The run's records without timings, and its log with the timing figures blanked."
    recs = [{k: v for k, v in r.items() if k not in TIMINGS} for r in read_records(out)]
    log = re.sub(r'(FPS@all|took) [\d.]+', r'\1 X', (out / 'train.log').read_text())
    log = re.sub(r'[\d.]+ images/s', 'X images/s', log)
    return recs, log.splitlines()


def test_ten_kills_and_resumes_end_exact_with_one_story(data, tmp_path):
    straight = tmp_path / 'straight'
    r = run_cli(*job(data, straight))
    assert r.returncode == 0, r.stderr[-3000:]
    out, rng, kills = tmp_path / 'cut', random.Random(0), 0
    start = lambda *extra: subprocess.Popen(launch_cmd(*job(data, out, *extra)), cwd=ROOT, env=cli_env(),
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc = start()
    for target in sorted(rng.sample(range(2, 30), 10)):  # ten random steps of the 30, then a random moment after each
        while proc.poll() is None and last_step(out) < target: time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))  # mid-step, mid-save, in validation...
        if proc.poll() is not None: break
        proc.kill(); proc.wait(); kills += 1
        proc = start('--resume', 'auto')
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert kills == 10, f"only {kills} kills landed before the run ended"
    want, got = (torch.load(d / 'checkpoint.pth.tar', map_location='cpu', weights_only=True) for d in (straight, out))
    for k, v in want['state_dict'].items(): assert torch.equal(v, got['state_dict'][k]), k
    (want_recs, want_log), (got_recs, got_log) = comparable(straight), comparable(out)
    assert got_recs == want_recs  # each step and epoch once, in order, and one summary covering the whole run
    assert got_log == want_log
    assert sum(r['kind'] == 'summary' for r in got_recs) == 1


@pytest.mark.parametrize('flag', ['--output', '--data-path'])
def test_a_path_part_over_255_bytes_is_one_line(data, tmp_path, flag):
    long = tmp_path / ('x' * 300)
    args = ['--data-path', data, '--output', tmp_path / 'run'] if flag == '--output' else ['--data-path', long, '--output', tmp_path / 'run']
    if flag == '--output': args[-1] = long
    r = run_cli(*TINY, *args, '--epochs', 1)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    assert 'File name too long: each part of a path is at most 255 bytes' in lines[0]


def test_a_run_without_output_never_takes_a_folder_of_the_same_second(data, tmp_path):
    "Without --output the folder is named by the second; if that folder exists (a run started in the same second), `-2`."
    from datetime import datetime, timedelta
    now = datetime.now()
    taken = [tmp_path / 'output' / f"resnext_tiny-{(now + timedelta(seconds=k)).strftime('%Y%m%d-%H%M%S')}" for k in range(0, 8)]
    for t in taken: t.mkdir(parents=True); (t / 'train.log').write_text('another run\n')
    args = [*TINY, '--data-path', data, '--image-size', 16, '--batch-size', 4, '--epochs', 1, '--max-steps', 2]
    r = subprocess.run(launch_cmd(*args), cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert all((t / 'train.log').read_text() == 'another run\n' and len(list(t.iterdir())) == 1 for t in taken)
    (mine,) = [p for p in (tmp_path / 'output').iterdir() if p not in taken]
    assert mine.name.endswith('-2') and (mine / 'checkpoint.pth.tar').is_file(), mine
