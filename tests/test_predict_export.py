"""Issue 13, through the real commands: fine-tuning from a torchvision-format file, the evaluation report exact over
ranks, `predict` agreeing with `--evaluate` to the image, and exports that load elsewhere with the same outputs."""
import csv, json, os, re, shutil
import pytest
import torch
from conftest import TINY, make_image_folder, run_cli, run_module

COUNTS = {'train': {'a': 6, 'b': 6, 'c': 6}, 'val': {'a': 3, 'b': 2, 'c': 2}}  # an odd-sized val/: 7 images


def _train(data, out, *extra):
    return run_cli(*TINY, '--data_path', data, '--image-size', 16, '--batch-size', 4, '--epochs', 2, '--lr', 0.05,
                   '--print-freq', 2, '--output', out, *extra)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A tiny trained run on an odd-sized val/: (data folder, run folder)."
    tmp = tmp_path_factory.mktemp('run')
    data = make_image_folder(tmp / 'data', COUNTS, size=20)
    res = _train(data, tmp / 'out')
    assert res.returncode == 0, res.stderr[-3000:]
    return data, tmp / 'out'


def test_training_writes_the_report(run):
    _, out = run
    rows = list(csv.DictReader(open(out / 'per_class.csv')))
    assert [r['class'] for r in rows] == ['a', 'b', 'c'] and sum(int(r['images']) for r in rows) == 7
    assert (out / 'confusion.png').stat().st_size > 0 and (out / 'mistakes.png').stat().st_size > 0


def test_pretrained_torchvision_file_starts_a_4_class_run(tmp_path):
    import torchvision
    weights = tmp_path / 'resnext50_1000.pth'
    torch.save(torchvision.models.resnext50_32x4d().state_dict(), weights)  # torchvision's constructor: 1000 classes
    data = make_image_folder(tmp_path / 'data', {'train': {c: 2 for c in 'abcd'}, 'val': {c: 1 for c in 'abcd'}}, size=20)
    res = run_cli('--arch', 'resnext50_32x4d', '--device', 'cpu', '--workers', 0, '--seed', 0, '--data_path', data,
                  '--image-size', 32, '--batch-size', 4, '--epochs', 2, '--max-steps', 1, '--freeze-epochs', 1,
                  '--pretrained', weights, '--output', tmp_path / 'out')
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"the backbone from {weights}; its head is for 1000 classes and this run has 4, so the head is re-initialised" in res.stdout
    assert "=> fine-tuning: epoch 0 trains only the head (fc)" in res.stdout


def test_pretrained_wrong_arch_is_one_line(tmp_path):
    import torchvision
    weights = tmp_path / 'resnet18.pth'
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), weights)
    data = make_image_folder(tmp_path / 'data', {'train': {'a': 4, 'b': 4}, 'val': {'a': 1, 'b': 1}}, size=20)
    res = _train(data, tmp_path / 'out', '--pretrained', weights)
    assert res.returncode != 0
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and f"--pretrained {weights}: the checkpoint does not fit this resnext_tiny model" in err, err


def test_pretrained_missing_is_one_line(tmp_path):
    data = make_image_folder(tmp_path / 'data', {'train': {'a': 4, 'b': 4}, 'val': {'a': 1, 'b': 1}}, size=20)
    res = _train(data, tmp_path / 'out', '--pretrained', tmp_path / 'nope.pth')
    assert res.returncode != 0 and res.stderr.strip().endswith('or a torchvision weights name such as IMAGENET1K_V2'), res.stderr


def _evaluate(data, ckpt, out, *extra):
    res = run_cli(*TINY, '--data_path', data, '--image-size', 16, '--batch-size', 4, '--evaluate', '--resume', ckpt, '--output', out, *extra)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_predict_agrees_with_evaluate(run, tmp_path):
    data, out = run
    ckpt = out / 'checkpoint.pth.tar'
    res = _evaluate(data, ckpt, tmp_path / 'eval')
    acc1, count = re.search(r"\* Acc@1 ([\d.]+) .*\((\d+) images\)", res.stdout).groups()
    pred = run_module('predict', ckpt, data / 'val', '--topk', 2, '--out', tmp_path / 'preds.csv', '--device', 'cpu')
    assert pred.returncode == 0, pred.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / 'preds.csv')))
    assert len(rows) == int(count) == 7
    assert f"{100 * sum(r['true'] == r['pred_1'] for r in rows) / len(rows):.3f}" == acc1
    per_class = {r['class']: int(r['correct']) for r in csv.DictReader(open(tmp_path / 'eval' / 'per_class.csv'))}
    assert per_class == {c: sum(r['true'] == c == r['pred_1'] for r in rows) for c in 'abc'}


