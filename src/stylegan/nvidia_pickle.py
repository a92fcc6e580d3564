"""Load NVIDIA StyleGAN2-ADA network pickles without executing any code from the file.

A restricted ``pickle.Unpickler`` resolves ONLY the globals that the official snapshots use
(see /work/shared/docs/stylegan_formats.md section 1) and maps each of them to a function or
type of ours that builds plain data:

  torch_utils.persistence._reconstruct_persistent_obj -> PersistentRecord(meta)   (module_src never run)
  dnnlib.util.EasyDict                                -> a throw-away dict subclass
  collections.OrderedDict, builtins.set               -> themselves (plain containers)
  torch._utils._rebuild_tensor_v2 / _rebuild_parameter -> our strided view over a parsed storage
  torch.storage._load_from_bytes                      -> our parser of the legacy torch.save stream
  numpy[._]core.multiarray.scalar, numpy.dtype         -> python numbers (numeric dtypes only)

Any other global is refused with a one-line UserError naming the file and the global. The
Generator is then rebuilt from its ``_init_kwargs`` with our own classes and every parameter and
buffer is copied by name after checking that names and shapes match exactly.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import struct
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
import torch

from src.stylegan.generator import Generator
from src.utils.errors import UserError

LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
# torch.save (legacy, pickle protocol 2) starts with the pickled magic number: PROTO 2, LONG1 10 bytes.
LEGACY_TORCH_PREFIX = b"\x80\x02\x8a\x0a" + LEGACY_TORCH_MAGIC.to_bytes(10, "little")
PERSISTENCE_VERSION = 6
GENERATOR_ARG_NAMES = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs",
                       "synthesis_kwargs")

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _Refused(Exception):
    """Raised inside unpickling; the loader turns it into UserError('<file>: <message>')."""


class PersistentRecord:
    """One official persistent object, as data: ``meta`` holds type, version, module_src (text,
    never executed), class_name and state (the module's __dict__)."""

    __slots__ = ("meta",)  # no __dict__ / __setstate__: BUILD opcodes on it fail

    def __init__(self, meta: dict):
        self.meta = meta

    @property
    def class_name(self) -> str:
        return self.meta.get("class_name", "?")

    @property
    def state(self) -> dict:
        return self.meta.get("state") or {}

    def __repr__(self) -> str:
        return f"PersistentRecord({self.class_name})"


class _Storage:
    """A parsed storage: flat 1-D tensor of its dtype."""

    __slots__ = ("flat",)

    def __init__(self, flat: torch.Tensor):
        self.flat = flat


class _StorageRef:
    __slots__ = ("key", "dtype", "numel")

    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel = key, dtype, numel


class _NpDType:
    """Stand-in for numpy.dtype(name, align, copy) + __setstate__(state): records name and byte order."""

    __slots__ = ("name", "order")

    def __init__(self, name="f8", align=False, copy=True):
        if not isinstance(name, str):
            raise _Refused(f"numpy dtype name must be a string, got {type(name).__name__}")
        self.name = name
        self.order = "="

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) < 2 or not isinstance(state[1], str):
            raise _Refused("malformed numpy dtype state")
        self.order = state[1]

    def to_numpy(self) -> np.dtype:
        try:
            dt = np.dtype(self.name)
        except TypeError:
            raise _Refused(f"unsupported numpy dtype {self.name!r}") from None
        if dt.kind not in "fiub":
            raise _Refused(f"numpy dtype {self.name!r} (kind {dt.kind!r}) is not a plain number")
        if self.order in "<>":
            dt = dt.newbyteorder(self.order)
        return dt


# ----------------------------------------------------------------------------------------------
# Replacement functions for the allowed globals
# ----------------------------------------------------------------------------------------------

