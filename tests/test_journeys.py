"""User journeys: each command exactly as a user types it, with the default loader processes (no `--workers 0`),
judged by everything it prints. A command that exits 0 and then prints a traceback has failed, so every test
asserts the exit code *and* that stdout and stderr hold no traceback, no "Exception ignored", no dead loader
process and no warning the user did not cause. One journey runs under a pseudo-terminal, where the progress bar
is drawn, and checks that no log line starts on the bar's line.
"""
import os, pty, re, select, signal, subprocess, sys, time
from pathlib import Path
import pytest
from conftest import ROOT, cli_env, folder_fixture, launch_cmd, make_image_folder, read_records, wait_for_step

# What a clean command never prints (the user caused none of these).
DIRTY = re.compile(r'Traceback|Exception ignored|exited unexpectedly|\w*Warning\b|warnings\.warn|Error:')
QUICK = ['--epochs', 1, '--max-steps', 4, '--image-size', 32]  # the main job, cut to a few steps


def assert_clean(r, code=0):
    "Exit code `code`, and nothing in stdout or stderr that a clean run never prints."
    out = r.stdout + r.stderr
    assert r.returncode == code, f"exit {r.returncode}\n{out[-4000:]}"
    dirty = [l for l in out.splitlines() if DIRTY.search(l)]
    assert not dirty, '\n'.join(dirty[:20]) + '\n---\n' + out[-4000:]


def run(module, *args, timeout=300, env=None):
    return subprocess.run([sys.executable, '-m', f'resnext_nb.{module}', *map(str, args)], cwd=ROOT, env=env or cli_env(),
                          capture_output=True, text=True, timeout=timeout)


data = folder_fixture(24, (5, 4))


@pytest.fixture(scope='module')
def trained(data, tmp_path_factory):
    "One finished run on the tiny folder, default workers: the checkpoint the other journeys start from."
    out = tmp_path_factory.mktemp('trained') / 'run'
    r = run('launch', '--data-path', data, '--arch', 'resnext_tiny', '--image-size', 16, '--batch-size', 8,
            '--epochs', 2, '--device', 'cpu', '--output', out)
    assert_clean(r)
    return out


@pytest.mark.parametrize('nproc', [1, 2])
def test_the_main_job_ends_clean(tmp_path, free_port, nproc):
    "The README's main job on the built-in dataset (a few steps), with its default 2 loader processes."
    extra = ['--nproc', 2, '--port', free_port] if nproc > 1 else []
    r = run('launch', *QUICK, *extra, '--output', tmp_path / 'run', timeout=600)
    assert_clean(r)
    for want in ('=> summary', 'TrainingTime = ', '(ms per step: BatchSize / ActualFPS)', '(images/s, all devices',
                 '=> plots:', '=> next:', 'python -m resnext_nb.predict', '--resume auto', 'python -m resnext_nb.export'):
        assert want in r.stdout, f"{want!r} missing:\n{r.stdout[-3000:]}"
    assert (tmp_path / 'run' / 'loss.png').is_file() and (tmp_path / 'run' / 'model_best.pth.tar').is_file()


def test_evaluate_ends_clean(trained, data):
    r = run('launch', '--evaluate', '--resume', trained / 'model_best.pth.tar', '--arch', 'resnext_tiny', '--image-size', 16,
            '--data-path', data, '--device', 'cpu')  # as the end of the run printed it
    assert_clean(r)
    assert re.search(r' \* Acc@1 [\d.]+ Acc@5 [\d.]+ loss [\d.]+ \(9 images\)', r.stdout), r.stdout


def test_predict_ends_clean(trained, data, tmp_path):
    r = run('predict', trained / 'model_best.pth.tar', data / 'val', '--out', tmp_path / 'p.csv')
    assert_clean(r)
    assert len((tmp_path / 'p.csv').read_text().splitlines()) == 1 + 9


def test_export_onnx_ends_clean(trained, tmp_path):
    pytest.importorskip('onnxruntime')
    r = run('export', trained / 'model_best.pth.tar', '--format', 'onnx', '--out', tmp_path / 'x')
    assert_clean(r)
    assert list((tmp_path / 'x').glob('*.onnx')) and (tmp_path / 'x' / 'model_card.json').is_file()


def test_a_tiny_bench_ends_clean(tmp_path):
    r = run('bench', '--device', 'cpu', '--arch', 'resnext_tiny', '--batch-size', 4, '--image-size', 32, '--warmup', 1,
            '--steps', 2, '--jpeg-size', '64x48', '--out', tmp_path, timeout=600)  # default loader processes
    assert_clean(r)
    assert '- target: project, synthetic ≥ 0.98 × best plain step:' in r.stdout


