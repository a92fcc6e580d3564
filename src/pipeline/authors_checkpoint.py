"""The authors' trained checkpoints (researchmm/language-guided-animation) as our animator files.

    python -m src.pipeline.authors_checkpoint Iter_005000.pth animator_authors.safetensors
    python -m src.pipeline.authors_checkpoint Iter_005000.pth metfaces_authors.safetensors \\
        --experiment metfaces_paper domain.generator.checkpoint=/data/metfaces.pkl
    python animate.py checkpoint=animator_authors.safetensors text="The person is smiling."

Their ``tools/dist_train.py`` saves ``{'iter', 'arch', 'state_dict', 'optimizer'}``, ``state_dict``
being their ``UniEditModelv1``'s (``module.``-prefixed when saved from DDP). Read with
``torch.load(weights_only=True)`` only; the optimizer state is dropped. Their weights become ours:

    rnn.fc1 / fc2 / fc3.{weight,bias}          -> animator.W1 / W2 / W3
    mapper.t_mapper.{1,2,3}.{weight,bias}      -> animator.motion_mapper.net.{1,2,3}
    mapper.v_mapper.{1,2,3}.{weight,bias}      -> animator.image_mapper.net.{1,2,3}  (text+image only)
    encoder.<OpenAI CLIP key>                  -> clip.model.<the same key> (open_clip's OpenAI-format CLIP)

The configuration is the experiment's (``conf/experiment/<experiment>.yaml`` with ``overrides``, as
``train.py`` composes it): human_paper is text+image with the whole CLIP fine-tuned (every CLIP
weight and BatchNorm statistic of the checkpoint is exported), metfaces_paper is text-only with the
text tower fine-tuned (only the text tower is exported; their visual tower and v_mapper were frozen
at OpenAI's and random weights and are never used). A checkpoint holds no sign of which of the two it
is: the experiment says it. Every shape is checked against that config before anything is written:
the CLIP's against ``domain.clip.model_name`` (RN50: embedding 1024), the mappers' 512 x num_ws rows
against the generator ``domain.resolution`` implies. The CLIP is recorded with OpenAI's activation
(``RN50-quickgelu``, same weights and 'openai' tag as ``RN50``), as the authors ran it.

Frozen hashes: none are recorded. The checkpoint does not pin a generator (it never held one), so the
file loads with whatever ``domain.generator.checkpoint`` names; the base CLIP is not pinned either,
because every one of its weights the animator uses is replaced by the checkpoint's (human_paper) or
is the visual tower a text-only animator never runs (metfaces_paper). The file records instead where
it came from: ``converted_from`` = {file, sha256, iter, arch} in its configuration.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from src.config.animator import AnimatorInferenceConfig, AnimatorNetConfig, AnimatorTrainConfig, typed_group
from src.pipeline.animator_file import write_animator_file
from src.utils.config import plain
from src.utils.errors import UserError, exit_code, first_line
from src.utils.io import sha256_files

EXPERIMENTS = ("human_paper", "metfaces_paper")
W_DIM = 512  # the authors' Mapper writes 512 * num_ws values (their StyleGAN2's w_dim)
RNN_KEYS = tuple(f"rnn.fc{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias"))
# our RecurrentAnimator's state-dict key -> the authors' UniEditModelv1 key (rnn.py, modelv1.py)
AUTHORS_KEYS = {**{f"W{i}.{p}": f"rnn.fc{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")},
                **{f"{ours}.net.{i}.{p}": f"mapper.{theirs}.{i}.{p}" for ours, theirs in
                   (("motion_mapper", "t_mapper"), ("image_mapper", "v_mapper")) for i in (1, 2, 3)
                   for p in ("weight", "bias")}}
T_MAPPER_KEYS = tuple(f"mapper.t_mapper.{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias"))
# metadata entries of OpenAI's TorchScript CLIP state dicts, not weights
_OPENAI_META = ("input_resolution", "context_length", "vocab_size")
EXPECTED = ("the authors' training checkpoint (tools/dist_train.py's Iter_XXXXXX.pth: a dict with 'state_dict' "
            "holding encoder.*, rnn.fc1-3 and mapper.t_mapper.1-3 weights)")


def read_authors_checkpoint(path: str | Path) -> dict[str, Any]:
    """{'iter', 'arch', 'state_dict'} of an authors' checkpoint; the state dict without its DDP
    ``module.`` prefix. Anything else is one UserError line saying what was expected."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"authors' checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, truncated, or a pickle that needs code
        raise UserError(f"{path}: not a loadable checkpoint ({first_line(e)}); expected {EXPECTED}") from None
    if isinstance(ckpt, dict) and "hyper_parameters" in ckpt:
        raise UserError(f"{path}: an animator checkpoint of this project, not the authors': use it as it is")
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: no state dict of tensors; expected {EXPECTED}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    missing = [k for k in RNN_KEYS + T_MAPPER_KEYS if k not in state]
    if missing or not any(k.startswith("encoder.") for k in state):
        what = missing[0] if missing else "encoder.* (the CLIP)"
        raise UserError(f"{path}: its state dict has no {what}; expected {EXPECTED}")
    return {"iter": ckpt.get("iter"), "arch": ckpt.get("arch"), "state_dict": state}