def _reconstruct_persistent_obj(meta):
    if not isinstance(meta, dict):
        raise _Refused(f"persistent object meta is a {type(meta).__name__}, not a dict")
    return PersistentRecord(meta)


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, _NpDType) or not isinstance(data, (bytes, bytearray)):
        raise _Refused("malformed numpy scalar")
    dt = dtype.to_numpy()
    if len(data) != dt.itemsize:
        raise _Refused(f"numpy scalar of dtype {dtype.name} has {len(data)} bytes, expected {dt.itemsize}")
    return np.frombuffer(bytes(data), dtype=dt)[0].item()


def _np_dtype(*args):
    return _NpDType(*args)


def _as_int_tuple(v, what: str) -> Tuple[int, ...]:
    if isinstance(v, torch.Size):
        v = tuple(v)
    if not isinstance(v, (tuple, list)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        raise _Refused(f"tensor {what} must be a tuple of ints")
    return tuple(v)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, _Storage):
        raise _Refused(f"tensor storage is a {type(storage).__name__}, not a storage")
    size = _as_int_tuple(size, "size")
    stride = _as_int_tuple(stride, "stride")
    if not isinstance(storage_offset, int) or storage_offset < 0 or len(size) != len(stride):
        raise _Refused("malformed tensor (offset/size/stride)")
    if any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise _Refused("malformed tensor (negative size or stride)")
    numel = storage.flat.numel()
    if all(s > 0 for s in size):
        last = storage_offset + sum((n - 1) * st for n, st in zip(size, stride))
        if last >= numel:
            raise _Refused(f"tensor of size {list(size)} reads past its storage of {numel} elements")
    return storage.flat.as_strided(size, stride, storage_offset)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, torch.Tensor):
        raise _Refused("parameter data is not a tensor")
    return data


class _InnerUnpickler(pickle.Unpickler):
    """The pickles inside a legacy torch.save stream: only torch.<Type>Storage globals."""

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise _Refused(f"refused global {module}.{name} inside a tensor storage")

    def persistent_load(self, pid):
        if (not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage"
                or not isinstance(pid[1], torch.dtype) or not isinstance(pid[2], str)
                or not isinstance(pid[4], int) or pid[4] < 0 or (len(pid) == 6 and pid[5] is not None)):
            raise _Refused(f"unsupported persistent id in a tensor storage: {str(pid)[:80]}")
        return _StorageRef(pid[2], pid[1], pid[4])


def _load_from_bytes(data):
    """Parse one legacy (non-zip) torch.save stream holding a single storage -> _Storage."""
    if not isinstance(data, (bytes, bytearray)):
        raise _Refused("storage bytes expected")
    f = io.BytesIO(bytes(data))
    if _InnerUnpickler(f).load() != LEGACY_TORCH_MAGIC:
        raise _Refused("tensor storage is not a torch.save stream (bad magic number)")
    if _InnerUnpickler(f).load() != LEGACY_PROTOCOL_VERSION:
        raise _Refused("tensor storage has an unsupported torch.save protocol version")
    sys_info = _InnerUnpickler(f).load()
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise _Refused("tensor storage is not little-endian")
    ref = _InnerUnpickler(f).load()
    keys = _InnerUnpickler(f).load()
    if not isinstance(ref, _StorageRef) or not isinstance(keys, list):
        raise _Refused("tensor storage stream does not hold exactly one storage")
    flat = None
    for key in keys:
        head = f.read(8)
        if len(head) != 8:
            raise _Refused("tensor storage is truncated")
        (count,) = struct.unpack("<q", head)
        elsize = torch.empty([], dtype=ref.dtype).element_size()
        if count < 0 or count > len(data):
            raise _Refused("tensor storage has an invalid element count")
        raw = f.read(count * elsize)
        if len(raw) != count * elsize:
            raise _Refused("tensor storage is truncated")
        if key == ref.key:
            flat = torch.frombuffer(bytearray(raw), dtype=ref.dtype) if count else torch.empty([0], dtype=ref.dtype)
            if count != ref.numel:
                raise _Refused(f"tensor storage holds {count} elements, its header says {ref.numel}")
    if flat is None:
        raise _Refused("tensor storage data is missing")
    return _Storage(flat)


