"""``load_generator``: picks the loader from the file's content (magic bytes), not its name."""

from __future__ import annotations

import struct
from pathlib import Path

from src.stylegan.generator import Generator
from src.utils.errors import UserError
from src.utils.io import check_input_file

FORMATS = ("nvidia-pickle", "torch", "safetensors")


def detect_format(path) -> str:
    """'nvidia-pickle' | 'torch' (zip or legacy torch.save: rosinality) | 'safetensors'; UserError otherwise."""
    from src.stylegan.restricted_unpickler import LEGACY_TORCH_PREFIX

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a generator file (.pkl, .pt, .safetensors)")
    check_input_file(path, "generator")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        raise UserError(f"{path}: generator file not found (official weights cannot be fetched by this project: "
                        "download the file docs/real_domains.md names for this domain and put it there)") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if not head:
        raise UserError(f"{path}: empty file")
    if head.startswith(b"PK\x03\x04"):
        return "torch"
    if head.startswith(LEGACY_TORCH_PREFIX):
        return "torch"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "nvidia-pickle"
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and 2 <= header_len < 100_000_000:
            return "safetensors"
    raise UserError(f"{path}: unrecognised file format (expected an NVIDIA .pkl, a rosinality .pt "
                    f"or our .safetensors)")


def load_generator(path, device="cpu") -> Generator:
    """Load a StyleGAN2(-ADA) generator -> our Generator in eval mode on ``device``.

    Supported: NVIDIA network pickles (G_ema, else G; restricted unpickler, no code runs),
    rosinality checkpoints (both layouts; torch.load weights_only=True) and our safetensors+json.
    Bad input raises UserError with one line naming the file.
    """
    fmt = detect_format(path)
    if fmt == "nvidia-pickle":
        from src.stylegan.nvidia_pickle import load_nvidia_pickle

        return load_nvidia_pickle(path, device)
    if fmt == "torch":
        from src.stylegan.rosinality import load_rosinality

        return load_rosinality(path, device)
    from src.stylegan.native import load_native

    return load_native(path, device)