def experiment_config(experiment: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The animator configuration (domain, net, train, inference) ``train.py experiment=...`` builds,
    with Hydra ``overrides`` of the train config (e.g. ``domain.generator.checkpoint=/data/G.pkl``)."""
    if experiment not in EXPERIMENTS:
        raise UserError(f"experiment '{experiment}' is not one of {', '.join(EXPERIMENTS)}")
    from src.config.compose import compose_config

    cfg = compose_config("train", [f"experiment={experiment}", *overrides])
    train = asdict(typed_group(AnimatorTrainConfig, plain(cfg.model.train), "model.train"))
    train.update(export_path=None, init_checkpoint=None)  # settings of a training run, not of this file
    return {"domain": plain(cfg.domain),
            "net": asdict(typed_group(AnimatorNetConfig, plain(cfg.model.net), "model.net")),
            "train": train,
            "inference": asdict(typed_group(AnimatorInferenceConfig, plain(cfg.model.inference), "model.inference"))}


def openai_activation(model_name: str) -> str:
    """The open_clip name of ``model_name`` with OpenAI's QuickGELU: the authors' encoder is OpenAI's
    own CLIP, whose text transformer uses it, while open_clip's plain ``RN50`` config (also with
    pretrained='openai') builds exact GELU. 'RN50' -> 'RN50-quickgelu'; other names stay."""
    import open_clip

    quick = f"{model_name}-quickgelu"
    config = open_clip.get_model_config(model_name) or {}
    return quick if not config.get("quick_gelu") and quick in open_clip.list_models() else model_name


def _architecture_clip(model_name: str):
    """A ClipEncoder around open_clip's ``model_name`` architecture on the meta device (no weights)."""
    import open_clip

    from src.networks.clip_encoder import ClipEncoder

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # open_clip's "no pretrained weights loaded": none are wanted
    try:
        model = open_clip.create_model(model_name, device="meta")
    except Exception as e:
        raise UserError(f"domain.clip.model_name '{model_name}': not an open_clip architecture ({first_line(e)})") \
            from None
    finally:
        logging.disable(previous)
    return ClipEncoder(model, kind="open_clip", tokenizer=object())


def clip_weights(state: Mapping[str, torch.Tensor], model_name: str, finetune: str) -> tuple[dict, int]:
    """({clip.model.<key>: tensor} to export, the CLIP's embedding size) from the checkpoint's
    ``encoder.*``, checked key by key and shape by shape against ``model_name``. finetune 'all':
    every weight and buffer; 'text': the parameters FaceAnimator fine-tunes as the text tower."""
    theirs = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    theirs = {k: v for k, v in theirs.items() if k not in _OPENAI_META}
    arch = _architecture_clip(model_name)
    ours = arch.model.state_dict()
    for key in sorted(ours):
        if key not in theirs:
            raise UserError(f"the checkpoint's CLIP is not {model_name}: it has no encoder.{key}")
        if tuple(theirs[key].shape) != tuple(ours[key].shape):
            raise UserError(f"the checkpoint's CLIP is not {model_name}: encoder.{key} has shape "
                            f"{tuple(theirs[key].shape)}, not {tuple(ours[key].shape)}")
    extra = sorted(set(theirs) - set(ours))
    if extra:
        raise UserError(f"the checkpoint's CLIP is not {model_name}: unexpected encoder.{extra[0]}")
    if finetune == "all":
        keys = sorted(ours)
    elif finetune == "text":
        text = {id(p) for p in arch.text_parameters()}
        keys = sorted(n for n, p in arch.model.named_parameters() if id(p) in text)
    else:
        raise UserError(f"model.train.clip_finetune is '{finetune}': the authors fine-tune the CLIP (all or text)")
    return {f"clip.model.{k}": _fp32(theirs[k]) for k in keys}, int(arch.embed_dim)


