"""Restricted unpickler for NVIDIA StyleGAN2-ADA network pickles: never executes code from the file.

A ``pickle.Unpickler`` that resolves ONLY the globals that the official snapshots use (the classes
of NVIDIA's training code: persistence records, EasyDict, tensors) and maps each of them to a
function or type of ours that builds plain data:

  torch_utils.persistence._reconstruct_persistent_obj -> PersistentRecord(meta)   (module_src never run)
  dnnlib.util.EasyDict                                -> a throw-away dict subclass
  collections.OrderedDict, builtins.set               -> themselves (plain containers)
  torch._utils._rebuild_tensor_v2 / _rebuild_parameter -> our strided view over a parsed storage
  torch.storage._load_from_bytes                      -> our parser of the legacy torch.save stream
  numpy[._]core.multiarray.scalar, numpy.dtype         -> python numbers (numeric dtypes only)

Any other global is refused with a one-line UserError naming the file and the global.
``src/stylegan/nvidia_pickle.py`` turns the resulting plain data into our Generator.
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

from src.utils.errors import UserError

LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
# torch.save (legacy, pickle protocol 2) starts with the pickled magic number: PROTO 2, LONG1 10 bytes.
LEGACY_TORCH_PREFIX = b"\x80\x02\x8a\x0a" + LEGACY_TORCH_MAGIC.to_bytes(10, "little")
PERSISTENCE_VERSION = 6

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class Refused(Exception):
    """Raised inside unpickling or conversion; the loaders turn it into UserError('<file>: <message>')."""


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
            raise Refused(f"numpy dtype name must be a string, got {type(name).__name__}")
        self.name = name
        self.order = "="

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) < 2 or not isinstance(state[1], str):
            raise Refused("malformed numpy dtype state")
        self.order = state[1]

    def to_numpy(self) -> np.dtype:
        try:
            dt = np.dtype(self.name)
        except TypeError:
            raise Refused(f"unsupported numpy dtype {self.name!r}") from None
        if dt.kind not in "fiub":
            raise Refused(f"numpy dtype {self.name!r} (kind {dt.kind!r}) is not a plain number")
        if self.order in "<>":
            dt = dt.newbyteorder(self.order)
        return dt


# ----------------------------------------------------------------------------------------------
# Replacement functions for the allowed globals
# ----------------------------------------------------------------------------------------------

def _reconstruct_persistent_obj(meta):
    if not isinstance(meta, dict):
        raise Refused(f"persistent object meta is a {type(meta).__name__}, not a dict")
    return PersistentRecord(meta)


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, _NpDType) or not isinstance(data, (bytes, bytearray)):
        raise Refused("malformed numpy scalar")
    dt = dtype.to_numpy()
    if len(data) != dt.itemsize:
        raise Refused(f"numpy scalar of dtype {dtype.name} has {len(data)} bytes, expected {dt.itemsize}")
    return np.frombuffer(bytes(data), dtype=dt)[0].item()


def _np_dtype(*args):
    return _NpDType(*args)


def _as_int_tuple(v, what: str) -> Tuple[int, ...]:
    if isinstance(v, torch.Size):
        v = tuple(v)
    if not isinstance(v, (tuple, list)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        raise Refused(f"tensor {what} must be a tuple of ints")
    return tuple(v)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, _Storage):
        raise Refused(f"tensor storage is a {type(storage).__name__}, not a storage")
    size = _as_int_tuple(size, "size")
    stride = _as_int_tuple(stride, "stride")
    if not isinstance(storage_offset, int) or storage_offset < 0 or len(size) != len(stride):
        raise Refused("malformed tensor (offset/size/stride)")
    if any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise Refused("malformed tensor (negative size or stride)")
    numel = storage.flat.numel()
    if all(s > 0 for s in size):
        last = storage_offset + sum((n - 1) * st for n, st in zip(size, stride))
        if last >= numel:
            raise Refused(f"tensor of size {list(size)} reads past its storage of {numel} elements")
    return storage.flat.as_strided(size, stride, storage_offset)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, torch.Tensor):
        raise Refused("parameter data is not a tensor")
    return data


class _InnerUnpickler(pickle.Unpickler):
    """The pickles inside a legacy torch.save stream: only torch.<Type>Storage globals."""

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise Refused(f"refused global {module}.{name} inside a tensor storage")

    def persistent_load(self, pid):
        if (not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage"
                or not isinstance(pid[1], torch.dtype) or not isinstance(pid[2], str)
                or not isinstance(pid[4], int) or pid[4] < 0 or (len(pid) == 6 and pid[5] is not None)):
            raise Refused(f"unsupported persistent id in a tensor storage: {str(pid)[:80]}")
        return _StorageRef(pid[2], pid[1], pid[4])


def _load_from_bytes(data):
    """Parse one legacy (non-zip) torch.save stream holding a single storage -> _Storage."""
    if not isinstance(data, (bytes, bytearray)):
        raise Refused("storage bytes expected")
    f = io.BytesIO(bytes(data))
    if _InnerUnpickler(f).load() != LEGACY_TORCH_MAGIC:
        raise Refused("tensor storage is not a torch.save stream (bad magic number)")
    if _InnerUnpickler(f).load() != LEGACY_PROTOCOL_VERSION:
        raise Refused("tensor storage has an unsupported torch.save protocol version")
    sys_info = _InnerUnpickler(f).load()
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise Refused("tensor storage is not little-endian")
    ref = _InnerUnpickler(f).load()
    keys = _InnerUnpickler(f).load()
    if not isinstance(ref, _StorageRef) or not isinstance(keys, list):
        raise Refused("tensor storage stream does not hold exactly one storage")
    flat = None
    for key in keys:
        head = f.read(8)
        if len(head) != 8:
            raise Refused("tensor storage is truncated")
        (count,) = struct.unpack("<q", head)
        elsize = torch.empty([], dtype=ref.dtype).element_size()
        if count < 0 or count > len(data):
            raise Refused("tensor storage has an invalid element count")
        raw = f.read(count * elsize)
        if len(raw) != count * elsize:
            raise Refused("tensor storage is truncated")
        if key == ref.key:
            flat = torch.frombuffer(bytearray(raw), dtype=ref.dtype) if count else torch.empty([0], dtype=ref.dtype)
            if count != ref.numel:
                raise Refused(f"tensor storage holds {count} elements, its header says {ref.numel}")
    if flat is None:
        raise Refused("tensor storage data is missing")
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
            raise Refused(f"refused global {module}.{name} (not part of a StyleGAN2-ADA network pickle)")
        return obj

    def persistent_load(self, pid):
        raise Refused("unexpected persistent id (not a StyleGAN2-ADA network pickle)")


def load_pickle_data(path) -> Any:
    """Unpickle ``path`` with the restricted unpickler -> plain data (dicts, PersistentRecords, tensors)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f).load()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except Refused as e:
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
