"""Projection into W / W+ on a tiny generator, and latent file loading."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from src.inversion.projection import load_latent, noise_regularisation, project, w_statistics
from src.utils.errors import UserError
from tests.test_animator import tiny_generator


@pytest.fixture(scope="module")
def G():
    return tiny_generator(0)


@pytest.fixture(scope="module")
def target(G):
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, 16, generator=torch.Generator().manual_seed(5)), None, truncation_psi=0.7)
        return G.synthesis(ws, noise_mode="const")


def test_projection_reduces_error(G, target):
    w_avg, _ = w_statistics(G, 500)
    with torch.no_grad():
        start = torch.nn.functional.mse_loss(G.synthesis(w_avg.repeat(1, G.num_ws, 1), noise_mode="const"), target)
    out = project(G, target, steps=12, perceptual=None, num_w_avg_samples=500, seed=0)
    assert out["ws"].shape == (1, G.num_ws, G.w_dim) and out["image"].shape == target.shape
    assert out["mse"] < 0.5 * start.item()
    assert out["psnr"] == pytest.approx(10 * np.log10(4 / out["mse"]))
    with torch.no_grad():  # the returned image is what G renders from the returned ws
        again = G.synthesis(out["ws"], noise_mode="const")
    torch.testing.assert_close(again, out["image"])
    # deterministic given the seed
    a, b = (project(G, target, steps=3, perceptual=None, num_w_avg_samples=500, seed=0) for _ in range(2))
    torch.testing.assert_close(a["ws"], b["ws"])


def test_projection_w_mode_and_perceptual_and_noise(G, target):
    before = {k: v.clone() for k, v in G.state_dict().items()}

    def l1(x, y):
        return (x - y).abs().flatten(1).mean(1)

    out = project(G, target, steps=5, w_plus=False, perceptual=l1, optimize_noise=True, num_w_avg_samples=200)
    assert torch.equal(out["ws"][:, 0], out["ws"][:, -1])  # one w for every layer
    assert "lpips" in out and len(out["noises"]) > 0
    for k, v in G.state_dict().items():  # the caller's generator (noise maps included) is untouched
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in G.parameters())


def test_noise_regularisation_prefers_white_noise():
    g = torch.Generator().manual_seed(0)
    white = [torch.randn(16, 16, generator=g)]
    smooth = [torch.ones(16, 16)]
    assert noise_regularisation(white) < 0.05 < noise_regularisation(smooth)


def test_projection_bad_input(G):
    with pytest.raises(UserError, match="one RGB image"):
        project(G, torch.zeros(2, 3, 16, 16), steps=1, perceptual=None)
    with pytest.raises(UserError, match="pixel_weight"):
        project(G, torch.zeros(1, 3, 16, 16), steps=1, perceptual=None, pixel_weight=0)


def test_load_latent_formats(G, tmp_path):
    from safetensors.torch import save_file

    w = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    wp = np.random.default_rng(1).standard_normal((1, G.num_ws, 16)).astype(np.float32)
    np.save(tmp_path / "w.npy", w)
    np.savez(tmp_path / "w.npz", w=w, other=np.zeros(3))
    torch.save({"ws": torch.from_numpy(wp)}, tmp_path / "wp.pt")
    save_file({"latent": torch.from_numpy(wp[0])}, str(tmp_path / "wp.safetensors"))
    for name, ref in (("w.npy", np.repeat(w[:, None], G.num_ws, 1)), ("w.npz", np.repeat(w[:, None], G.num_ws, 1)),
                      ("wp.pt", wp), ("wp.safetensors", wp)):
        ws = load_latent(tmp_path / name, G)
        assert ws.shape == (1, G.num_ws, 16) and torch.equal(ws, torch.from_numpy(ref)), name
    assert load_latent(tmp_path / "w.npy", (3, 16)).shape == (1, 3, 16)


def test_load_latent_errors(G, tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((2, 16), np.float32))
    with pytest.raises(UserError, match=r"expected W \[1,16\] or W\+ \[1,6,16\]"):
        load_latent(tmp_path / "bad.npy", G)
    with pytest.raises(UserError, match="not found"):
        load_latent(tmp_path / "missing.npy", G)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="holds Python objects, which are never unpickled"):
        load_latent(tmp_path / "obj.npy", G)
    (tmp_path / "text.npy").write_text("1 2 3")
    with pytest.raises(UserError, match=r"not a \.npy array file \(no NumPy header\)"):
        load_latent(tmp_path / "text.npy", G)
    (tmp_path / "w.txt").write_text("1 2 3")
    with pytest.raises(UserError, match="unsupported"):
        load_latent(tmp_path / "w.txt", G)
    np.save(tmp_path / "nan.npy", np.full((1, 16), np.nan, np.float32))
    with pytest.raises(UserError, match="NaN"):
        load_latent(tmp_path / "nan.npy", G)
    np.savez(tmp_path / "two.npz", a=np.zeros((1, 16)), b=np.zeros((1, 16)))
    with pytest.raises(UserError, match="name the latent"):
        load_latent(tmp_path / "two.npz", G)