def _allowed_globals() -> Dict[Tuple[str, str], Any]:
    """Fresh objects per load: even if a BUILD opcode mutates one, nothing outlives the load."""

    def fresh(fn):
        return lambda *args: fn(*args)

    easydict = type("EasyDict", (dict,), {})
    return {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): fresh(_reconstruct_persistent_obj),
        ("dnnlib.util", "EasyDict"): easydict,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): fresh(_rebuild_tensor_v2),
        ("torch._utils", "_rebuild_parameter"): fresh(_rebuild_parameter),
        ("torch.storage", "_load_from_bytes"): fresh(_load_from_bytes),
        ("numpy.core.multiarray", "scalar"): fresh(_np_scalar),
        ("numpy._core.multiarray", "scalar"): fresh(_np_scalar),
        ("numpy", "dtype"): fresh(_np_dtype),
        ("builtins", "set"): set,
    }


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file):
        super().__init__(file)
        self._allowed = _allowed_globals()

    def find_class(self, module, name):
        # Python-2 style names (protocol <= 2 writers) -> Python 3 names, as pickle's own lookup does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        obj = self._allowed.get((module, name))
        if obj is None:
            raise _Refused(f"refused global {module}.{name} (not part of a StyleGAN2-ADA network pickle)")
        return obj

    def persistent_load(self, pid):
        raise _Refused("unexpected persistent id (not a StyleGAN2-ADA network pickle)")


