"Shared helpers for the subprocess tests: tiny image folders, free ports, and running the real CLI."
import os, socket, subprocess, sys
from contextlib import contextmanager
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]


def make_image_folder(root: Path, counts: dict, size: int = 20, seed: int = 0) -> Path:
    """An ImageNet-layout tree of small JPEGs from the package's one writer: `counts` maps split -> {class: n_images},
    and the splits may name different classes. Each class has its own colour under strong noise, so the data is
    learnable but not trivial."""
    from resnext_nb.data import write_image_folder
    classes = sorted({*counts['train'], *counts['val']})
    n = {split: {c: counts[split].get(c, 0) for c in classes} for split in ('train', 'val')}
    write_image_folder(root, classes, n['train'], n['val'], size, seed=seed)
    for folder in root.glob('*/*'):  # a class one split lacks has no folder there
        if folder.is_dir() and not any(folder.iterdir()): folder.rmdir()
    return root


def folder_fixture(train: int, val: tuple, size: int = 20):
    """A module-scoped `data` fixture: an image folder of classes a and b with `train` images each and `val` = (a, b)
    validation images, made once for the test module that assigns it (`data = folder_fixture(30, (5, 4))`)."""
    @pytest.fixture(scope='module')
    def data(tmp_path_factory):
        counts = {'train': {'a': train, 'b': train}, 'val': {'a': val[0], 'b': val[1]}}
        return make_image_folder(tmp_path_factory.mktemp('data'), counts, size=size)
    return data


def tcp_port() -> int:
    "A TCP port free on this machine now, for a job's rendezvous (call it once per job)."
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture
def free_port(): return tcp_port()


def cli_env(**extra):
    "Environment for CLI subprocesses: quiet threads, this interpreter's packages, a private cache."
    env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def launch_cmd(*args):
    return [sys.executable, '-m', 'resnext_nb.launch', *map(str, args)]


def run_cli(*args, timeout=300, cwd=None, env=None):
    "Run `python -m resnext_nb.launch ARGS` to completion; returns the CompletedProcess."
    return subprocess.run(launch_cmd(*args), cwd=cwd or ROOT, env=env or cli_env(), capture_output=True, text=True, timeout=timeout)


def module_cmd(module, *args):
    return [sys.executable, '-m', f'resnext_nb.{module}', *map(str, args)]


def run_module(module, *args, timeout=300):
    "Run `python -m resnext_nb.<module> ARGS`; returns the CompletedProcess."
    return subprocess.run(module_cmd(module, *args), cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                          timeout=timeout)


def run_together(*commands, timeout=300, cwd=None, env=None):
    """Run the commands (`launch_cmd(...)`, `module_cmd(...)`) at the same time, each to completion; their
    CompletedProcesses, in order. For commands that do not depend on each other: most of each one's time is the
    interpreter starting and importing torch, which the two cores then share. `env`: one environment for all, or a
    list of one per command."""
    envs = env if isinstance(env, list) else [env] * len(commands)
    procs = [subprocess.Popen(c, cwd=cwd or ROOT, env=e or cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for c, e in zip(commands, envs)]
    def finished(p):
        out, err = p.communicate(timeout=timeout)
        return subprocess.CompletedProcess(p.args, p.returncode, out, err)
    try: return [finished(p) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None: p.kill(); p.wait()


def start_cli(*args, **kw):
    "Start `python -m resnext_nb.launch ARGS` in the background, its output piped; returns the Popen."
    return subprocess.Popen(launch_cmd(*args), cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


@contextmanager
def tmpfs(path: Path, size: str, *opts):
    "A tmpfs of `size` mounted at `path` (root only) for the block, or None where it cannot be mounted."
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', ','.join((f'size={size}', *opts)), 'tmpfs', str(path)], capture_output=True).returncode:
        yield None
        return
    try: yield path
    finally: subprocess.run(['umount', str(path)])


def read_records(output: Path, kind=None):
    import json
    recs = [json.loads(l) for l in (output / 'metrics.jsonl').read_text().splitlines() if l.strip()]
    return [r for r in recs if kind is None or r['kind'] == kind]


TINY = ['--arch', 'resnext_tiny', '--device', 'cpu', '--workers', '0', '--seed', '0']


def last_step(out: Path) -> int:
    "The highest step a run in `out` has logged (0 before its first record)."
    try: return max((r['step'] for r in read_records(out, 'step')), default=0)
    except (FileNotFoundError, ValueError): return 0


def wait_for_step(out: Path, step: int, proc, timeout=240) -> int:
    "Wait until the run in `out` (process `proc`) has logged `step`; fail if it ends or times out first."
    import time
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (got := last_step(out)) >= step: return got
        if proc.poll() is not None: raise AssertionError(f"the run ended with {proc.returncode} before step {step}")
        time.sleep(0.02)
    raise AssertionError(f"the run never reached step {step} in {timeout} s")


def children(pid):
    "The processes `pid` started, with their command lines."
    try: kids = [int(k) for k in Path(f'/proc/{pid}/task/{pid}/children').read_text().split()]
    except FileNotFoundError: return {}
    def cmdline(k):
        try: return Path(f'/proc/{k}/cmdline').read_bytes()
        except FileNotFoundError: return None
    return {k: c for k in kids if (c := cmdline(k)) is not None}


def alive(pids):
    "The processes of `pids` still running (neither gone nor zombies)."
    from resnext_nb.data import process_ended
    return [p for p in pids if not process_ended(p)]


def job_pids(out):
    "The launcher (its command line names the output folder) and all its descendants: ranks and loader processes."
    pids = [int(p) for p in subprocess.run(['pgrep', '-f', str(out)], capture_output=True, text=True).stdout.split()]
    for p in pids: pids += list(children(p))
    return pids
