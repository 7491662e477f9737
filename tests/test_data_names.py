"""Data that is what it looks like, through the real CLI (issue 22, items 3 and 7).

A symlink loop in a class folder is refused in one line; a file reached twice through links is counted once,
and one line says so; a class folder or an image whose name is not UTF-8 is refused in one line that shows it
escaped. A refused run saves nothing: no checkpoint, no report, no temporary file."""
import os
from pathlib import Path
import pytest
from conftest import TINY, make_image_folder, run_cli

pytestmark = pytest.mark.skipif(not hasattr(os, 'symlink') or os.sep != '/', reason='POSIX names and links')

LATIN1 = b'caf\xe9'  # 'café' in Latin-1: a name that is not UTF-8


def tiny_data(tmp_path: Path) -> Path:
    "Two classes of 8 train and 2 val images: 4 steps an epoch at batch 4."
    return make_image_folder(tmp_path/'data', {'train': {'a': 8, 'b': 8}, 'val': {'a': 2, 'b': 2}})


def train(data: Path, out: Path):
    return run_cli(*TINY, '--image-size', '16', '--batch-size', '4', '--epochs', '1', '--data-path', data, '--output', out)


def one_error_line(r) -> str:
    "The run failed with exit 1 and one line on stderr, no traceback, nothing on stdout; returns the line."
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith('resnext_nb: error: '), r.stderr
    assert 'Traceback' not in r.stderr + r.stdout and r.stdout == ''
    return lines[0].removeprefix('resnext_nb: error: ')


def assert_nothing_saved(out: Path):
    "Only the launcher's lock is left: no checkpoint, log, report or partial (temporary) file."
    assert sorted(p.name for p in out.iterdir() if p.name != '.resnext_nb.lock') == []


def test_symlink_loop_is_refused(tmp_path):
    data, out = tiny_data(tmp_path), tmp_path/'out'
    (data/'train/a/loop').symlink_to('.')  # train/a/loop/loop/... : torchvision counted a's images 41 times
    err = one_error_line(train(data, out))
    assert err == (f"directory loop: {data/'train/a/loop'} leads back to {os.path.realpath(data/'train/a')}, which "
                   f"contains it, so its images would be counted again and again: remove the link")
    assert_nothing_saved(out)


def test_duplicate_through_links_counted_once(tmp_path):
    data, out = tiny_data(tmp_path), tmp_path/'out'
    (data/'train/a/copy.jpg').symlink_to('a_0000.jpg')
    os.link(data/'train/b/b_0001.jpg', data/'train/b/hard.jpg')
    r = train(data, out)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [f"{data/'train'}: 2 image files reached twice through links, counted once "
                                     f"(e.g. {data/'train/a/copy.jpg'} is {data/'train/a/a_0000.jpg'})"]
    assert '4 steps per epoch' in r.stdout.splitlines()[0]  # 16 images, not 18
    for f in ('checkpoint.pth.tar', 'model_best.pth.tar', 'per_class.csv', 'train.log'): assert (out/f).is_file(), f
    assert not list(out.glob('.*.tmp'))


def test_non_utf8_class_folder_is_refused(tmp_path):
    data, out = tiny_data(tmp_path), tmp_path/'out'
    for split in ('train', 'val'): os.rename(data/split/'b', os.fsdecode(bytes(data/split) + b'/' + LATIN1))
    err = one_error_line(train(data, out))
    assert err == (f"{data/'train'}/caf\\xe9 has a name that is not UTF-8 (\\xNN marks each byte that is not): rename it "
                   f"in UTF-8, e.g. for Latin-1 names: convmv -r -f latin1 -t utf8 --notest {data/'train'}")
    assert_nothing_saved(out)


def test_non_utf8_file_name_is_refused(tmp_path):
    data, out = tiny_data(tmp_path), tmp_path/'out'
    os.rename(data/'val/a/a_0000.jpg', os.fsdecode(bytes(data/'val/a') + b'/d\xe9j\xe0.jpg'))
    (data/'val/a'/os.fsdecode(LATIN1 + b'.txt')).write_text('not an image: it may keep its name')
    err = one_error_line(train(data, out))
    assert err.startswith(f"{data/'val/a'}/d\\xe9j\\xe0.jpg has a name that is not UTF-8 (\\xNN marks each byte"), err
    assert err.endswith(f"convmv -r -f latin1 -t utf8 --notest {data/'val'}")
    assert_nothing_saved(out)
