"JupyterLab starts from the repository and serves the notebooks in `nbs/`."
import json, os, socket, subprocess, sys, time, urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _get(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as r: return r.status, r.read().decode()


def test_jupyter_lab_serves_nbs(tmp_path):
    port, token = _free_port(), 'resnext-nb-test'
    cmd = [sys.executable, '-m', 'jupyter', 'lab', '--no-browser', f'--port={port}', '--ip=127.0.0.1',
           f'--IdentityProvider.token={token}', '--allow-root', f'--notebook-dir={ROOT}']
    env = {**os.environ, 'JUPYTER_CONFIG_DIR': str(tmp_path / 'cfg'), 'JUPYTER_RUNTIME_DIR': str(tmp_path / 'rt')}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline, status = time.time() + 90, None
        while time.time() < deadline and proc.poll() is None:
            try: status, page = _get(f'http://127.0.0.1:{port}/lab?token={token}'); break
            except OSError: time.sleep(0.5)
        assert status == 200, f"jupyter lab did not serve /lab: {proc.stdout.read().decode() if proc.poll() is not None else 'timeout'}"
        assert 'JupyterLab' in page
        _, listing = _get(f'http://127.0.0.1:{port}/api/contents/nbs?token={token}')
        names = {c['name'] for c in json.loads(listing)['content']}
        assert {'index.ipynb', '00_device.ipynb'} <= names, names
    finally:
        proc.terminate()
        try: proc.wait(timeout=20)
        except subprocess.TimeoutExpired: proc.kill()
