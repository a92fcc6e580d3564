"""The embedded default renders what it rendered before any change of code layout: fixed seeds and
prompts through ``FaceAnimator`` against recorded W+ latents and frames (4x4 average-pooled to keep
the file small) in tests/data/golden_embedded.safetensors.

A change that is meant to change the output (new weights, a new method) rewrites the file:
``LGFA_WRITE_GOLDEN=1 python -m pytest tests/test_golden_embedded.py``.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import ROOT

GOLDEN = ROOT / "tests" / "data" / "golden_embedded.safetensors"
CASES = (  # seed, prompts, frames, decay, strength, identity projection (None: the file's own, 0.5)
    dict(seed=0, text="The person is smiling.", frames=6, decay="linear", strength=1.0, identity_projection=None),
    dict(seed=3, text="The person is winking.", frames=4, decay="sqrt", strength=1.2, identity_projection=0.0),
    dict(seed=5, text=["The person is smiling.", "The person is closing eyes."], frames=4, decay="linear",
         strength=1.0, identity_projection=None),
)
# float32 through ~20 layers of the generator: other CPUs' kernels (and other torch releases) sum in
# other orders, so the latents may differ by 128 units in the last place of their size
TOL = 128 * torch.finfo(torch.float32).eps
# the frames follow the latents through the identity projection, which amplifies a rounding-sized
# change of a face's latents up to ~50x (2e-6 of noise on w: frames move 9.6e-5 with projection 0.5,
# 8.8e-6 without), and a chained segment starts from the previous one's rounded latents: a
# thousandth of the [-1, 1] range (a quarter of an 8-bit level), far below any change of the method
TOL_FRAMES = 1e-3


def render_cases() -> dict[str, torch.Tensor]:
    from src.pipeline import FaceAnimator

    pipe = FaceAnimator.from_pretrained(ROOT / "assets" / "animator_synthetic.safetensors")
    out = {}
    for i, case in enumerate(CASES):
        case = dict(case)
        seed, prompts = case.pop("seed"), case.pop("text")
        if isinstance(prompts, str):  # one segment: the batched call and its latents
            ws = pipe.sample_latents(1, seed=seed)
            r = pipe.animate(ws, [prompts], num_frames=case["frames"], decay=case["decay"],
                             strength=case["strength"], identity_projection=case["identity_projection"])
            out[f"case{i}.ws"] = r["ws"][0]
        frames = pipe(seed=seed, text=prompts, **case)
        out[f"case{i}.frames"] = F.avg_pool2d(frames, 4)
    return {k: v.contiguous() for k, v in out.items()}


@pytest.mark.slow
def test_embedded_default_renders_the_recorded_frames():
    from safetensors.torch import load_file, save_file

    got = render_cases()
    if os.environ.get("LGFA_WRITE_GOLDEN") == "1":
        save_file(got, str(GOLDEN), metadata={"pool": "4"})
        pytest.skip(f"wrote {GOLDEN}")
    want = load_file(str(GOLDEN))
    assert got.keys() == want.keys()
    for key, expected in want.items():
        tol = TOL_FRAMES if key.endswith(".frames") else TOL * max(1.0, expected.abs().max().item())
        diff = (got[key] - expected).abs().max().item()
        assert diff <= tol, f"{key}: max |diff| {diff:.3g} > {tol:.3g}"
