"""Attribute oracle: a small CNN that reads every synthetic-face parameter back from an image.

It is the objective judge of motion on the embedded domain: whether a prompt's attributes moved the
right way, how far toward the preset, and how far identity attributes drifted (:func:`oracle_scores`).
Outputs are the parameters normalised to [0, 1] (``PARAM_SPACE.normalize``). The same network type,
trained on the identity parameters only, is the identity-attribute reader (``src/identity/reader.py``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from src.embedded.conv_net import SmallConvNet
from src.embedded.params import NUM_PARAMS, PARAM_SPACE, observable_mask
from src.embedded.vocabulary import apply_preset, get
from src.networks.weights_file import build_checked, load_net_state, net_files, read_net_files, save_net
from src.utils.errors import UserError


class AttributeOracle(SmallConvNet):
    """CNN regressing normalised face parameters.

    resolution: input size the network runs at (power of two >= 16; other image sizes are resized);
    num_params: P; width: channels of the first stage (doubling per stage, capped at 8x).
    forward(img [N, 3, H, W] in [-1, 1]) -> [N, P] (normalised parameters, ~[0, 1]).
    The last feature map (4x4) is flattened rather than pooled: positions matter (gaze, yaw, which eye).
    """

    def __init__(self, resolution: int = 128, num_params: int = NUM_PARAMS, width: int = 32, hidden: int = 256):
        super().__init__(resolution, width, hidden, num_params, "oracle")
        self.init_kwargs = {"resolution": resolution, "num_params": num_params, "width": width, "hidden": hidden}
        self.num_params = num_params

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.trunk_and_head(img)


@torch.no_grad()
def oracle_attributes(oracle: AttributeOracle, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Read attributes in natural units: images [N, 3, H, W] in [-1, 1] -> {name: [N]}.

    Predictions are clamped into each parameter's range and discrete ones rounded.
    """
    if oracle.num_params != len(PARAM_SPACE):
        raise UserError(f"oracle predicts {oracle.num_params} parameters, the renderer has {len(PARAM_SPACE)}")
    was_training = oracle.training
    oracle.eval()
    try:
        unit = oracle(images).float()
    finally:
        oracle.train(was_training)
    natural = PARAM_SPACE.clamp(PARAM_SPACE.denormalize(unit))
    return {name: natural[:, i] for i, name in enumerate(PARAM_SPACE.names)}


def save_oracle(oracle: AttributeOracle, path: str | Path, param_names: list[str] | None = None,
                dtype: torch.dtype | None = None) -> Path:
    """Write <path>.safetensors (weights) and <path>.json (init kwargs + parameter names) atomically.

    param_names: the parameters the outputs regress, in order (default: every renderer parameter;
    an identity-attribute reader stores PARAM_SPACE.identity_names); dtype: storage dtype of the
    floating tensors (loading casts back). Returns the .safetensors path.
    """
    names = list(param_names) if param_names is not None else PARAM_SPACE.names
    if len(names) != oracle.num_params:
        raise UserError(f"{len(names)} parameter names for an oracle of {oracle.num_params} outputs")
    meta = {"class": "AttributeOracle", "init_kwargs": oracle.init_kwargs, "param_names": names}
    return save_net(oracle, path, meta, dtype=dtype)


