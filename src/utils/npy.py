"""Reading NumPy ``.npy`` arrays as data only: never a pickle, and one clear line for what is not an array."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from src.utils.errors import UserError, first_line

NPY_MAGIC = b"\x93NUMPY"


def load_npy(path: str | Path) -> np.ndarray:
    """The array in ``path``; UserError when it is not a .npy file or holds Python objects (which
    would need unpickling: never done)."""
    p = Path(path)
    with open(p, "rb") as f:
        head = f.read(len(NPY_MAGIC))
    if head != NPY_MAGIC:
        raise UserError(f"{p}: not a .npy array file (no NumPy header)")
    try:
        return np.load(p, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise UserError(f"{p}: the array holds Python objects, which are never unpickled: save a numeric "
                            "array (np.save with a float array)") from None
        raise UserError(f"{p}: not a readable .npy array ({first_line(e)})") from None
