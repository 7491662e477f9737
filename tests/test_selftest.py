"""`python -m resnext_nb.doctor --selftest` (issue 21): the command on this machine, whose device is its CPU; a
layer perturbed in the device's copy only, which must be named first; and the NPU branch of the optimizer and
loss-scaler rows on torch_npu's own code, through the NPU stand-in (tests/npu_standin.py)."""
import copy, json, os, subprocess, sys
from pathlib import Path
from unittest import mock
import pytest, torch
from conftest import ROOT, cli_env
import resnext_nb.doctor as doctor
from resnext_nb.device import AmpConfig, resolve_precision

CHECKS = ['numerics fp32', 'numerics bf16', 'optimizer', 'loss scaler', 'collective', 'gpu decode']
TINY_CPU = ['--arch', 'resnext_tiny', '--device', 'cpu']


def selftest(*args, env=None, cwd=ROOT, timeout=300):
    cmd = [sys.executable, '-m', 'resnext_nb.doctor', '--selftest', *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=env or cli_env(), capture_output=True, text=True, timeout=timeout)


def table(out: str) -> dict:
    "The self-test's table as {check: (status, figure, detail)}, cut at the header's columns."
    lines = out.splitlines()
    head = next(i for i, l in enumerate(lines) if l.startswith('check '))
    cols = [lines[head].index(c) for c in ('status', 'figure', 'detail')]
    rows = {}
    for l in lines[head + 1:]:
        if l.startswith('=> '): break
        rows[l[:cols[0]].strip()] = (l[cols[0]:cols[1]].strip(), l[cols[1]:cols[2]].strip(), l[cols[2]:])
    return rows


def test_the_selftest_passes_on_this_cpu(tmp_path):
    r = selftest(*TINY_CPU, '--output', tmp_path / 'run')
    print(r.stdout)
    assert r.returncode == 0 and r.stderr == '', r.stdout + r.stderr
    rows = table(r.stdout)
    assert list(rows) == CHECKS
    assert [s for s, _, _ in rows.values()] == ['pass'] * 5 + ['skip']
    assert 'fp64 on the CPU' in rows['numerics fp32'][2] and '(tolerance 1e-05, fp32)' in rows['numerics fp32'][2]
    compared = rows['optimizer'][2].split('; ')[1]
    assert compared.startswith('torch.optim.SGD (sgd_class on cpu) vs torch.optim.SGD(foreach=False)')
    assert rows['loss scaler'][1] == '1 of 3 skipped' and 'scale 65536 -> 32768' in rows['loss scaler'][2]
    assert rows['collective'][2].startswith('gloo, 2 processes, all_reduce of 64 MiB')
    assert rows['collective'][1].endswith('GB/s')
    assert 'needs a CUDA GPU' in rows['gpu decode'][2]
    path = tmp_path / 'run' / 'selftest.json'
    assert r.stdout.splitlines()[-1] == f"=> 6 checks: 5 passed, 0 failed, 1 skipped; wrote {path}"
    report = json.loads(path.read_text())
    assert report['passed'] is True and report['arch'] == 'resnext_tiny' and report['device_type'] == 'cpu'
    assert [c['name'] for c in report['checks']] == CHECKS
    fp32 = report['checks'][0]['data']
    assert len(fp32['worst_by_layer']) == 35 and fp32['tolerance'] == 1e-5
    assert all(max(q.values()) < 1e-5 for q in fp32['worst_by_layer'].values())


@pytest.fixture(scope='module')
def reference():
    model, batches = doctor.seeded_model('resnext_tiny'), doctor.numerics_batches()
    return model, batches, doctor.trace_steps(copy.deepcopy(model), batches, torch.device('cpu'))


def perturbed(model, layer: str, by: float = 1e-3, seed: int = 1):
    "A copy of `model` with `layer`'s weight multiplied by 1 + `by` x N(0, 1), element by element."
    model = copy.deepcopy(model)
    with torch.no_grad():
        w = model.get_submodule(layer).weight
        w.mul_(1 + by * torch.randn(w.shape, generator=torch.Generator().manual_seed(seed)))
    return model


@pytest.mark.parametrize('layer', ['conv1', 'layer1.0.bn2', 'layer3.0.conv2', 'layer4.0.downsample.0', 'fc'])
def test_a_layer_off_by_1e_3_is_the_first_named(reference, layer):
    model, batches, ref = reference
    fp32 = resolve_precision(AmpConfig(), 'cpu')
    dev = doctor.trace_steps(perturbed(model, layer), batches, torch.device('cpu'), fp32, ref)
    errors = doctor.layer_errors(dev, ref)
    first = doctor.first_beyond(errors, doctor.NUMERICS_TOLERANCES['fp32'])
    print(layer, '->', first)
    assert first[:3] == (layer, 'output', 0) and 5e-4 < first.error < 2e-3
    beyond = {e.layer for e in errors if e.error > doctor.NUMERICS_TOLERANCES['fp32']}
    assert beyond == {layer}, beyond  # the layers around it get the reference's inputs and gradients: they pass