def test_doctor_ends_clean(data, tmp_path):
    r = run('doctor', '--device', 'cpu', '--arch', 'resnext_tiny', '--data-path', data, '--output', tmp_path)
    assert_clean(r)


def test_sigterm_then_resume_auto_end_clean(data, tmp_path):
    args = ['--data-path', data, '--arch', 'resnext_tiny', '--image-size', 16, '--batch-size', 4, '--epochs', 1,
            '--print-freq', 1, '--device', 'cpu', '--output', tmp_path / 'run']
    proc = subprocess.Popen(launch_cmd(*args), cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(tmp_path / 'run', 3, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    stopped = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert_clean(stopped, code=143)
    assert [l for l in err.splitlines() if l.strip()][-1].startswith('resnext_nb: stopped by SIGTERM;'), err
    assert_clean(run('launch', *args, '--resume', 'auto'))


def render(raw:str) -> list[str]:
    "What a terminal shows for `raw`: carriage returns go back to the start of the line, `ESC[K` erases to its end."
    screen = []
    for line in raw.replace('\r\n', '\n').split('\n'):
        shown, col = [], 0
        for part in re.split(r'(\r|\x1b\[K)', line):
            if part == '\r': col = 0
            elif part == '\x1b[K': del shown[col:]
            else:
                shown[col:col + len(part)] = part; col += len(part)
        screen.append(''.join(shown))
    return screen


def test_render():
    assert render('|██--| 1/4\r\x1b[KEpoch: [0]\n|███-| 2/4') == ['Epoch: [0]', '|███-| 2/4']
    assert render('|██--| 1/4Epoch: [0]\n') == ['|██--| 1/4Epoch: [0]', '']


def test_in_a_terminal_no_log_line_starts_on_the_progress_bar(data, tmp_path):
    "Under a pty 120 columns wide, the bar is drawn; every step line starts at the start of its own line."
    args = ['--data-path', data, '--arch', 'resnext_tiny', '--image-size', 16, '--batch-size', 4, '--epochs', 1,
            '--print-freq', 2, '--device', 'cpu', '--output', tmp_path / 'run']
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command, on the terminal
        os.chdir(ROOT); os.execvpe(sys.executable, launch_cmd(*args), cli_env(COLUMNS=120, LINES=40))
    raw, deadline = b'', time.time() + 300
    while time.time() < deadline:
        if select.select([fd], [], [], 1)[0]:
            try: chunk = os.read(fd, 65536)
            except OSError: break  # the child closed the terminal
            if not chunk: break
            raw += chunk
    _, status = os.waitpid(pid, 0)
    text = raw.decode(errors='replace')
    screen = render(text)
    assert os.waitstatus_to_exitcode(status) == 0, text[-3000:]
    assert not [l for l in screen if DIRTY.search(l)], '\n'.join(screen)
    assert '█' in text or '|--' in text, "no progress bar was drawn"
    steps = [l for l in screen if 'Epoch: [0][' in l]
    assert len(steps) >= 3, '\n'.join(screen)
    assert all(l.startswith('Epoch: [0][') for l in steps), '\n'.join(steps)
    assert any(l.startswith('   TrainingTime = ') for l in screen)


def test_skipped_images_are_counted_in_the_log_and_the_summary(tmp_path):
    "--skip-bad-images: the count reaches train.log and the summary record, not only stderr."
    root = make_image_folder(tmp_path / 'data', {'train': {'a': 8, 'b': 8}, 'val': {'a': 2, 'b': 2}})
    bad = sorted((root / 'train' / 'a').iterdir())[0]
    bad.write_bytes(b'not a jpeg')
    out = tmp_path / 'run'
    r = run('launch', '--data-path', root, '--arch', 'resnext_tiny', '--image-size', 16, '--batch-size', 4, '--epochs', 2,
            '--device', 'cpu', '--skip-bad-images', '--output', out)
    assert r.returncode == 0, r.stderr[-3000:]
    log = (out / 'train.log').read_text()
    assert '=> epoch 0: skipped 1 unreadable images (1 in all' in log and '=> epoch 1: skipped 1 unreadable images (2 in all' in log, log
    assert read_records(out, 'summary')[-1]['skipped_images'] == 2
    assert ', 2 unreadable images skipped' in r.stdout and str(bad) in r.stderr  # the paths: on stderr, as before
