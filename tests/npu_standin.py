"""An NPU stand-in built from torch_npu itself (issue 21), so that CI runs the branch an NPU run takes.

The real `torch_npu-2.14.0` wheel is found in a cache (or downloaded there with `pip download --no-deps`), and
only the plain-Python files the NPU branch runs are extracted from it (`SOURCES`): the fused optimizers, the NPU
loss scaler, and the helpers they import. They are loaded *unchanged* as modules of a `torch_npu` package placed
in `sys.modules`; nothing of torch_npu is copied into this repository. What those files call in torch_npu's C++
is stood in for by the CPU, each stand-in keeping the contract that torch_npu's sources state (named beside
each one): here the CPU plays the NPU.

`sitecustomize_dir(folder, wheel)` writes a `sitecustomize.py` that installs the stand-in in every Python process
started with that folder first on PYTHONPATH (the launcher and the workers it spawns), and sets the one seam of
the device chapter, `resnext_nb.device.npu_branch`, to say yes for the CPU: `sgd_class` then picks the wheel's
`NpuFusedSGD`, and `LossScaler` the wheel's `GradScaler`.

Environment: RESNEXT_NB_NPU_WHEEL, a wheel or a folder holding one, replaces the cache ~/.cache/resnext_nb/wheels
('pypi' or unset: the cache, filled by pip when empty). NPU_STANDIN_SATURATE_AT=N makes the N-th overflow check
of a process find the float-status flag raised with finite gradients: an fp16 overflow that saturated, as it
does on chips without inf/nan.
"""
import fnmatch, importlib, importlib.machinery, os, subprocess, sys, types, zipfile
from pathlib import Path

VERSION = '2.14.0'
CACHE = Path('~/.cache/resnext_nb/wheels').expanduser()
SOURCES = ('torch_npu/optim/*.py', 'torch_npu/npu/amp/*.py', 'torch_npu/utils/combine_tensors.py',
           'torch_npu/utils/_error_code.py', 'torch_npu/utils/utils.py', 'torch_npu/_init/__init__.py',
           'torch_npu/_init/common/warning_utils.py')
ACL_FORMAT_ND = 2  # torch_npu's format id for plain row-major storage: the only one a CPU tensor has
SATURATE_AT = 'NPU_STANDIN_SATURATE_AT'


# ------------------------------------------------------------------ the wheel
def find_wheel(env=os.environ) -> Path | None:
    "The torch_npu wheel: from $RESNEXT_NB_NPU_WHEEL (a file or a folder), else the cache; None if there is none."
    given = env.get('RESNEXT_NB_NPU_WHEEL', 'pypi')  # 'pypi' (or unset): the cache, filled by pip when empty
    where = CACHE if given in ('', 'pypi') else Path(given).expanduser()
    if where.is_file(): return where
    found = sorted(where.glob(f'torch_npu-{VERSION}-*.whl')) if where.is_dir() else []
    return found[-1] if found else None


def fetch_wheel(env=os.environ) -> tuple[Path | None, str | None]:
    "(the wheel, None), downloading it into the cache when missing; (None, why) when it cannot be had."
    if wheel := find_wheel(env): return wheel, None
    given = env.get('RESNEXT_NB_NPU_WHEEL', 'pypi')
    if given not in ('', 'pypi'): return None, f"RESNEXT_NB_NPU_WHEEL={given} holds no torch_npu-{VERSION} wheel"
    CACHE.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, '-m', 'pip', 'download', '-q', '--no-deps', f'torch-npu=={VERSION}', '-d', str(CACHE)]
    try: r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return None, f"pip download torch-npu=={VERSION} timed out (no package index reachable?)"
    if wheel := find_wheel(env): return wheel, None
    last = (r.stderr.strip().splitlines() or ['no output'])[-1]
    return None, f"torch-npu=={VERSION} is not cached in {CACHE} and pip could not download it ({last})"


def wheel_or_skip() -> Path:
    "For a test module, at import: the wheel; else skip the module with one line, or fail on CI (CI=true)."
    import pytest
    wheel, why = fetch_wheel()
    if wheel is None:
        if os.environ.get('CI', '').lower() in ('1', 'true', 'yes'):
            pytest.fail(f"NPU stand-in: {why}", pytrace=False)
        pytest.skip(f"NPU stand-in: {why}", allow_module_level=True)
    return wheel


