"""Data at cluster scale (issue 25) on a small real dataset: scikit-learn's digits (real 8x8 scans, 10 classes) as an
ImageFolder, and written from it by `python -m resnext_nb.prepare` as WebDataset tar shards (uneven: the last shard of
each split is shorter) and as parquet in the Hub's layout. Every source trains the same updates on the same pixels to
the same weights, bit for bit; a SIGKILL mid-epoch and `--resume auto` end `torch.equal` to an uninterrupted run on
each source; two ranks on the uneven shards take the same batches; validation counts each image once; and `prepare`
killed mid-way resumes, keeping the shards it had verified."""
import json, os, signal, subprocess, time
import pytest, torch
from PIL import Image
from conftest import (ROOT, TINY, cli_env, launch_cmd, module_cmd, read_records, run_cli, run_module, run_together,
                      start_cli, wait_for_step)

TRAIN, VAL = 20, 5  # digits per class: 200 train and 50 val images


def write_digits(root):
    "The first TRAIN + VAL scans of each digit as 16-pixel PNGs in root/{train,val}/<digit>/."
    from sklearn.datasets import load_digits
    digits, seen = load_digits(), {}
    for image, label in zip(digits.images, digits.target):
        k = seen[label] = seen.get(label, -1) + 1
        if k >= TRAIN + VAL: continue
        folder = root / ('train' if k < TRAIN else 'val') / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = Image.fromarray((image * 255 / 16).astype('uint8')).resize((16, 16), Image.Resampling.NEAREST)
        pixels.convert('RGB').save(folder / f'{k:03d}.png')
    return root


@pytest.fixture(scope='module', autouse=True)
def shard_cache(tmp_path_factory):
    "The runs' wids cache (links to local shards, downloads of remote ones) in a folder of this module's."
    os.environ['RESNEXT_NB_WDS_CACHE'] = str(tmp_path_factory.mktemp('wds-cache'))
    yield
    os.environ.pop('RESNEXT_NB_WDS_CACHE')


@pytest.fixture(scope='module')
def sources(tmp_path_factory):
    "The digits as a folder, as WebDataset shards of 64 (200 = 3 x 64 + 8) and as parquet shards of 96."
    base = tmp_path_factory.mktemp('digits')
    folder = write_digits(base / 'folder')
    made = run_together(*(module_cmd('prepare', folder, base / fmt, '--format', fmt, '--shard-size', size)
                          for fmt, size in (('wds', 64), ('parquet', 96))))
    for r in made:
        assert r.returncode == 0 and r.stderr == '', r.stderr[-3000:]
        assert 'all read back and verified: 200 images' in r.stdout and 'verified: 50 images' in r.stdout, r.stdout
    return {'folder': folder, 'wds': base / 'wds', 'parquet': base / 'parquet'}


def job(data, out, *extra):
    return [*TINY, '--data-path', data, '--image-size', 16, '--batch-size', 16, '--epochs', 1, '--lr', 0.05,
            '--deterministic', '--print-freq', 1, '--checkpoint-every', 2, '--log-samples', '--output', out, *extra]


def updates(out):
    return [(r['epoch'], r['update'], r['samples']) for r in read_records(out, 'update')]


def weights(out):
    return torch.load(out / 'checkpoint.pth.tar', map_location='cpu', weights_only=True)['state_dict']


@pytest.fixture(scope='module')
def straight(sources, tmp_path_factory):
    "One uninterrupted run on each source."
    runs = {name: tmp_path_factory.mktemp(f'straight-{name}') for name in sources}
    done = run_together(*(launch_cmd(*job(sources[name], out)) for name, out in runs.items()), timeout=600)
    for r in done: assert r.returncode == 0 and r.stderr == '', r.stderr[-3000:]
    return runs


def test_every_source_trains_the_same_updates_to_the_same_weights(straight):
    want = weights(straight['folder'])
    for name in ('wds', 'parquet'):
        assert updates(straight[name]) == updates(straight['folder']) and len(updates(straight[name])) == 12
        got = weights(straight[name])
        for k, v in want.items(): assert torch.equal(got[k], v), f"{name}: {k}"
        assert [r['val_count'] for r in read_records(straight[name], 'epoch')] == [50]  # each image once


@pytest.mark.parametrize('name', ['wds', 'parquet'])
def test_sigkill_mid_epoch_then_resume_auto_is_exact(sources, straight, tmp_path, name):
    out = tmp_path / 'killed'
    proc = start_cli(*job(sources[name], out, '--workers', 2), start_new_session=True)
    wait_for_step(out, 5, proc)
    os.killpg(proc.pid, signal.SIGKILL); proc.wait(timeout=30)
    assert 0 < torch.load(out / 'checkpoint.pth.tar', weights_only=True)['sampler']['start_batch'] < 12
    r = run_cli(*job(sources[name], out, '--resume', 'auto'), timeout=600)
    assert r.returncode == 0 and r.stderr == '', r.stderr[-3000:]
    want = weights(straight[name])
    for k, v in weights(out).items(): assert torch.equal(v, want[k]), k
    assert updates(out) == updates(straight[name])


