"""The main job's quick start learns the built-in dataset on the CPU (chapter 3's must-show 3)."""
from conftest import read_records, run_cli


def test_quickstart_learns_the_builtin_dataset(tmp_path):
    out = tmp_path / 'quick'
    r = run_cli('--device', 'cpu', '--epochs', 3, '--output', out, '--seed', 0, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'quick start' in r.stdout and 'FPS@all' in r.stdout
    best = max(e['val_acc1'] for e in read_records(out, 'epoch'))
    assert best > 40, f"best val Acc@1 {best:.1f}% (chance is 10%)"
    for f in ('checkpoint.pth.tar', 'model_best.pth.tar', 'train.log', 'metrics.jsonl', 'loss.png', 'accuracy.png', 'lr.png'):
        assert (out / f).exists(), f