def load_attribute_net(path: str | Path, device: str | torch.device = "cpu",
                       what: str = "oracle") -> tuple[AttributeOracle, list[str]]:
    """(network in eval mode, the parameter names of its outputs) of a file written by save_oracle;
    the names must be renderer parameters in the renderer's order (a subset is fine). ``what`` names
    the network in errors."""
    meta, weights = read_net_files(path, what)
    names = meta.get("param_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise UserError(f"{weights.with_suffix('.json')} lists no parameter names")
    if [n for n in PARAM_SPACE.names if n in names] != names:
        raise UserError(f"{weights.with_suffix('.json')} was trained for other face parameters than this renderer's")
    kwargs = meta["init_kwargs"]
    if kwargs.get("num_params", len(names)) != len(names):
        raise UserError(f"{weights.with_suffix('.json')}: {len(names)} parameter names for "
                        f"{kwargs.get('num_params')} outputs")
    oracle = build_checked(lambda: AttributeOracle(**{**kwargs, "num_params": len(names)}), weights, "oracle")
    return load_net_state(oracle, weights).to(device).eval(), names


def load_oracle(path: str | Path, device: str | torch.device = "cpu") -> AttributeOracle:
    """Load an oracle written by save_oracle (path with or without suffix) that reads every renderer
    parameter (the judge); returns it in eval mode."""
    oracle, names = load_attribute_net(path, device)
    if names != PARAM_SPACE.names:
        raise UserError(f"{net_files(path)[1]} reads {len(names)} of the renderer's {len(PARAM_SPACE)} "
                        "parameters: the oracle must read them all")
    return oracle


def identity_reading(path: str | Path, device: str | torch.device = "cpu"):
    """frames [N,3,H,W] -> the oracle's readings of the identity parameters [N, 20]: the identity
    metric ``domain.identity_metric=oracle`` (the oracle at ``path``)."""
    oracle = load_oracle(path, device)
    mask = PARAM_SPACE.mask("identity", device=device)
    return lambda x: oracle(x)[:, mask]


def preset_reach(first: torch.Tensor, last: torch.Tensor, concept) -> tuple[torch.Tensor, torch.Tensor]:
    """How far readings moved toward a concept's preset: the reach of :func:`oracle_scores`.

    first, last: [N, P] oracle outputs (normalised parameters). Returns (reach [N]: the change
    first -> last projected on the required change, as a fraction of it (1 = at the preset);
    required [N, P]: the change from ``first`` to the preset at strength 1, 0 outside the preset's
    parameters)."""
    start_nat = PARAM_SPACE.clamp(PARAM_SPACE.denormalize(first))
    target_unit = PARAM_SPACE.normalize(apply_preset(start_nat, concept, 1.0))
    required = target_unit - first                             # [N,P], only preset params are non-zero
    preset = torch.zeros(required.shape[1], dtype=torch.bool, device=required.device)
    for name in get(concept).preset:
        preset[PARAM_SPACE.idx(name)] = True
    required = torch.where(preset, required, torch.zeros_like(required))
    norm2 = required.pow(2).sum(1)
    reach = ((last - first) * required).sum(1) / norm2.clamp_min(1e-8)  # fraction of the required change
    return reach, required


def oracle_scores(oracle, frames: torch.Tensor, concept: str) -> dict[str, torch.Tensor]:
    """Per-video oracle scores. frames [N,T,3,H,W]; returns tensors [N], and
    identity_drift_by_attribute / identity_observable [N, identity attributes] (PARAM_SPACE.identity_names).

    Identity drift skips what the input face cannot show (observable_mask of frame 0: the frame
    colour of absent glasses), where the oracle's reading is untrained noise."""
    n, t = frames.shape[:2]
    all_unit = oracle(frames.reshape(n * t, *frames.shape[2:])).float().reshape(n, t, -1)  # one pass
    first = all_unit[:, 0]
    reach, required = preset_reach(first, all_unit[:, -1], concept)
    norm2 = required.pow(2).sum(1)
    identity = PARAM_SPACE.mask("identity", device=all_unit.device)
    # discrete attributes (glasses on/off, hair style) change only when their class changes: the
    # oracle regresses class indices, and a reading between two classes is uncertainty, not a change
    # (a class flip counts as the whole range, as a continuous attribute moved end to end)
    read = PARAM_SPACE.normalize(PARAM_SPACE.clamp(PARAM_SPACE.denormalize(all_unit)))
    discrete = torch.tensor([s.discrete for s in PARAM_SPACE.specs], device=all_unit.device)
    read = torch.where(discrete, read, all_unit)
    seen = observable_mask(first.clamp(0, 1))[:, identity]

    def max_change(step: torch.Tensor) -> torch.Tensor:  # [N,T,P] -> [N, identity params], 0 where unseen
        return torch.where(seen, step.amax(dim=1)[:, identity], 0.0)

    step = (read - read[:, :1]).abs()
    drift = max_change(torch.where(discrete & (step > 0), torch.ones_like(step), step))
    # the raw readings, discrete ones too (no class rounding), for comparison
    raw = max_change((all_unit - all_unit[:, :1]).abs())
    valid = norm2 > 0.05 ** 2  # faces already at the target have nothing to show
    return {"reach": reach, "right_way": (reach > 0).float(), "valid": valid.float(),
            "identity_drift": drift.sum(1) / seen.sum(1).clamp_min(1), "identity_drift_max": drift.amax(1),
            "identity_drift_raw": raw.sum(1) / seen.sum(1).clamp_min(1),
            "identity_drift_by_attribute": drift, "identity_observable": seen.float()}
