"""The compact resumable state of a StyleGAN training run: a Lightning checkpoint of ``task=stylegan``
(172 MiB at the embedded 128 px size) <-> a folder of safetensors shards of at most 16 MiB and a
``manifest.json`` (56.8 MiB together), small enough to travel to and from machines that keep nothing.

    python -m src.embedded.training.gan_state export RUN/checkpoints/last.ckpt STATE_DIR [--shard-mib 16]
    python -m src.embedded.training.gan_state import STATE_DIR RUN/checkpoints/last.ckpt
    python -m src.embedded.training.gan_state info STATE_DIR
    python -m src.embedded.training.gan_state keep STATE_DIR RUN_STATE_DIR   # checked, then replaces it
    python -m src.embedded.training.gan_state generator STATE_DIR G.safetensors  # its G_ema, fp16 (+ G.json)

``keep`` checks a state that came back from a chunk (every shard read and decoded) and only then
replaces the run's kept state with it, whole: a bad copy never overwrites a good one.
``import`` writes a normal checkpoint: placed as a run folder's ``checkpoints/last.ckpt``, it is resumed
by train.py with the same name= (src/systems/resume.py), counters, render stream and loader position
included. Precision (the tensor's own dtype where a rule says "exact"):

* G, D and G_ema weights of more than 4,096 elements: fp16. Equalised-lr weights are O(1); fp16 rounds
  them by at most 2^-11 relative, once per chunk, less than one Adam step (lr 0.0025). A tensor out of
  fp16's range stays fp32.
* Adam's second moment: bf16 (fp32's range: squared gradients below 6e-8 vanish in fp16), 2^-9 relative.
* Adam's first moment: dropped where the optimiser's beta1 is 0 (the official betas (0, 0.99), also
  after the lazy-regularisation adjustment 0 ** k = 0). Adam then sets exp_avg = lerp(exp_avg, grad, 1)
  = grad before reading it, so zeros restore it exactly. With beta1 > 0 it is kept in bf16.
* buffers (w_avg, constant noise, filters), biases, step counters, RNG states, the loops' state: exact.
* the frozen evaluation networks (oracle, feature net): left out, rebuilt from the config on resume.

Loading reads JSON and safetensors only (no pickle), checks the manifest's shapes against the networks
its hyper-parameters describe, then each shard's size, sha256 and header, before it reads any tensor.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import torch
from torch import Tensor

from src.embedded.training.gan_state_check import (DTYPES, FORMAT, MANIFEST, MOMENT, SHARD_NAME, check_shard,
                                                   check_table, load_manifest, reference_shapes)
from src.utils.errors import UserError, exit_code
from src.utils.io import atomic_write, atomic_write_text, together

__all__ = ["write_state", "read_state", "export_checkpoint", "import_checkpoint", "keep_state", "state_summary",
           "align_state_layouts", "export_generator", "main"]

SHARD_MIB = 16
EXACT_UP_TO = 4096              # tensors up to this many elements are kept exactly
FP16_MAX = 65504.0
# state_dict prefixes of the frozen evaluation networks; StyleGANModule.on_load_checkpoint puts its own back
EVAL_NETWORKS = ("_oracle.", "_feature_net.")

# ---------------------------------------------------------------- the checkpoint as JSON + tensors
def _encode(value: Any, path: str, put: Callable[[str, Tensor], Any]) -> Any:
    """JSON for ``value``; tensors go to ``put(path, tensor)``; tuples, non-string keys and non-finite
    floats are tagged so that decoding gives the same Python values back."""
    if isinstance(value, Tensor):
        return {"__tensor__": put(path, value)}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{path}.{i}", put) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{path}.{i}", put) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, f"{path}.{k}", put) for k, v in value.items()}
        return {"__items__": [[_encode(k, path, put), _encode(v, f"{path}.{k}", put)] for k, v in value.items()]}
    raise UserError(f"{path}: a {type(value).__name__} has no place in a compact GAN state")


def _decode(value: Any, tensors: Mapping[str, Tensor], depth: int = 0) -> Any:
    if depth > 32:
        raise UserError("the manifest nests deeper than 32 levels")
    if isinstance(value, list):
        return [_decode(v, tensors, depth + 1) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (tag, inner), = value.items()
        if tag == "__tensor__":
            return tensors[inner]
        if tag == "__float__":
            return float(inner)
        if tag == "__tuple__":
            return tuple(_decode(v, tensors, depth + 1) for v in inner)
        if tag == "__items__":
            return {_decode(k, tensors, depth + 1): _decode(v, tensors, depth + 1) for k, v in inner}
    return {k: _decode(v, tensors, depth + 1) for k, v in value.items()}


def _config_hash(hparams: Any) -> str:
    text = json.dumps(_encode(hparams, "hyper_parameters", lambda p, t: p), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------- write
def write_state(ckpt: Mapping[str, Any], out_dir: str | Path, shard_mib: float = SHARD_MIB,
                exact_up_to: int = EXACT_UP_TO) -> dict:
    """Write ``ckpt`` (a task=stylegan Lightning checkpoint dict) into ``out_dir`` as shards of at most
    ``shard_mib`` MiB + manifest.json, atomically (old shards of the folder are replaced); tensors of
    at most ``exact_up_to`` elements are kept exactly. Returns the manifest."""
    from safetensors.torch import save

    hp = ckpt.get("hyper_parameters") or {}
    if "state_dict" not in ckpt or "G_kwargs" not in hp:
        raise UserError("not a checkpoint of task=stylegan (no state_dict or G_kwargs)")
    _, weights, _ = reference_shapes(hp)
    beta1 = [max(float(g.get("betas", (1.0,))[0]) for g in opt.get("param_groups") or [{}])
             for opt in ckpt.get("optimizer_states") or []]
    table: Dict[str, dict] = {}
    stored: Dict[str, Tensor] = {}
    seen: Dict[tuple, str] = {}  # exact tensors stored once (G_ema's buffers are G's)

    def put(path: str, t: Tensor) -> str:
        t = t.detach().cpu()
        entry = {"dtype": str(t.dtype)[6:], "shape": list(t.shape)}
        moment = MOMENT.match(path)
        if moment and moment.group(3) == "exp_avg" and beta1[int(moment.group(1))] == 0.0:
            entry["stored"] = None  # Adam overwrites it with the gradient before reading it
        else:
            s = t
            big = t.is_floating_point() and t.numel() > exact_up_to
            if big and moment:
                s = t.to(torch.bfloat16)
            elif big and path.startswith("state_dict.") and path[len("state_dict."):] in weights:
                finite = bool(torch.isfinite(t).all()) and float(t.abs().max()) <= FP16_MAX
                s = t.to(torch.float16) if finite else t
            entry["stored"] = str(s.dtype)[6:]
            key = (entry["stored"], tuple(s.shape), hashlib.sha256(s.contiguous().view(-1).view(torch.uint8).numpy()).hexdigest()
                   ) if s is t and t.numel() else None
            if key is not None and key in seen:
                entry["same_as"] = seen[key]
            else:
                seen.setdefault(key, path)
                # no shared storage in a shard; channels-last tensors stored in the plain layout
                stored[path] = s.clone(memory_format=torch.contiguous_format) if s is t else s.contiguous()
        table[path] = entry
        return path

    body = {k: v for k, v in ckpt.items() if k != "state_dict"}
    body["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith(EVAL_NETWORKS)}
    skeleton = {k: _encode(v, k, put) for k, v in body.items()}
    cap = int(shard_mib * (1 << 20))
    shards: list[list[str]] = [[]]
    used = 8
    for name, t in stored.items():
        size = t.numel() * t.element_size() + len(name) + 96  # data + its header entry (generous)
        if size + 8 > cap:
            raise UserError(f"{name} ({size} bytes) does not fit a shard of {shard_mib} MiB")
        if used + size > cap and shards[-1]:
            shards.append([])
            used = 8
        shards[-1].append(name)
        used += size
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    listed = []
    with together():
        for i, names in enumerate(shards):
            data = save({n: stored[n] for n in names}, metadata={"format": FORMAT})
            if len(data) > cap:
                raise UserError(f"shard {i} came out at {len(data)} bytes, over the cap of {cap}")
            fname = f"state-{i:02d}.safetensors"
            with atomic_write(out / fname) as tmp:
                tmp.write_bytes(data)
            listed.append({"file": fname, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
            for n in names:
                table[n]["shard"] = i
        prog = ckpt.get("stylegan_progress") or {}
        manifest = {"format": FORMAT, "global_step": int(ckpt.get("global_step", 0)),
                    "epoch": int(ckpt.get("epoch", 0)), "iteration": int(prog.get("iteration", 0)),
                    "cur_nimg": int(prog.get("cur_nimg", 0)), "kimg": int(prog.get("cur_nimg", 0)) / 1000.0,
                    "seed": hp.get("seed"), "config_sha256": _config_hash(hp),
                    "render_rng": "stylegan_progress.render_rng" if "render_rng" in prog else None,
                    "train_loader": ((ckpt.get("loops") or {}).get("fit_loop") or {}).get("state_dict", {}).get(
                        "combined_loader"), "shards": listed, "tensors": table, "checkpoint": skeleton}
        atomic_write_text(out / MANIFEST, json.dumps(manifest))
    keep = {s["file"] for s in listed}
    for old in out.iterdir():
        if SHARD_NAME.match(old.name) and old.name not in keep:
            old.unlink()
    return manifest



def read_state(folder: str | Path) -> dict:
    """The Lightning checkpoint dict a state folder holds (weights back in their own dtypes, Adam's
    dropped first moment as zeros). One UserError line for a missing, corrupt or misfitting file."""
    from safetensors.torch import load_file

    folder = Path(folder)
    manifest = load_manifest(folder)
    table = manifest["tensors"]
    try:
        hparams = _decode(manifest["checkpoint"].get("hyper_parameters"), {})
    except (KeyError, TypeError, ValueError):
        raise UserError("manifest: its hyper_parameters do not decode") from None
    check_table(manifest, hparams)
    paths = [check_shard(folder, i, s, table) for i, s in enumerate(manifest["shards"])]
    tensors: Dict[str, Tensor] = {}
    for path in paths:
        tensors.update(load_file(str(path)))
    for name, e in table.items():
        dtype = DTYPES[e["dtype"]][0]
        if e["stored"] is None:
            tensors[name] = torch.zeros(e["shape"], dtype=dtype)
        elif "same_as" in e:
            tensors[name] = tensors[e["same_as"]].to(dtype, copy=True)
        elif tensors[name].dtype != dtype:
            tensors[name] = tensors[name].to(dtype)
    try:
        ckpt = {k: _decode(v, tensors) for k, v in manifest["checkpoint"].items()}
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"manifest: the checkpoint does not decode ({type(e).__name__}: {e})") from None
    return ckpt


def align_state_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each optimizer state tensor of a parameter's shape that parameter's memory layout. A state
    comes back from the shards in the plain layout; channels-last parameters (fp16_channels_last)
    would then meet moments laid out otherwise, and a fused optimizer indexes them alike."""
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def state_summary(folder: str | Path) -> str:
    m = load_manifest(Path(folder))
    total = sum(int(s.get("bytes", 0)) for s in m["shards"]) + (Path(folder) / MANIFEST).stat().st_size
    return (f"step {m.get('global_step')} iteration {m.get('iteration')} kimg {m.get('kimg'):.1f} seed {m.get('seed')}: "
            f"{len(m['shards'])} shards + manifest, {total / 2**20:.2f} MiB, config {str(m.get('config_sha256'))[:12]}")


