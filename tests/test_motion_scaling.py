"""The shipped embedded animator, judged by its attribute oracle: a motion reaches as far at any
frame count, and `strength` scales it monotonically, alone and in a sequence ("X, then Y"): up to 1
through the recurrence's step sizes, above 1 along the offsets of the motion at 1."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import ROOT

ASSETS = ROOT / "assets"
SEEDS = (11, 12, 13, 14)


@pytest.fixture(scope="module")
def shipped():
    from src.embedded.oracle import load_oracle
    from src.pipeline import FaceAnimator

    torch.manual_seed(0)
    animator = FaceAnimator.from_pretrained(str(ASSETS / "animator_synthetic.safetensors"), device="cpu")
    oracle = load_oracle(ASSETS / "oracle_synthetic.safetensors")
    return animator, oracle, animator.sample_latents(seeds=list(SEEDS))


def _reach(oracle, frames: torch.Tensor, concept: str) -> float:
    """Mean oracle reach toward ``concept`` from the first to the last frame. frames [N,T,3,H,W]."""
    from src.embedded.oracle import oracle_scores

    with torch.no_grad():
        return float(oracle_scores(oracle, frames, concept)["reach"].mean())


def _video(animator, ws, prompt: str, **kw) -> torch.Tensor:
    return animator.animate(ws, [prompt] * ws.shape[0], identity_projection=0.0, **kw)["frames"]


def test_every_frame_count_reaches_as_far_as_sixteen(shipped):
    animator, oracle, ws = shipped
    prompt, concept = "The person is closing eyes.", "closing eyes"
    full = _reach(oracle, _video(animator, ws, prompt, num_frames=16), concept)
    assert full > 0.3
    for frames in (2, 3, 4, 8, 24):
        assert _reach(oracle, _video(animator, ws, prompt, num_frames=frames), concept) >= 0.9 * full, frames


def test_strength_scales_the_motion_monotonically(shipped):
    animator, oracle, ws = shipped
    reach = [_reach(oracle, _video(animator, ws, "The person is smiling.", num_frames=8, strength=s), "smiling")
             for s in (0.25, 0.5, 1.0, 1.25, 1.5)]
    assert all(a < b for a, b in zip(reach, reach[1:])), reach
    assert reach[0] > 0


def test_a_sequence_plays_each_motion_and_strength_scales_both(shipped):
    animator, oracle, _ = shipped
    first, second = [], []
    for strength in (0.5, 1.0, 1.5):
        videos = torch.stack([animator(seed=s, text="The person is smiling, then closing eyes", frames=6,
                                       strength=strength, identity_projection=0.0) for s in SEEDS])
        assert videos.shape[1] == 11  # 6 frames, then 5 more from the first motion's last frame
        first.append(_reach(oracle, videos[:, :6], "smiling"))
        second.append(_reach(oracle, videos[:, 5:], "closing eyes"))
    assert all(a < b for a, b in zip(first, first[1:])), first
    assert all(a < b for a, b in zip(second, second[1:])), second
    assert first[1] > 0.1 and second[1] > 0.3