def test_the_unperturbed_copy_passes_and_bf16_does_not_see_1e_3(reference):
    model, batches, ref = reference
    cpu = torch.device('cpu')
    for amp, key, m in ((False, 'fp32', model), (True, 'bf16', perturbed(model, 'layer3.0.conv2'))):
        p = resolve_precision(AmpConfig(amp=amp), 'cpu')
        errors = doctor.layer_errors(doctor.trace_steps(copy.deepcopy(m), batches, cpu, p, ref), ref)
        assert doctor.first_beyond(errors, doctor.NUMERICS_TOLERANCES[key]) is None, key


def test_a_perturbed_device_copy_fails_the_command_with_one_line(tmp_path, capsys):
    "main() in this process, the device's copy (the traces with a precision) perturbed in one layer."
    real = doctor.trace_steps
    def tampered(model, batches, device, precision=None, forced=None, lr=0.01):
        if precision is not None: model = perturbed(model, 'layer2.0.conv2')
        return real(model, batches, device, precision, forced, lr)
    skip = lambda *a, **k: doctor.Outcome('collective', 'skip', '', 'not in this test')
    with mock.patch.object(doctor, 'trace_steps', tampered), mock.patch.object(doctor, 'check_collective', skip):
        code = doctor.main([*TINY_CPU, '--selftest', '--output', str(tmp_path / 'run'),
                            '--json', str(tmp_path / 'st.json')])
    out, err = capsys.readouterr()
    print(out, err, sep='\n')
    assert code == 1
    assert len(err.splitlines()) == 1 and err.startswith(
        'selftest failed: numerics fp32 (first beyond tolerance: layer2.0.conv2 output at step 0: ')
    assert err.rstrip().endswith(f"see {tmp_path / 'st.json'}")
    rows = table(out)
    assert rows['numerics fp32'][0] == 'fail'
    assert rows['numerics bf16'][0] == 'pass'  # 1e-3 is within bf16's rounding
    assert out.splitlines()[-1] == f"=> 6 checks: 3 passed, 1 failed, 2 skipped; wrote {tmp_path / 'st.json'}"
    report = json.loads((tmp_path / 'st.json').read_text())
    assert report['passed'] is False and not (tmp_path / 'run' / 'selftest.json').exists()
    assert report['checks'][0]['data']['worst_by_layer']['layer2.0.conv2']['output'] > 5e-4


def test_a_check_that_raises_is_one_failed_row(tmp_path, capsys):
    def broken(*a, **k): raise RuntimeError('HCCL error 7: connection refused\nmore detail')
    no_numerics = lambda *a: []
    with mock.patch.object(doctor, 'check_collective', broken), mock.patch.object(doctor, 'check_numerics', no_numerics):
        code = doctor.main([*TINY_CPU, '--selftest', '--json', str(tmp_path / 'st.json')])
    out, err = capsys.readouterr()
    assert code == 1 and 'Traceback' not in out + err
    assert table(out)['collective'] == ('fail', '', 'RuntimeError: HCCL error 7: connection refused')
    assert err.startswith('selftest failed: collective (RuntimeError: HCCL error 7: connection refused)')


# the NPU branch of the optimizer and loss-scaler rows, on torch_npu's own code

def test_on_the_npu_standin_the_rows_compare_torch_npus_fused_sgd_and_scaler(tmp_path):
    """With the stand-in in the process, `sgd_class` gives the wheel's NpuFusedSGD and `LossScaler` the wheel's
    GradScaler (saturating chip: overflow seen through the float-status flag); NCHW, as on an NPU."""
    npu_standin = pytest.importorskip('npu_standin')
    folder = npu_standin.sitecustomize_dir(tmp_path / 'standin', npu_standin.wheel_or_skip())
    env = cli_env()
    env['PYTHONPATH'] = os.pathsep.join([str(folder), str(ROOT), *filter(None, [os.environ.get('PYTHONPATH')])])
    r = selftest(*TINY_CPU, '--no-channels-last', '--output', tmp_path / 'run', env=env, cwd=tmp_path)
    print(r.stdout)
    assert r.returncode == 0 and r.stderr == '', r.stdout + r.stderr
    assert r.stdout.startswith('=> selftest of resnext_tiny')  # torch_npu's scaler prints its skips: into the JSON
    rows = table(r.stdout)
    assert rows['optimizer'][0] == 'pass'
    assert 'torch_npu.optim.NpuFusedSGD (sgd_class on cpu) vs torch.optim.SGD(foreach=False)' in rows['optimizer'][2]
    assert rows['loss scaler'][:2] == ('pass', '1 of 3 skipped')
    assert rows['loss scaler'][2].endswith('fp16 autocast, loss scale dynamic, torch_npu.optim.NpuFusedSGD')
    report = json.loads((tmp_path / 'run' / 'selftest.json').read_text())
    assert 'Gradient overflow. Skipping step' in report['checks'][3]['data']['printed']
