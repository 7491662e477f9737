"""The real `torch-npu` wheel on a machine without CANN (issue 16). The wheel is the one the NPU stand-in uses
(tests/npu_standin.py): ~/.cache/resnext_nb/wheels, RESNEXT_NB_NPU_WHEEL (a wheel or a folder), or downloaded there with
pip; without it and without a package index these skip with one line (on CI they fail). It is installed with --no-deps
into a temporary folder put first on PYTHONPATH."""
import subprocess, sys
import pytest
import npu_standin
from test_doctor import assert_runs_with_one_warning_or_stops_with_one_line, doctor, env_with, launch_without_cann, lines

WHEEL = npu_standin.wheel_or_skip()  # else one line: a skip here, a failure on CI


@pytest.fixture(scope='module')
def npu_site(tmp_path_factory):
    site = tmp_path_factory.mktemp('npu') / 'site'
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--target', site, WHEEL], check=True, timeout=600)
    return site


def test_plain_import_torch_fails_with_the_wheel(npu_site):
    r = subprocess.run([sys.executable, '-c', 'import torch'], env=env_with(npu_site), capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and 'Failed to load the backend extension: torch_npu' in r.stderr


def test_doctor_names_the_missing_cann_libraries_and_the_version(npu_site, tmp_path):
    r = doctor('--device', 'cpu', '--arch', 'resnext_tiny', '--output', tmp_path, env=env_with(npu_site))
    print(r.stdout)
    assert r.returncode == 1 and r.stderr == '', r.stdout + r.stderr
    cann = [l for l in lines(r.stdout, 'fail') if l.split()[1] == 'CANN']
    assert len(cann) == 1 and 'CANN is not sourced (libhccl.so' in cann[0] and 'libascendcl.so' in cann[0] and 'set_env.sh' in cann[0]
    from importlib.metadata import version
    if not version('torch').startswith('2.14.0'):
        (npu,) = [l for l in lines(r.stdout, 'fail') if l.split()[1] == 'torch_npu']
        assert f"torch_npu 2.14.0 is built for torch 2.14.0, but torch is {version('torch')}" in npu and "pip install 'torch==2.14.0.*'" in npu


def test_launch_on_the_cpu_with_the_wheel(npu_site, tmp_path):
    r = launch_without_cann(env_with(npu_site), tmp_path)
    print(r.stderr[-2000:])
    assert_runs_with_one_warning_or_stops_with_one_line(r)