def extract(wheel: Path, root: Path | None = None) -> Path:
    "Extract `SOURCES` from `wheel` into `root` (default: a cache folder beside the wheels) and return it."
    root = root or CACHE.parent / 'npu_standin' / wheel.stem
    if (root / '.complete').is_file(): return root
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if any(fnmatch.fnmatch(n, p) for p in SOURCES)]
        for n in names: z.extract(n, root)
    (root / '.complete').write_text('\n'.join(names))
    return root


# ------------------------------------------------------------------ the native ops, on the CPU
def get_storage_size(t) -> int:
    "StorageSizeNpu.cpp: the element count of the tensor's own storage descriptor (npu_change_data_ptr keeps it)."
    return getattr(t, '_npu_storage_size', None) or t.untyped_storage().nbytes() // t.element_size()


def npu_change_data_ptr(dst, src, index: int) -> int:
    "ChangeDataPtr.cpp: point dst's storage at src's storage plus `index` elements; dst keeps its shape and size."
    import torch
    if index < 0: raise RuntimeError(f"Expect offset(index) equal or greater than zero, got: {index}")
    if src.dtype != dst.dtype:
        raise RuntimeError(f"Expect src and dst tensors having the same dtype, got: {src.dtype}, {dst.dtype}")
    if src.dtype not in (torch.float16, torch.float32, torch.bfloat16):
        raise RuntimeError(f"Only supports dtype float32, float16 or bfloat16, got: {src.dtype}")
    size, total = get_storage_size(dst), get_storage_size(src)
    if index + size > total:
        raise RuntimeError(f"Offsets overflow, got: offset(index) {index}, dst {size}, src {total}")
    with torch.no_grad():  # dst becomes a window on src's memory, as the C++ swaps its storage's data pointer
        at = dst.storage_offset() + index
        dst.data = torch.empty(0, dtype=dst.dtype).set_(src.untyped_storage(), at, dst.size(), dst.stride())
    dst._npu_storage_size = size
    return 0


def get_npu_format(t) -> int:
    "FormatCastKernelNpu.cpp: the NPU storage format of `t`; a CPU tensor is always plain ND."
    return ACL_FORMAT_ND


def npu_format_cast(t, fmt):
    "FormatCastKernelNpu.cpp: `t` in format `fmt`; ND to ND is `t` itself, and the CPU has no other format."
    if fmt != ACL_FORMAT_ND: raise NotImplementedError(f"the NPU stand-in has only the ND format, not {fmt}")
    return t


class FloatStatus:
    """The float-status register of chips without inf/nan: overflowing ops raise it, `npu_clear_float_status`
    clears it, op-plugin's `_amp_foreach_non_finite_check_and_unscale_` reads it (and clears it when set)."""
    raised, checks = False, 0

    @classmethod
    def get(cls, status):
        "npu_get_float_status: element 0 is non-zero when an overflow was flagged."
        out = status.clone(); out[0] = float(cls.raised)
        return out

    @classmethod
    def clear(cls, status):
        "npu_clear_float_status."
        cls.raised = False
        return status.clone().zero_()


def non_finite_check_and_unscale_(scaled_grads, found_inf, inv_scale):
    """op-plugin's `acl_op::_amp_foreach_non_finite_check_and_unscale_` on a chip without inf/nan: the verdict is
    the float-status register (cleared when read set); when clear, every gradient is multiplied by inv_scale,
    else found_inf += 1 and nothing is unscaled. On the CPU an overflow gives inf instead of saturating, so a
    non-finite gradient raises the register first; NPU_STANDIN_SATURATE_AT raises it with finite gradients."""
    import torch
    if not scaled_grads: return
    FloatStatus.checks += 1
    if os.environ.get(SATURATE_AT) == str(FloatStatus.checks): FloatStatus.raised = True
    if not all(bool(torch.isfinite(g).all()) for g in scaled_grads): FloatStatus.raised = True
    if FloatStatus.raised:
        FloatStatus.raised = False
        found_inf.add_(1)
    else:
        for g in scaled_grads: g.mul_(inv_scale)


def _on_npu(fn):
    "Hand `fn` tensors whose `.device.type` reads 'npu': torch_npu's helpers refuse others; here the CPU is it."
    class OnNpu:
        def __init__(self, t): self._t = t
        def __getattr__(self, name): return getattr(self._t, name)
        @property
        def device(self):
            kind = self._t.device.type
            return types.SimpleNamespace(type='npu' if kind == 'cpu' else kind)
    def call(tensors, *args, **kwargs):
        return fn([t if t is None else OnNpu(t) for t in tensors], *args, **kwargs)
    return call