def test_predict_skips_unreadable_files(run, tmp_path):
    data, out = run
    (tmp_path / 'broken.jpg').write_bytes(b'not an image')
    res = run_module('predict', out / 'checkpoint.pth.tar', data / 'val' / 'a', tmp_path / 'broken.jpg', '--out', tmp_path / 'p.jsonl', '--device', 'cpu')
    assert res.returncode == 0, res.stderr
    assert f"{tmp_path / 'broken.jpg'}: skipped" in res.stderr
    assert len((tmp_path / 'p.jsonl').read_text().splitlines()) == 3


def test_per_class_two_ranks_equals_one(run, tmp_path, free_port):
    data, out = run
    _evaluate(data, out / 'checkpoint.pth.tar', tmp_path / 'one')
    _evaluate(data, out / 'checkpoint.pth.tar', tmp_path / 'two', '--nproc', 2, '--port', free_port)
    one, two = ((tmp_path / d / 'per_class.csv').read_text() for d in ('one', 'two'))
    assert one == two and sum(int(r['images']) for r in csv.DictReader(one.splitlines())) == 7


def test_export_onnx_matches_pytorch(run, tmp_path):
    pytest.importorskip('onnxruntime'); pytest.importorskip('onnxscript')
    _, out = run
    res = run_module('export', out / 'checkpoint.pth.tar', '--format', 'onnx', '--out', tmp_path / 'x')
    assert res.returncode == 0, res.stderr[-3000:]
    m = re.search(r"largest difference from PyTorch ([\d.e+-]+) on 3 images \(limit ([\d.e+-]+)\)", res.stdout)
    diff, limit = float(m[1]), float(m[2])  # the limit is 1e-4 relative to the largest logit: fp32 rounding grows with it
    assert diff <= limit, res.stdout
    card = json.loads((tmp_path / 'x' / 'model_card.json').read_text())
    assert card['classes'] == ['a', 'b', 'c'] and card['input']['crop'] == 16 and card['files'] == {'onnx': 'model.onnx'}


def test_export_torchvision_loads_in_torchvision(tmp_path):
    import torchvision
    from resnext_nb.model import create_model
    from resnext_nb.checkpoints import save_checkpoint
    torch.manual_seed(0)
    model = create_model('resnext50_32x4d', num_classes=4).eval()
    save_checkpoint({'arch': 'resnext50_32x4d', 'state_dict': model.state_dict(), 'classes': list('wxyz'),
                     'config': {'data': {'image_size': 32}}}, ckpt := tmp_path / 'ckpt.pth.tar')
    res = run_module('export', ckpt, '--format', 'torchvision', '--out', tmp_path / 'tv')
    assert res.returncode == 0, res.stderr[-3000:]
    tv = torchvision.models.resnext50_32x4d(num_classes=4).eval()
    tv.load_state_dict(torch.load(tmp_path / 'tv' / 'resnext50_32x4d.pth', weights_only=True))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(): assert torch.equal(tv(x), model(x))


def test_freeze_epochs_resume_exactly(tmp_path):
    "Stopped inside the frozen epoch and resumed, a --freeze-epochs run ends with the weights of one that never stopped."
    data = make_image_folder(tmp_path / 'data', COUNTS, size=20)
    straight = _train(data, tmp_path / 'straight', '--freeze-epochs', 1, '--deterministic')
    assert straight.returncode == 0, straight.stderr[-3000:]
    part = tmp_path / 'part'
    first = _train(data, part, '--freeze-epochs', 1, '--deterministic', '--max-steps', 2)  # stops inside epoch 0
    assert first.returncode == 0, first.stderr[-3000:]
    second = _train(data, part, '--freeze-epochs', 1, '--deterministic', '--resume', part / 'checkpoint.pth.tar')
    assert second.returncode == 0, second.stderr[-3000:]
    assert "=> epoch 1: the body is unfrozen" in second.stdout
    a, b = (torch.load(d / 'checkpoint.pth.tar', weights_only=True)['state_dict'] for d in (tmp_path / 'straight', part))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_predict_writes_a_name_that_is_not_utf8_whole(run, tmp_path):
    "An image whose name is Latin-1 (not UTF-8): predict exits 0, the CSV holds every row, and that row names the file."
    data, out = run
    folder = tmp_path / 'imgs'; folder.mkdir()
    for p in sorted((data / 'val' / 'a').iterdir())[:3]: shutil.copy(p, folder / p.name)
    odd = os.fsencode(folder) + b'/caf\xe9.jpg'
    shutil.copy(next((data / 'val' / 'b').iterdir()), os.fsdecode(odd))
    res = run_module('predict', out / 'checkpoint.pth.tar', folder, '--out', tmp_path / 'p.csv', '--device', 'cpu')
    assert res.returncode == 0 and res.stderr == '', res.stderr[-3000:]
    assert 'caf\\xe9.jpg' in res.stdout, res.stdout  # shown as the terminal can print it
    rows = (tmp_path / 'p.csv').read_bytes().splitlines()
    assert len(rows) == 1 + 4 and any(r.startswith(odd + b',') for r in rows), rows
