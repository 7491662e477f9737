"""`python -m resnext_nb.doctor`, the guarded torch import and `scripts/env_npu.sh`, through their real commands (issue 16)."""
import os, shutil, subprocess, sys
from pathlib import Path
from unittest import mock
import pytest
from conftest import ROOT, TINY, cli_env, launch_cmd, make_image_folder, tmpfs

AUTOLOAD = 'TORCH_DEVICE_BACKEND_AUTOLOAD'


def doctor(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, '-m', 'resnext_nb.doctor', *map(str, args)], cwd=ROOT, env=env or cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def lines(out, status):
    return [l for l in out.splitlines() if l.startswith(status + ' ')]


def fake_torch_npu(root: Path) -> Path:
    "A stand-in torch_npu 2.14.0 (pinning torch 2.14.0): registers torch's autoload entry point, fails to import as without CANN."
    (root / 'torch_npu').mkdir(parents=True)
    (root / 'torch_npu' / '__init__.py').write_text("raise ImportError('libhccl.so: cannot open shared object file: No such file or directory')\n")
    info = root / 'torch_npu-2.14.0.dist-info'
    info.mkdir()
    (info / 'METADATA').write_text('Metadata-Version: 2.1\nName: torch_npu\nVersion: 2.14.0\nRequires-Dist: torch==2.14.0.*\n')
    (info / 'entry_points.txt').write_text('[torch.backends]\ntorch_npu = torch_npu:_autoload\n')
    return root


def env_with(path: Path, **extra):
    env = cli_env(**extra)
    env.pop(AUTOLOAD, None)
    env['PYTHONPATH'] = os.pathsep.join([str(path), str(ROOT), *filter(None, [os.environ.get('PYTHONPATH')])])
    return env


@pytest.fixture
def small_tmpfs(tmp_path):
    "A 2 MiB tmpfs (needs root), or None where it cannot be mounted."
    with tmpfs(tmp_path / 'small', '2m') as mnt: yield mnt


def test_doctor_passes_on_this_machine(tmp_path):
    data = make_image_folder(tmp_path / 'data', {'train': {'a': 3, 'b': 3}, 'val': {'a': 2, 'b': 2}})
    r = doctor('--data_path', data, '--output', tmp_path / 'out')
    assert r.returncode == 0, r.stdout + r.stderr
    assert not lines(r.stdout, 'fail') and r.stderr == '', r.stdout + r.stderr
    assert '=> ' in r.stdout.splitlines()[-1] and 'ok    torch ' in r.stdout


def test_corrupt_jpeg_class_mismatch_and_small_disk_fail_one_line_each(tmp_path, small_tmpfs):
    data = make_image_folder(tmp_path / 'data', {'train': {'a': 3, 'b': 3}, 'val': {'a': 2, 'b': 2, 'c': 1}})
    jpeg = data / 'train' / 'b' / 'b_0001.jpg'
    jpeg.write_bytes(jpeg.read_bytes()[:60])  # cut short: Pillow cannot decode it
    out = (small_tmpfs or tmp_path) / 'run'
    r = doctor('--data_path', data, '--output', out, '--arch', 'resnext50_32x4d', '--device', 'cpu')
    print(r.stdout)
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stdout + r.stderr
    fails = lines(r.stdout, 'fail')
    by_name = {l.split()[1]: l for l in fails}
    assert str(data / 'train') in by_name['classes'] and 'only in val: c' in by_name['classes']
    assert str(jpeg) in by_name['images'] and '1 of 11 sampled images do not decode' in by_name['images']
    if small_tmpfs is None:  # no tmpfs here: the same check in process, with the free space patched
        from resnext_nb.doctor import check_disk
        with mock.patch('shutil.disk_usage', return_value=shutil._ntuple_diskusage(2**21, 0, 2**21)):
            by_name['disk'] = ' '.join(check_disk(out, 'resnext50_32x4d'))
        fails.append(by_name['disk'])
    assert by_name['disk'].startswith('fail') and 'the run needs 573.6 MiB' in by_name['disk'] and '2.0 MiB free' in by_name['disk']
    assert len(fails) == 3, fails


def test_a_torch_npu_without_cann_is_one_line(tmp_path):
    "A stand-in torch_npu that fails as the real one does without CANN: plain `import torch` dies, our commands do not."
    env = env_with(fake_torch_npu(tmp_path / 'site'))
    plain = subprocess.run([sys.executable, '-c', 'import torch'], env=env, capture_output=True, text=True, timeout=120)
    assert plain.returncode != 0 and 'Failed to load the backend extension: torch_npu' in plain.stderr
    r = doctor('--device', 'cpu', '--arch', 'resnext_tiny', '--output', tmp_path / 'out', env=env)
    print(r.stdout)
    assert r.returncode == 1 and r.stderr == '', r.stdout + r.stderr
    cann = [l for l in lines(r.stdout, 'fail') if l.split()[1] == 'CANN']
    assert len(cann) == 1 and 'CANN is not sourced (libhccl.so not found): ' in cann[0]
    from importlib.metadata import version
    if not version('torch').startswith('2.14.0'):
        assert any("is built for torch 2.14.0, but torch is" in l and "pip install 'torch==2.14.0.*'" in l for l in lines(r.stdout, 'fail'))


def test_the_device_module_turns_the_failure_into_a_warning(tmp_path):
    env = env_with(fake_torch_npu(tmp_path / 'site'))
    code = 'import resnext_nb.device as d; print(d.torch.ones(2).sum().item(), d.resolve_device_type("cpu"))'
    r = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ['2.0', 'cpu'], r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and 'CANN is not sourced' in r.stderr and 'continuing without NPUs' in r.stderr


