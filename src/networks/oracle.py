"""Attribute oracle: a small CNN that reads every synthetic-face parameter back from an image.

It is the objective judge of motion on the synthetic domain (expression reached, identity kept).
Outputs are the parameters normalised to [0, 1] (src.data.synthetic.PARAM_SPACE.normalize).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn as nn

from src.data.synthetic.params import NUM_PARAMS, PARAM_SPACE
from src.ops.resize import resize
from src.utils.errors import UserError
from src.utils.io import atomic_write, atomic_write_text


def _block(cin: int, cout: int) -> nn.Sequential:
    """Stride-2 downsampling block: conv3x3/2 - BN - SiLU - conv3x3 - BN - SiLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.SiLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.SiLU(inplace=True),
    )


class AttributeOracle(nn.Module):
    """CNN regressing normalised face parameters.

    resolution: input size the network runs at (power of two >= 16; other image sizes are resized);
    num_params: P; width: channels of the first stage (doubling per stage, capped at 8x).
    forward(img [N, 3, H, W] in [-1, 1]) -> [N, P] (normalised parameters, ~[0, 1]).
    The last feature map (4x4) is flattened rather than pooled: positions matter (gaze, yaw, which eye).
    """

    def __init__(self, resolution: int = 128, num_params: int = NUM_PARAMS, width: int = 32, hidden: int = 256):
        super().__init__()
        if resolution < 16 or resolution & (resolution - 1):
            raise UserError(f"oracle resolution must be a power of two >= 16, got {resolution}")
        self.init_kwargs = {"resolution": resolution, "num_params": num_params, "width": width, "hidden": hidden}
        self.resolution, self.num_params = resolution, num_params
        n_down = int(math.log2(resolution)) - 2  # down to 4x4
        chans = [min(width * 2 ** i, width * 8) for i in range(n_down)]
        layers, cin = [], 3
        for c in chans:
            layers.append(_block(cin, c))
            cin = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(cin * 16, hidden), nn.SiLU(inplace=True),
                                  nn.Linear(hidden, num_params))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.dim() != 4 or img.shape[1] != 3:
            raise UserError(f"oracle input must be [N, 3, H, W], got {tuple(img.shape)}")
        if img.shape[-2:] != (self.resolution, self.resolution):
            img = resize(img, (self.resolution, self.resolution), mode="bilinear", antialias=True)
        return self.head(self.features(img))


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


def _stem(path: str | Path) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".safetensors", ".json") else p


def save_oracle(oracle: AttributeOracle, path: str | Path) -> Path:
    """Write <path>.safetensors (weights) and <path>.json (init kwargs + parameter names) atomically.

    Returns the .safetensors path.
    """
    from safetensors.torch import save_file

    stem = _stem(path)
    weights = stem.with_name(stem.name + ".safetensors")
    meta = {"class": "AttributeOracle", "init_kwargs": oracle.init_kwargs, "param_names": PARAM_SPACE.names}
    state = {k: v.detach().cpu().contiguous() for k, v in oracle.state_dict().items()}
    with atomic_write(weights) as tmp:
        save_file(state, str(tmp))
    atomic_write_text(stem.with_name(stem.name + ".json"), json.dumps(meta, indent=2))
    return weights


def load_oracle(path: str | Path, device: str | torch.device = "cpu") -> AttributeOracle:
    """Load an oracle written by save_oracle (path with or without suffix); returns it in eval mode."""
    from safetensors.torch import load_file

    stem = _stem(path)
    weights, meta_path = stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")
    if not weights.is_file() or not meta_path.is_file():
        raise UserError(f"oracle weights not found: need {weights} and {meta_path}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        kwargs = dict(meta["init_kwargs"])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{meta_path} is not an oracle description ({e})") from None
    if meta.get("param_names") != PARAM_SPACE.names:
        raise UserError(f"{meta_path} was trained for other face parameters than this renderer's")
    oracle = AttributeOracle(**kwargs)
    try:
        oracle.load_state_dict(load_file(str(weights)))
    except RuntimeError as e:
        raise UserError(f"{weights} does not match its architecture: {str(e).splitlines()[0]}") from None
    return oracle.to(device).eval()