# ---------------------------------------------------------------- Lightning checkpoint <-> state folder
def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path, shard_mib: float = SHARD_MIB) -> dict:
    """A run's checkpoint file -> a compact state folder (returns the manifest)."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: not a loadable checkpoint ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
    return write_state(ckpt, out_dir, shard_mib)


def import_checkpoint(folder: str | Path, ckpt_path: str | Path) -> Path:
    """A compact state folder -> a Lightning checkpoint file (atomically), for train.py to resume."""
    ckpt = read_state(folder)
    with atomic_write(ckpt_path) as tmp:
        torch.save(ckpt, tmp)
    return Path(ckpt_path)


def export_generator(folder: str | Path, out: str | Path) -> Path:
    """The G_ema of a state folder as a generator file (fp16 weights + JSON sidecar, each written
    atomically), as the run would export it: for ``bench/bench_gan_quality.py --generator`` or assets/."""
    from src.config.gan import network_kwargs
    from src.stylegan import Generator, save_generator

    ckpt = read_state(folder)
    hp = ckpt.get("hyper_parameters") or {}
    mode = (hp.get("precision") or {}).get("mode", "fp16_res")
    g_kwargs, _ = network_kwargs(hp.get("G_kwargs"), hp.get("D_kwargs"), mode)
    G = Generator(c_dim=0, img_resolution=hp["resolution"], img_channels=3, **g_kwargs)
    G.load_state_dict({k[len("G_ema."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("G_ema.")})
    return save_generator(G.eval(), out, fp16=True)


def keep_state(folder: str | Path, kept: str | Path) -> Path:
    """Replace the state folder ``kept`` with the state in ``folder`` (its manifest and shards only),
    after reading and decoding all of it; ``kept`` is swapped in whole (a copy beside it, renamed)."""
    import shutil

    folder, kept = Path(folder), Path(kept)
    if folder.resolve() == kept.resolve():
        raise UserError(f"{folder}: already the kept state")
    read_state(folder)  # every shard's size, sha256, header and tensors
    names = [MANIFEST] + [s["file"] for s in load_manifest(folder)["shards"]]
    kept.parent.mkdir(parents=True, exist_ok=True)
    new, old = kept.with_name(kept.name + ".new"), kept.with_name(kept.name + ".old")
    for stale in (new, old):
        shutil.rmtree(stale, ignore_errors=True)
    new.mkdir()
    for name in names:
        shutil.copyfile(folder / name, new / name)
    if kept.exists():
        kept.rename(old)
    new.rename(kept)
    shutil.rmtree(old, ignore_errors=True)
    return kept


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.embedded.training.gan_state", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="checkpoint -> state folder")
    ex.add_argument("checkpoint")
    ex.add_argument("state_dir")
    ex.add_argument("--shard-mib", type=float, default=SHARD_MIB)
    im = sub.add_parser("import", help="state folder -> checkpoint")
    im.add_argument("state_dir")
    im.add_argument("checkpoint")
    sub.add_parser("info", help="what a state folder holds (checked)").add_argument("state_dir")
    kp = sub.add_parser("keep", help="check a state folder, then make it the run's kept state")
    kp.add_argument("state_dir")
    kp.add_argument("kept_dir")
    gp = sub.add_parser("generator", help="write the state's G_ema as a generator file (fp16)")
    gp.add_argument("state_dir")
    gp.add_argument("output", help="G.safetensors (a G.json sidecar beside it)")
    args = parser.parse_args(argv)

    def command() -> None:
        if args.cmd == "export":
            export_checkpoint(args.checkpoint, args.state_dir, args.shard_mib)
        elif args.cmd == "import":
            print(f"wrote {import_checkpoint(args.state_dir, args.checkpoint)}")
        elif args.cmd == "keep":
            print(f"kept in {keep_state(args.state_dir, args.kept_dir)}")
        elif args.cmd == "generator":
            print(f"wrote {export_generator(args.state_dir, args.output)}")
        else:
            read_state(args.state_dir)
        print(state_summary(args.state_dir))

    return exit_code(command)


if __name__ == "__main__":
    sys.exit(main())