def animator_weights(state: Mapping[str, torch.Tensor], net: Mapping[str, Any], embed_dim: int,
                     num_ws: int) -> dict[str, torch.Tensor]:
    """{animator.<key>: tensor} of the recurrent animator ``net`` describes, from their rnn and mapper
    weights; every shape checked against that animator (built on the meta device)."""
    from src.networks.animator import RecurrentAnimator

    if float(net["mapper_lr_mul"]) != 1.0:
        raise UserError(f"model.net.mapper_lr_mul is {net['mapper_lr_mul']}: the authors' mapper weights are "
                        "stored for lr_mul 1")
    with torch.device("meta"):
        target = RecurrentAnimator(embed_dim=embed_dim, num_ws=num_ws, w_dim=W_DIM, **net)
    out = {}
    for key, shaped in target.state_dict().items():
        theirs = AUTHORS_KEYS[key]
        if theirs not in state:
            raise UserError(f"the checkpoint has no {theirs}, which the experiment's text+image animator needs")
        if tuple(state[theirs].shape) != tuple(shaped.shape):
            raise UserError(f"{theirs} has shape {tuple(state[theirs].shape)}, the experiment's animator expects "
                            f"{tuple(shaped.shape)} (model.net.hidden {net['hidden']}, mapper_hidden "
                            f"{net['mapper_hidden']}, CLIP embedding {embed_dim}, {num_ws} W+ layers)")
        out[f"animator.{key}"] = _fp32(state[theirs])
    return out


def mapper_num_ws(state: Mapping[str, torch.Tensor], domain: Mapping[str, Any]) -> int:
    """The W+ layers the motion mapper writes (its last layer's rows / 512), checked against the
    generator's: 2 log2(resolution) - 2 for the domain's ``resolution`` (18 at 1024 px)."""
    rows = int(state["mapper.t_mapper.3.weight"].shape[0])
    if rows % W_DIM:
        raise UserError(f"mapper.t_mapper.3.weight has {rows} rows, not 512 x num_ws: not the authors' mapper")
    num_ws, resolution = rows // W_DIM, domain.get("resolution")
    if isinstance(resolution, int) and resolution >= 4 and resolution & (resolution - 1) == 0:
        expected = 2 * int(math.log2(resolution)) - 2
        if num_ws != expected:
            raise UserError(f"the mappers write {num_ws} W+ layers, but domain {domain.get('name')}'s "
                            f"{resolution} px generator has {expected}")
    return num_ws


def convert(path: str | Path, out: str | Path, experiment: str = "human_paper",
            overrides: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Write the authors' checkpoint ``path`` as our animator file ``out`` (atomic; nothing is written
    when anything does not fit). Returns {'path', 'summary' (one line), 'config', 'keys'}."""
    out = Path(out).expanduser()
    if out.suffix != ".safetensors":
        raise UserError(f"{out}: the output must end in .safetensors")
    ckpt = read_authors_checkpoint(path)
    state = ckpt["state_dict"]
    config = experiment_config(experiment, list(overrides or ()))
    clip_name = openai_activation(str(config["domain"]["clip"].get("model_name")))
    config["domain"]["clip"]["model_name"] = clip_name
    arch = ckpt.get("arch")
    if isinstance(arch, str) and arch.replace("/", "-") != clip_name.removesuffix("-quickgelu"):
        raise UserError(f"the checkpoint's CLIP is {arch}, the experiment's domain.clip.model_name is {clip_name}")
    finetune = config["train"]["clip_finetune"]
    weights, embed_dim = clip_weights(state, clip_name, finetune)
    num_ws = mapper_num_ws(state, config["domain"])
    weights.update(animator_weights(state, config["net"], embed_dim, num_ws))
    path = Path(path).expanduser()
    config["converted_from"] = {"file": path.name, "sha256": sha256_files([path]), "iter": ckpt.get("iter"),
                                "arch": arch}
    write_animator_file(out, config, weights, frozen_hashes={})
    branch = "text+image" if config["net"]["image_branch"] else "text-only"
    summary = (f"wrote {out}: the authors' {arch or clip_name} model at iteration {ckpt.get('iter')} as "
               f"experiment={experiment} ({branch}, {num_ws} W+ layers, {clip_name} fine-tuned: {finetune}, "
               f"{len(weights)} tensors); generator: {config['domain']['generator']['checkpoint']}")
    return {"path": out, "summary": summary, "config": config, "keys": sorted(weights)}


def _fp32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.is_floating_point() else t


def main(argv: Optional[Sequence[str]] = None) -> int:
    doc = __doc__.split("\n\n")
    parser = argparse.ArgumentParser(prog="python -m src.pipeline.authors_checkpoint", description=doc[0],
                                     epilog=doc[1] + "\n", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="the authors' checkpoint (ckpt/Iter_XXXXXX.pth of tools/dist_train.py)")
    parser.add_argument("output", help="the animator file to write (.safetensors), for animate.py checkpoint=")
    parser.add_argument("--experiment", default="human_paper", choices=EXPERIMENTS,
                        help="the authors' config it was trained with: human_paper (CelebA-HQ, text+image; "
                             "default) or metfaces_paper (text-only)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="overrides of the train config, e.g. domain.generator.checkpoint=/data/G.pkl")
    args = parser.parse_intermixed_args(argv)

    def command() -> None:
        done = convert(args.input, args.output, args.experiment, args.overrides)
        print(done["summary"])

    return exit_code(command)


if __name__ == "__main__":
    sys.exit(main())
