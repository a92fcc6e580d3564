"""Animator losses against values computed by hand on tiny examples."""
from __future__ import annotations

import math

import pytest
import torch

from src.losses.animator import (contrastive_clip_loss, cosine_clip_loss, endpoint_loss, identity_loss,
                                 latent_reg_loss, lpips_identity_loss, similarity_matrix, smoothness_loss,
                                 total_loss)

IMG = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
TXT = torch.tensor([[1.0, 0.0], [0.6, 0.8]])  # s = [[1, 0.6], [0, 0.8]]


def test_similarity_matrix():
    torch.testing.assert_close(similarity_matrix(IMG * 3, TXT), torch.tensor([[1.0, 0.6], [0.0, 0.8]]))


def test_contrastive_by_hand_includes_j_equals_i():
    tau = 0.5
    # row 0: s00 = 1, s01 = 0.6 -> log(1 + e^0 + e^{(0.6-1)/0.5}); row 1: s11 = 0.8, s10 = 0
    row0 = math.log(1 + 1 + math.exp(-0.8))
    row1 = math.log(1 + math.exp(-1.6) + 1)
    assert contrastive_clip_loss(IMG, TXT, tau).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_contrastive_minimum_is_log2_and_it_prefers_matching_prompts():
    e = torch.eye(3)
    assert contrastive_clip_loss(e, e, 0.07).item() == pytest.approx(math.log(2 + 2 * math.exp(-1 / 0.07)), rel=1e-6)
    swapped = e[[1, 0, 2]]
    assert contrastive_clip_loss(swapped, e, 0.07) > contrastive_clip_loss(e, e, 0.07) + 1.0


def test_contrastive_is_stable_for_small_tau():
    v = contrastive_clip_loss(torch.eye(2)[[1, 0]], torch.eye(2), tau=1e-4)
    assert torch.isfinite(v) and v.item() == pytest.approx(1e4, rel=1e-3)  # log(1 + 1 + e^{1e4}) ~ 1e4


def test_cosine_by_hand():
    assert cosine_clip_loss(IMG, TXT).item() == pytest.approx(((1 - 1) + (1 - 0.8)) / 2)


def test_smoothness_endpoint_latent_by_hand():
    # one latent entry per frame: offsets 0, 1, 3, 6 -> first differences 1, 2, 3 -> second differences 1, 1
    off = torch.tensor([0.0, 1.0, 3.0, 6.0]).view(1, 4, 1, 1)
    assert smoothness_loss(off).item() == pytest.approx(1.0)
    assert smoothness_loss(torch.arange(4.0).view(1, 4, 1, 1)).item() == 0.0  # constant velocity
    assert smoothness_loss(off[:, :2]).item() == 0.0  # T < 3
    assert endpoint_loss(off).item() == pytest.approx(36.0)
    w = torch.zeros(1, 1, 1)
    ws = torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)
    assert latent_reg_loss(ws, w).item() == pytest.approx((1 + 9) / 2)


def test_lpips_identity_loss_by_hand():
    def l1(x, y):
        return (x - y).abs().flatten(1).mean(1)

    img = torch.zeros(2, 3, 2, 2)
    first, last = torch.full_like(img, 0.1), torch.full_like(img, 0.5)
    assert lpips_identity_loss(l1, img, first, last).item() == pytest.approx(0.6)


def test_identity_loss_by_hand():
    net = torch.nn.Flatten()
    image = torch.zeros(1, 3, 1, 1)
    image[0, 0] = 1
    frames = torch.zeros(1, 2, 3, 1, 1)
    frames[0, 0, 0] = 2   # same direction: 1 - cos = 0
    frames[0, 1, 1] = 1   # orthogonal: 1 - cos = 1
    assert identity_loss(net, frames, image).item() == pytest.approx(0.5)


def test_total_loss_weights_and_zero_weights():
    terms = {"a": torch.tensor(2.0), "b": torch.tensor(3.0), "c": torch.tensor(float("nan"))}
    assert total_loss(terms, {"a": 0.5, "b": 2.0, "c": 0.0}).item() == pytest.approx(7.0)
    with pytest.raises(ValueError):
        total_loss(terms, {"a": 0.0})
