"Shared helpers for the subprocess tests: tiny image folders, free ports, and running the real CLI."
import os, socket, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]


def make_image_folder(root: Path, counts: dict, size: int = 20, seed: int = 0) -> Path:
    """An ImageNet-layout tree of small random JPEGs: `counts` maps split -> {class: n_images}.
    Each class gets its own mean colour, so the data is learnable but not trivial."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split, classes in counts.items():
        for ci, (cls, n) in enumerate(sorted(classes.items())):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.full((size, size, 3), 40 + 150 * (ci % 2), dtype=np.float32)
                img = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype('uint8')
                Image.fromarray(img).save(root / split / cls / f'{cls}_{i}.jpg', quality=90)
    return root


@pytest.fixture
def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


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


def read_records(output: Path, kind=None):
    import json
    recs = [json.loads(l) for l in (output / 'metrics.jsonl').read_text().splitlines() if l.strip()]
    return [r for r in recs if kind is None or r['kind'] == kind]


TINY = ['--arch', 'resnext_tiny', '--device', 'cpu', '--workers', '0', '--seed', '0']