def launch_without_cann(env, tmp_path):
    data = make_image_folder(tmp_path / 'data', {'train': {'a': 4, 'b': 4}, 'val': {'a': 2, 'b': 2}})
    args = [*TINY, '--data_path', data, '--image-size', 16, '--batch-size', 4, '--epochs', 1, '--max-steps', 1, '--output', tmp_path / 'run']
    return subprocess.run(launch_cmd(*args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def assert_runs_with_one_warning_or_stops_with_one_line(r):
    assert 'Traceback' not in r.stderr, r.stderr[-3000:]
    hints = [l for l in r.stderr.splitlines() if 'CANN is not sourced' in l]
    assert len(hints) == 1, r.stderr[-3000:]
    assert r.returncode == 0 or len(r.stderr.strip().splitlines()) == 1, r.stderr[-3000:]


def test_launch_on_the_cpu_without_cann(tmp_path):
    r = launch_without_cann(env_with(fake_torch_npu(tmp_path / 'site')), tmp_path)
    assert_runs_with_one_warning_or_stops_with_one_line(r)


# scripts/env_npu.sh

ENV_NPU = ROOT / 'scripts' / 'env_npu.sh'
SET = ('TASK_QUEUE_ENABLE', 'CPU_AFFINITY_CONF', 'HCCL_WHITELIST_DISABLE', 'HCCL_CONNECT_TIMEOUT', 'HCCL_EXEC_TIMEOUT')


def stub_toolkit(root: Path) -> Path:
    "An ASCEND_HOME with a stub set_env.sh that, like CANN's, reads a variable that may be unset."
    (root / 'ascend-toolkit').mkdir(parents=True)
    (root / 'ascend-toolkit' / 'set_env.sh').write_text(
        f'export ASCEND_HOME_PATH={root}/ascend-toolkit/latest\n'
        f'export LD_LIBRARY_PATH={root}/ascend-toolkit/latest/lib64:${{LD_LIBRARY_PATH}}\nexport STUB_SOURCED=1\n')
    return root


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(('ASCEND_', 'HCCL_')) and k not in SET + ('LD_LIBRARY_PATH',)}
    return {**env, **extra}


def sourced_env(env, *args):
    "The environment after `source scripts/env_npu.sh ARGS` in a strict bash, and the run."
    r = subprocess.run(['bash', '-c', f'set -euo pipefail; source "{ENV_NPU}" {" ".join(args)}; env -0'], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return dict(kv.split('=', 1) for kv in r.stdout.split('\0') if '=' in kv), r


def test_env_npu_sources_the_toolkit_and_sets_the_variables(tmp_path):
    home = stub_toolkit(tmp_path / 'Ascend')
    env, r = sourced_env(clean_env(ASCEND_HOME=str(home), TASK_QUEUE_ENABLE='1'))
    assert env['STUB_SOURCED'] == '1' and env['ASCEND_HOME_PATH'] == f'{home}/ascend-toolkit/latest'
    assert {k: env[k] for k in SET} == {'TASK_QUEUE_ENABLE': '1', 'CPU_AFFINITY_CONF': '1', 'HCCL_WHITELIST_DISABLE': '1',
                                        'HCCL_CONNECT_TIMEOUT': '1200', 'HCCL_EXEC_TIMEOUT': '1800'}
    assert f'sourced {home}/ascend-toolkit/set_env.sh' in r.stdout and 'TASK_QUEUE_ENABLE=1 (kept)' in r.stdout
    assert not [k for k in env if k.startswith('_env_npu')], "env_npu.sh leaked its own variables"


@pytest.mark.skipif(Path('/usr/local/Ascend').exists() or (Path.home() / 'Ascend').exists(), reason='this machine has a toolkit')
def test_env_npu_without_a_toolkit_does_nothing_and_says_so(tmp_path):
    env, r = sourced_env(clean_env(HOME=str(tmp_path)))
    assert 'no Ascend toolkit found' in r.stderr and 'nothing set' in r.stderr
    assert not any(k in env for k in SET)
    _, quiet = sourced_env(clean_env(HOME=str(tmp_path)), '--if-found')
    assert 'env_npu.sh' not in quiet.stdout and quiet.stderr == ''


def test_the_seed_scripts_source_env_npu(tmp_path):
    "train_*.sh source env_npu.sh before starting the launcher (here a stand-in python that records its environment)."
    home = stub_toolkit(tmp_path / 'Ascend')
    fake_python = tmp_path / 'python'
    fake_python.write_text(f'#!/bin/sh\nenv > "{tmp_path}/seen_env"\nexit 3\n')
    fake_python.chmod(0o755)
    r = subprocess.run(['bash', ROOT / 'scripts' / 'train_performance_1p.sh', f'--data_path={tmp_path}'], cwd=tmp_path,
                       env=clean_env(ASCEND_HOME=str(home), PYTHON=str(fake_python), RUN_NAME='x'), capture_output=True, text=True, timeout=60)
    assert r.returncode == 3, r.stdout + r.stderr
    seen = (tmp_path / 'seen_env').read_text().splitlines()
    assert 'STUB_SOURCED=1' in seen and 'TASK_QUEUE_ENABLE=2' in seen and 'HCCL_CONNECT_TIMEOUT=1200' in seen


def test_env_npu_is_valid_bash():
    assert subprocess.run(['bash', '-n', ENV_NPU]).returncode == 0
    if shutil.which('shellcheck') is None: pytest.skip('shellcheck is not installed')
    r = subprocess.run(['shellcheck', ENV_NPU], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_the_script_and_the_device_chapter_look_in_the_same_places():
    from resnext_nb.device import CANN_SET_ENV
    text = ENV_NPU.read_text()
    for p in CANN_SET_ENV: assert p.replace('~', '"${HOME:-/root}') in text or p in text, p