def _unwrap(fn):
    return lambda *a, **k: fn(*[getattr(x, '_t', x) for x in a], **k)


def _patch_torch():
    "The Tensor methods torch_npu adds or serves for the `npu` device, on the CPU."
    import torch
    to = torch.Tensor.to
    cpu = lambda d: 'cpu' if isinstance(d, str) and d.split(':')[0] == 'npu' else d
    def to_npu(self, *args, **kwargs):  # the 'npu' device string is the CPU here
        if 'device' in kwargs: kwargs['device'] = cpu(kwargs['device'])
        return to(self, *map(cpu, args), **kwargs)
    torch.Tensor.to = to_npu
    torch.Tensor.npu = lambda self, *a, **k: self  # already on "the NPU", as .cuda() of a CUDA tensor is itself
    torch.Tensor.is_npu = property(lambda self: self.device.type == 'cpu')
    torch.Tensor.pin_memory = lambda self, *a, **k: self.clone()  # a host copy: no page-locking driver here
    torch._amp_foreach_non_finite_check_and_unscale_ = non_finite_check_and_unscale_


# ------------------------------------------------------------------ the package
def _package(name: str, folder: Path) -> types.ModuleType:
    "An empty package `name` searching `folder`, for a torch_npu __init__ that would load the C++ extension."
    mod = types.ModuleType(name)
    mod.__path__ = [str(folder)]
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    mod.__spec__.submodule_search_locations = mod.__path__
    sys.modules[name] = mod
    if '.' in name: setattr(sys.modules[name.rsplit('.', 1)[0]], name.rsplit('.', 1)[1], mod)
    return mod


def install(root: Path) -> types.ModuleType:
    "Put the stand-in `torch_npu` (the wheel's files under `root`, the CPU for its C++) into `sys.modules`."
    if getattr(sys.modules.get('torch_npu'), 'is_standin', False): return sys.modules['torch_npu']
    import torch  # noqa: F401
    _patch_torch()
    base = Path(root) / 'torch_npu'
    npu_pkg = _package('torch_npu', base)
    npu_pkg.is_standin, npu_pkg.__version__ = True, VERSION
    npu_pkg.get_storage_size, npu_pkg.npu_change_data_ptr = _unwrap(get_storage_size), _unwrap(npu_change_data_ptr)
    npu_pkg.get_npu_format, npu_pkg.npu_format_cast = get_npu_format, npu_format_cast
    npu_pkg.npu_get_float_status, npu_pkg.npu_clear_float_status = FloatStatus.get, FloatStatus.clear
    utils = _package('torch_npu.utils', base / 'utils')
    npu = _package('torch_npu.npu', base / 'npu')
    npu.is_available = lambda: True  # the stand-in's NPU, the CPU, is always there
    npu_utils = types.ModuleType('torch_npu.npu.utils')
    npu_utils.is_support_inf_nan = lambda: False  # npu/utils.py asks torch_npu._C; this is a saturating chip
    sys.modules['torch_npu.npu.utils'] = npu.utils = npu_utils
    combine = importlib.import_module('torch_npu.utils.combine_tensors')  # the wheel's file
    utils.npu_combine_tensors = _on_npu(combine.npu_combine_tensors)
    utils.get_part_combined_tensor = combine.get_part_combined_tensor
    utils.is_combined_tensor_valid = combine.is_combined_tensor_valid
    importlib.import_module('torch_npu.optim')  # the wheel's __init__: every fused optimizer
    importlib.import_module('torch_npu.npu.amp')  # the wheel's __init__: autocast helpers and GradScaler
    return npu_pkg


SITECUSTOMIZE = '''\
"Installs the NPU stand-in (tests/npu_standin.py) in every process started with this folder on PYTHONPATH."
import importlib.util
spec = importlib.util.spec_from_file_location('npu_standin', {module!r})
standin = importlib.util.module_from_spec(spec); spec.loader.exec_module(standin)
standin.install({root!r})
import resnext_nb.device as device
device.npu_branch = lambda device_type: device_type in ('npu', 'cpu')  # the seam: the CPU takes the NPU's
'''


def sitecustomize_dir(folder: Path, wheel: Path) -> Path:
    "A folder to put first on PYTHONPATH: its sitecustomize.py installs the stand-in built from `wheel`."
    folder.mkdir(parents=True, exist_ok=True)
    text = SITECUSTOMIZE.format(module=str(Path(__file__).resolve()), root=str(extract(wheel)))
    (folder / 'sitecustomize.py').write_text(text)
    return folder