def test_two_ranks_on_uneven_shards_take_the_same_batches(sources, straight, tmp_path, free_port):
    "200 images in shards of 64, 64, 64 and 8: each rank takes 6 batches of 8 an epoch, and every update is the same."
    out = tmp_path / 'two'
    r = run_cli(*job(sources['wds'], out, '--nproc', 2, '--port', free_port), timeout=600)
    assert r.returncode == 0 and r.stderr == '', r.stderr[-3000:]
    assert updates(out) == updates(straight['wds'])
    assert [r['val_count'] for r in read_records(out, 'epoch')] == [50]
    assert 'x 2, precision fp32, channels_last, 12 steps per epoch' in (out / 'train.log').read_text()


def test_prepare_killed_midway_resumes_and_says_what_it_verified(sources, tmp_path):
    dst = tmp_path / 'wds'
    proc = subprocess.Popen(module_cmd('prepare', sources['folder'], dst, '--shard-size', 4), cwd=ROOT, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list(dst.glob('train-*.tar'))) < 3 and time.time() < deadline and proc.poll() is None: time.sleep(0.01)
    proc.kill(); proc.wait(timeout=30)
    written = len(list(dst.glob('train-*.tar')))
    assert 3 <= written < 50, written  # killed mid-way: 50 train shards of 4 in all
    r = run_module('prepare', sources['folder'], dst, '--shard-size', 4)
    assert r.returncode == 0 and r.stderr == '', r.stderr
    line = r.stdout.splitlines()[0]
    assert f'train: 50 shards of up to 4 images, {50 - written} written and {written} kept from an earlier run' in line
    assert 'all read back and verified: 200 images, their bytes, labels and order' in line, line


def test_shards_over_http_train_as_the_local_ones(sources, straight, tmp_path):
    """`--data_path http://...`: the indexes and shards come over HTTP, each shard downloaded once into the cache;
    given as a brace pattern with no index, the shards are counted (downloaded once) and train the same."""
    import functools, http.server, threading
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args): pass
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Quiet, directory=str(sources['wds'])))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f'http://127.0.0.1:{server.server_address[1]}'
    pattern = url + '/{train-{000000..000003},val-000000}.tar'  # the same shards, without their indexes
    out, cache, counted, cache2 = tmp_path / 'http', tmp_path / 'cache', tmp_path / 'pattern', tmp_path / 'cache2'
    try:
        r, r2 = run_together(launch_cmd(*job(url, out)), launch_cmd(*job(pattern, counted)),
                             env=[cli_env(RESNEXT_NB_WDS_CACHE=cache), cli_env(RESNEXT_NB_WDS_CACHE=cache2)])
    finally: server.shutdown()
    assert r.returncode == 0 and r.stderr == '', r.stderr[-3000:]
    assert r2.returncode == 0 and r2.stderr == '', r2.stderr[-3000:]
    assert f'=> counting the samples of the 5 shards of {pattern}, which have no index' in r2.stdout, r2.stdout
    want = weights(straight['wds'])
    for run in (out, counted):
        for k, v in weights(run).items(): assert torch.equal(v, want[k]), k
    shards = ['train-000000.tar', 'train-000001.tar', 'train-000002.tar', 'train-000003.tar', 'val-000000.tar']
    assert sorted(p.name.rsplit('%2F', 1)[-1] for p in cache.iterdir()) == shards
    # counting downloaded each shard once, where training then read it
    assert sorted(p.name.rsplit('%2F', 1)[-1] for p in cache2.iterdir() if p.is_file()) == shards
    assert [p.name for p in (cache2 / 'index').iterdir() if p.is_dir()] and not list(cache2.glob('*.part'))


def test_shuffle_shard_by_shard_resumes_exactly_and_needs_shards(sources, straight, tmp_path):
    "`--shuffle shards` on shards written shuffled: SIGKILL and `--resume auto` end `torch.equal`; a folder is refused."
    mixed = tmp_path / 'mixed'
    r = run_module('prepare', sources['folder'], mixed, '--shard-size', 32, '--shuffle')
    assert r.returncode == 0 and 'a shuffled order (seed 0) of' in r.stdout, r.stdout + r.stderr
    once, killed = tmp_path / 'once', tmp_path / 'killed'
    r, refused = run_together(launch_cmd(*job(mixed, once, '--shuffle', 'shards')),
                              launch_cmd(*job(sources['folder'], tmp_path / 'folder', '--shuffle', 'shards')), timeout=600)
    assert r.returncode == 0 and r.stderr == '', r.stderr[-3000:]
    assert len(updates(once)) == 12 and updates(once) != updates(straight['wds'])  # another order
    proc = start_cli(*job(mixed, killed, '--shuffle', 'shards', '--workers', 2), start_new_session=True)
    wait_for_step(killed, 5, proc)
    os.killpg(proc.pid, signal.SIGKILL); proc.wait(timeout=30)
    r = run_cli(*job(mixed, killed, '--resume', 'auto'), timeout=600)  # the order comes from the checkpoint
    assert r.returncode == 0 and r.stderr == '', r.stderr[-3000:]
    assert updates(killed) == updates(once)
    want = weights(once)
    for k, v in weights(killed).items(): assert torch.equal(v, want[k]), k
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode != 0 and len(lines) == 1 and 'has no shards: write them with python -m resnext_nb.prepare' in lines[0], refused.stderr