def load_pickle_data(path) -> Any:
    """Unpickle ``path`` with the restricted unpickler -> plain data (dicts, PersistentRecords, tensors)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f).load()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except _Refused as e:
        raise UserError(f"{path}: {e}") from None
    except UserError:
        raise
    except EOFError:
        raise UserError(f"{path}: truncated pickle (unexpected end of file)") from None
    except (pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            struct.error, RuntimeError, OverflowError, MemoryError, RecursionError) as e:
        msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        kind = "truncated pickle" if "truncated" in msg else "corrupt or unsupported pickle"
        raise UserError(f"{path}: {kind} ({msg})") from None


# ----------------------------------------------------------------------------------------------
# Rebuilding the generator
# ----------------------------------------------------------------------------------------------

def _plain_data(v):
    """EasyDict/OrderedDict -> dict, tuples -> lists, recursively (kwargs only)."""
    if isinstance(v, dict):
        return {k: _plain_data(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain_data(x) for x in v]
    return v


def record_tensors(record: PersistentRecord, prefix: str = "") -> Dict[str, torch.Tensor]:
    """All persistent parameters and buffers of a record tree, named as in a state_dict."""
    state = record.state
    if not isinstance(state, dict):
        raise _Refused(f"{record.class_name} has no state dict")
    out: Dict[str, torch.Tensor] = {}
    nonpersistent = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, t in (state.get(group) or {}).items():
            if t is None or (group == "_buffers" and name in nonpersistent):
                continue
            if not isinstance(t, torch.Tensor):
                raise _Refused(f"{prefix}{name} is a {type(t).__name__}, not a tensor")
            out[prefix + name] = t
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentRecord):
            raise _Refused(f"sub-module {prefix}{name} is a {type(child).__name__}, not a persistent module")
        out.update(record_tensors(child, prefix + name + "."))
    return out


def generator_kwargs(record: PersistentRecord) -> dict:
    """The Generator constructor kwargs of an official record (positional args mapped to names)."""
    state = record.state
    args = state.get("_init_args") or ()
    kwargs = state.get("_init_kwargs") or {}
    if not isinstance(args, (tuple, list)) or not isinstance(kwargs, dict):
        raise _Refused("Generator _init_args/_init_kwargs are malformed")
    if len(args) > len(GENERATOR_ARG_NAMES):
        raise _Refused(f"Generator has {len(args)} positional arguments, expected at most {len(GENERATOR_ARG_NAMES)}")
    out = dict(zip(GENERATOR_ARG_NAMES, args))
    out.update(kwargs)
    out = _plain_data(out)
    # The StyleGAN2 port in NVlabs/stylegan3 (networks_stylegan2) takes the synthesis kwargs flat
    # (Generator(..., mapping_kwargs, **synthesis_kwargs)) plus fused_modconv_default, a pure
    # speed switch; same module names and maths, so fold them into our layout.
    flat = {k: out.pop(k) for k in list(out) if k not in GENERATOR_ARG_NAMES}
    flat.pop("fused_modconv_default", None)
    if flat:
        out["synthesis_kwargs"] = {**(out.get("synthesis_kwargs") or {}), **flat}
    return out


def copy_tensors_into(module: torch.nn.Module, tensors: Dict[str, torch.Tensor], what: str) -> None:
    """Copy by name after checking names and shapes match exactly (UserError lists mismatches)."""
    own = module.state_dict()
    problems = []
    for name in own:
        if name not in tensors:
            problems.append(f"missing {name}")
        elif tuple(tensors[name].shape) != tuple(own[name].shape):
            problems.append(f"{name} has shape {list(tensors[name].shape)}, expected {list(own[name].shape)}")
    problems += [f"unexpected {name}" for name in tensors if name not in own]
    if problems:
        more = f" (+{len(problems) - 4} more)" if len(problems) > 4 else ""
        raise UserError(f"{what}: weights do not match the architecture: {'; '.join(problems[:4])}{more}")
    with torch.no_grad():
        for name, dst in own.items():
            dst.copy_(tensors[name].to(dst.dtype))


def select_generator_record(data: Any, path) -> PersistentRecord:
    """G_ema of a snapshot dict (else G), or a bare persistent Generator."""
    if isinstance(data, PersistentRecord):
        rec = data
    elif isinstance(data, dict):
        rec = data.get("G_ema")
        if rec is None:
            rec = data.get("G")
        if rec is None:
            raise UserError(f"{path}: network pickle has neither 'G_ema' nor 'G' (keys: {', '.join(map(str, data))})")
        if not isinstance(rec, PersistentRecord):
            raise UserError(f"{path}: 'G_ema'/'G' is a {type(rec).__name__}, not a persistent network object")
    else:
        raise UserError(f"{path}: pickle holds a {type(data).__name__}, not a StyleGAN2-ADA snapshot")
    meta = rec.meta
    if meta.get("type") != "class" or meta.get("version") != PERSISTENCE_VERSION:
        raise UserError(f"{path}: unsupported persistent object (type {meta.get('type')!r}, version "
                        f"{meta.get('version')!r}; expected 'class', {PERSISTENCE_VERSION})")
    if rec.class_name != "Generator":
        raise UserError(f"{path}: the network is a {rec.class_name!r}, not a 'Generator'")
    return rec


def load_nvidia_pickle(path, device="cpu") -> Generator:
    """NVIDIA StyleGAN2-ADA ``*.pkl`` -> our Generator (eval mode) on ``device``."""
    data = load_pickle_data(path)
    rec = select_generator_record(data, path)
    try:
        kwargs = generator_kwargs(rec)
        tensors = record_tensors(rec)
    except _Refused as e:
        raise UserError(f"{path}: {e}") from None
    try:
        G = Generator(**kwargs)
    except UserError as e:
        raise UserError(f"{path}: not a supported StyleGAN2-ADA generator: {e}") from None
    except TypeError as e:
        raise UserError(f"{path}: not a supported StyleGAN2-ADA generator: {str(e).splitlines()[0]}") from None
    copy_tensors_into(G, tensors, str(path))
    return G.eval().to(device)
