"""StyleGAN2-ADA networks (CPU, ref ops): official names/shapes, w assignment, truncation, noise,
fp16/clamp rules, modulated-conv paths, discriminator, safetensors format and the convert CLI."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from src.ops import upfirdn2d
from src.stylegan import Discriminator, Generator, load_generator, save_generator
from src.stylegan.convert import main as convert_main
from src.stylegan.layers import conv2d_resample, modulated_conv2d
from src.stylegan.synthesis import SynthesisLayer, ToRGBLayer
from src.utils.errors import UserError
from tests.fixtures_stylegan import official_pickle_bytes, tiny_generator

ROOT = Path(__file__).resolve().parents[1]


def config_b_expected():
    """The doc's config (b) table, in the doc's order: name -> (shape, kind)."""
    out = {}
    ch = {4: 128, 8: 128, 16: 128, 32: 128, 64: 64}

    def layer(prefix, cin, cout, res):
        out[f"{prefix}.weight"] = ([cout, cin, 3, 3], "param")
        out[f"{prefix}.noise_strength"] = ([], "param")
        out[f"{prefix}.bias"] = ([cout], "param")
        out[f"{prefix}.resample_filter"] = ([4, 4], "buffer")
        out[f"{prefix}.noise_const"] = ([res, res], "buffer")
        out[f"{prefix}.affine.weight"] = ([cin, 512], "param")
        out[f"{prefix}.affine.bias"] = ([cin], "param")

    def torgb(prefix, cin):
        out[f"{prefix}.weight"] = ([3, cin, 1, 1], "param")
        out[f"{prefix}.bias"] = ([3], "param")
        out[f"{prefix}.affine.weight"] = ([cin, 512], "param")
        out[f"{prefix}.affine.bias"] = ([cin], "param")

    out["synthesis.b4.const"] = ([128, 4, 4], "param")
    out["synthesis.b4.resample_filter"] = ([4, 4], "buffer")
    layer("synthesis.b4.conv1", 128, 128, 4)
    torgb("synthesis.b4.torgb", 128)
    for res in (8, 16, 32, 64):
        out[f"synthesis.b{res}.resample_filter"] = ([4, 4], "buffer")
        layer(f"synthesis.b{res}.conv0", ch[res // 2], ch[res], res)
        layer(f"synthesis.b{res}.conv1", ch[res], ch[res], res)
        torgb(f"synthesis.b{res}.torgb", ch[res])
    out["mapping.w_avg"] = ([512], "buffer")
    for k in range(8):
        out[f"mapping.fc{k}.weight"] = ([512, 512], "param")
        out[f"mapping.fc{k}.bias"] = ([512], "param")
    return out


def test_config_b_state_dict_names_shapes_order():
    G = Generator(z_dim=512, w_dim=512, img_resolution=64, img_channels=3, mapping_kwargs=dict(num_layers=8),
                  synthesis_kwargs=dict(channel_base=4096, channel_max=128, num_fp16_res=4, conv_clamp=256))
    expected = config_b_expected()
    sd = G.state_dict()
    assert len(sd) == 106 == len(expected)
    assert list(sd) == list(expected)
    params = dict(G.named_parameters())
    for name, (shape, kind) in expected.items():
        assert list(sd[name].shape) == shape, name
        assert (name in params) == (kind == "param"), name
    f = torch.outer(torch.tensor([1., 3, 3, 1]), torch.tensor([1., 3, 3, 1]))
    assert torch.allclose(sd["synthesis.b8.conv0.resample_filter"], f / f.sum())
    assert G.num_ws == 10 and G.synthesis.b4.torgb.weight_gain == pytest.approx(1 / math.sqrt(128))
    # fp16 flags: blocks with r >= max(2**(log2(64)+1-4), 8) = 8
    assert [getattr(G.synthesis, f"b{r}").use_fp16 for r in (4, 8, 16, 32, 64)] == [False, True, True, True, True]
    assert torch.all(sd["synthesis.b8.conv0.affine.bias"] == 1)


def test_conditional_shapes_and_kwargs_json():
    G = Generator(z_dim=24, c_dim=5, w_dim=32, img_resolution=16,
                  mapping_kwargs=dict(num_layers=3), synthesis_kwargs=dict(channel_base=256, channel_max=32))
    sd = G.state_dict()
    assert sd["mapping.embed.weight"].shape == (32, 5) and sd["mapping.embed.bias"].shape == (32,)
    assert sd["mapping.fc0.weight"].shape == (32, 24 + 32)
    kw = json.loads(json.dumps(G.init_kwargs))
    assert kw["mapping_kwargs"] == {"num_layers": 3} and kw["c_dim"] == 5
    G2 = Generator(**kw)
    assert {k: v.shape for k, v in G2.state_dict().items()} == {k: v.shape for k, v in sd.items()}
    assert (G.z_dim, G.c_dim, G.w_dim, G.num_ws, G.img_resolution, G.img_channels) == (24, 5, 32, 6, 16, 3)
    # z and embed(c) are normalised separately: scaling c does not change ws
    z, c = torch.randn(2, 24), torch.randn(2, 5)
    assert torch.allclose(G.mapping(z, c), G.mapping(z, 7 * c), atol=1e-5)
    with pytest.raises(UserError):
        G.mapping(z, None)


def test_w_index_assignment():
    """b4.conv1 <- w0, b4.torgb <- w1, block 2^k: conv0 <- w[2k-5], conv1 <- w[2k-4], torgb <- w[2k-3]."""
    G = tiny_generator(res=32)
    seen = {}
    hooks = []
    for name, m in G.synthesis.named_modules():
        if isinstance(m, (SynthesisLayer, ToRGBLayer)):
            hooks.append(m.affine.register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, inp[0])))
    ws = torch.randn(2, G.num_ws, G.w_dim)
    G.synthesis(ws, noise_mode="const")
    for h in hooks:
        h.remove()
    expect = {"b4.conv1": 0, "b4.torgb": 1}
    for k in range(3, 6):
        expect.update({f"b{2**k}.conv0": 2 * k - 5, f"b{2**k}.conv1": 2 * k - 4, f"b{2**k}.torgb": 2 * k - 3})
    assert set(seen) == set(expect)
    for name, idx in expect.items():
        assert torch.equal(seen[name], ws[:, idx]), name
    assert G.num_ws == 2 * 5 - 2


def test_truncation_psi_and_cutoff():
    G = tiny_generator(res=16)
    z = torch.randn(3, G.z_dim)
    ws = G.mapping(z, None)
    assert torch.allclose(G.mapping(z, None, truncation_psi=0), G.mapping.w_avg.expand_as(ws))
    half = G.mapping(z, None, truncation_psi=0.5, truncation_cutoff=2)
    assert torch.allclose(half[:, :2], G.mapping.w_avg + 0.5 * (ws[:, :2] - G.mapping.w_avg), atol=1e-6)
    assert torch.equal(half[:, 2:], ws[:, 2:])
    img = G(z, None, truncation_psi=0, noise_mode="const")
    assert torch.allclose(img[0], img[2], atol=1e-5)  # all samples collapse to w_avg


def test_update_emas_tracks_w_avg():
    G = tiny_generator(res=8)
    before = G.mapping.w_avg.clone()
    z = torch.randn(8, G.z_dim)
    G.mapping(z, None)
    assert torch.equal(G.mapping.w_avg, before)
    w = G.mapping(z, None, update_emas=True)[:, 0]
    assert torch.allclose(G.mapping.w_avg, before * 0.995 + w.mean(0) * 0.005, atol=1e-6)


def test_noise_modes():
    G = tiny_generator(res=16)
    ws = G.mapping(torch.randn(2, G.z_dim), None)
    const1 = G.synthesis(ws, noise_mode="const")
    assert torch.equal(const1, G.synthesis(ws, noise_mode="const"))
    none = G.synthesis(ws, noise_mode="none")
    assert not torch.allclose(none, const1, atol=1e-4)
    r1, r2 = G.synthesis(ws, noise_mode="random"), G.synthesis(ws, noise_mode="random")
    assert not torch.allclose(r1, r2, atol=1e-4)
    with pytest.raises(UserError):
        G.synthesis(ws, noise_mode="bogus")
    with pytest.raises(UserError):
        G.synthesis(ws[:, :-1])


def test_fp16_flag_on_cpu_runs_fp32_with_clamp():
    clamp = 0.05
    G16 = tiny_generator(res=16, num_fp16_res=2, conv_clamp=clamp)
    G32 = tiny_generator(res=16, num_fp16_res=0, conv_clamp=clamp)
    Gnc = tiny_generator(res=16, num_fp16_res=2)
    assert G16.synthesis.b16.use_fp16 and G16.synthesis.b8.use_fp16 and not G16.synthesis.b4.use_fp16
    outs = []
    hooks = [m.register_forward_hook(lambda mod, i, o: outs.append(o)) for m in G16.modules()
             if isinstance(m, (SynthesisLayer, ToRGBLayer))]
    ws = G16.mapping(torch.randn(2, G16.z_dim), None)
    img = G16.synthesis(ws, noise_mode="const")
    for h in hooks:
        h.remove()
    assert img.dtype == torch.float32 and all(o.dtype == torch.float32 for o in outs)
    assert max(float(o.detach().abs().max()) for o in outs) <= clamp + 1e-7  # clamp after the act gain
    assert torch.equal(img, G32.synthesis(ws, noise_mode="const"))  # fp16 flag: no effect on CPU
    assert not torch.allclose(img, Gnc.synthesis(ws, noise_mode="const"), atol=1e-3)


def test_fused_and_nonfused_modconv_agree():
    G = tiny_generator(res=16)
    ws = G.mapping(torch.randn(3, G.z_dim), None)
    a = G.synthesis(ws, noise_mode="const", fused_modconv=True)
    b = G.synthesis(ws, noise_mode="const", fused_modconv=False)
    assert torch.allclose(a, b, atol=1e-5)
    # batch 1 (fused by default in eval) == the same sample in a batch (non-fused)
    assert torch.allclose(G.synthesis(ws[1:2], noise_mode="const"), b[1:2], atol=1e-5)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("fused", [False, True])
def test_modulated_conv_matches_per_sample_definition(k, demodulate, channels_last, fused):
    torch.manual_seed(1)
    x, wt, s = torch.randn(2, 6, 8, 8), torch.randn(5, 6, k, k), torch.randn(2, 6)
    noise = torch.randn(8, 8)
    xin = x.to(memory_format=torch.channels_last) if channels_last else x
    y = modulated_conv2d(xin, wt, s, noise=noise, padding=k // 2, demodulate=demodulate, fused_modconv=fused)
    for n in range(2):
        w = wt * s[n][None, :, None, None]
        if demodulate:
            w = w / w.square().sum([1, 2, 3], keepdim=True).add(1e-8).sqrt()
        assert torch.allclose(y[n:n + 1], F.conv2d(x[n:n + 1], w, padding=k // 2) + noise, atol=1e-5)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("mode", ["up", "down"])
def test_conv2d_resample_matches_reference_definition(k, mode):
    """Fast paths == upsample/pad/filter (gain up^2), TRUE conv (up) or correlation + decimation (down)."""
    torch.manual_seed(2)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    x, w = torch.randn(2, 4, 8, 8), torch.randn(5, 4, k, k)
    p = k // 2
    if mode == "up":
        y = conv2d_resample(x, w, f, up=2, padding=p)
        z = upfirdn2d.upfirdn2d(x, f, up=2, padding=[p + 2, p + 1] * 2, gain=4)
        ref = F.conv2d(z, w.flip([2, 3]))
        assert y.shape == (2, 5, 16, 16)
    else:
        y = conv2d_resample(x, w, f, down=2, padding=p)
        z = upfirdn2d.upfirdn2d(x, f, padding=[p + 1, p + 1] * 2)
        ref = F.conv2d(z, w)[:, :, ::2, ::2]
        assert y.shape == (2, 5, 4, 4)
    assert torch.allclose(y, ref, atol=1e-5)


@pytest.mark.parametrize("arch", ["orig", "skip", "resnet"])
def test_generator_architectures(arch):
    G = tiny_generator(res=16, architecture=arch)
    assert G.num_ws == 6
    img = G(torch.randn(2, G.z_dim), None, noise_mode="const")
    assert img.shape == (2, 3, 16, 16) and torch.isfinite(img).all()
    assert hasattr(G.synthesis.b8, "torgb") == (arch == "skip")
    assert hasattr(G.synthesis.b16, "skip") == (arch == "resnet")


def test_generator_bad_kwargs_are_user_errors():
    with pytest.raises(UserError, match="architecture"):
        Generator(img_resolution=16, synthesis_kwargs=dict(architecture="fancy"))
    with pytest.raises(UserError, match="magnitude_ema_beta"):
        Generator(img_resolution=16, synthesis_kwargs=dict(magnitude_ema_beta=0.999))
    with pytest.raises(UserError, match="power of two"):
        Generator(img_resolution=48)
    with pytest.raises(UserError):
        Discriminator(img_resolution=16, architecture="fancy")


def test_resolution_4_and_odd_dims():
    G = Generator(z_dim=7, w_dim=12, img_resolution=4, img_channels=1, mapping_kwargs=dict(num_layers=1),
                  synthesis_kwargs=dict(channel_base=64, channel_max=16))
    assert G.num_ws == 2 and G(torch.randn(2, 7)).shape == (2, 1, 4, 4)


@pytest.mark.parametrize("arch", ["resnet", "skip", "orig"])
def test_discriminator_forward_and_r1_double_backward(arch):
    D = Discriminator(c_dim=0, img_resolution=16, img_channels=3, architecture=arch, channel_base=256,
                      channel_max=32, num_fp16_res=2, conv_clamp=256)
    img = torch.randn(4, 3, 16, 16, requires_grad=True)
    logits = D(img, None)
    assert logits.shape == (4, 1)
    (grad,) = torch.autograd.grad(logits.sum(), img, create_graph=True)
    r1 = grad.square().sum([1, 2, 3]).mean()
    r1.backward()
    assert D.b16.conv0.weight.grad is not None and D.b16.conv0.weight.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in D.parameters() if p.grad is not None)


def test_discriminator_names_conditional():
    D = Discriminator(c_dim=4, img_resolution=16, channel_base=256, channel_max=32)
    sd = D.state_dict()
    assert sd["b16.fromrgb.weight"].shape == (16, 3, 1, 1)
    assert sd["b16.skip.weight"].shape == (32, 16, 1, 1) and "b16.skip.bias" not in sd
    assert sd["b4.conv.weight"].shape == (32, 33, 3, 3)
    assert sd["b4.fc.weight"].shape == (32, 32 * 16) and sd["b4.out.weight"].shape == (32, 32)
    assert sd["mapping.embed.weight"].shape == (32, 4) and "mapping.w_avg" not in sd
    assert [k for k in sd if k.startswith("mapping.fc")][-1] == "mapping.fc7.bias"
    assert D(torch.randn(2, 3, 16, 16), torch.randn(2, 4)).shape == (2, 1)
    json.dumps(D.init_kwargs)


def test_minibatch_std_groups():
    from src.stylegan.discriminator import MinibatchStdLayer

    x = torch.randn(4, 2, 3, 3)
    y = MinibatchStdLayer(group_size=2)(x)
    # group_size 2 on 4 samples: groups {0, 2} and {1, 3}
    sd0 = ((x[[0, 2]] - x[[0, 2]].mean(0)).square().mean(0) + 1e-8).sqrt().mean()
    assert y.shape == (4, 3, 3, 3) and torch.allclose(y[0, 2], sd0.expand(3, 3)) and torch.allclose(y[2, 2], y[0, 2])


def test_safetensors_round_trip_fp32_exact_fp16_close(tmp_path):
    from safetensors import safe_open

    G = tiny_generator(res=16, c_dim=3)
    z, c = torch.randn(2, G.z_dim), torch.randn(2, 3)
    ref = G(z, c, noise_mode="const")
    p32 = save_generator(G, tmp_path / "g32.safetensors")
    assert p32 == tmp_path / "g32.safetensors" and (tmp_path / "g32.json").exists()
    meta = json.loads((tmp_path / "g32.json").read_text())
    assert meta["format"] == "lgfa-stylegan2" and meta["version"] == 1 and meta["init_kwargs"] == G.init_kwargs
    G32 = load_generator(p32)
    assert all(torch.equal(a, b) for a, b in zip(G.state_dict().values(), G32.state_dict().values()))
    assert torch.equal(G32(z, c, noise_mode="const"), ref)
    p16 = save_generator(G, tmp_path / "g16", fp16=True)
    with safe_open(str(p16), "pt") as f:
        assert f.get_tensor("mapping.fc0.weight").dtype == torch.float16
        assert f.get_tensor("mapping.w_avg").dtype == torch.float32
        assert f.get_tensor("synthesis.b8.conv1.noise_const").dtype == torch.float32
    G16 = load_generator(p16)
    assert G16.mapping.fc0.weight.dtype == torch.float32
    assert torch.equal(G16.mapping.w_avg, G.mapping.w_avg)
    assert torch.allclose(G16(z, c, noise_mode="const"), ref, atol=0.05)
    assert not list(tmp_path.glob("*.tmp*"))


def test_safetensors_errors(tmp_path):
    G = tiny_generator(res=8)
    p = save_generator(G, tmp_path / "g.safetensors")
    data = p.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "cut.json").write_text((tmp_path / "g.json").read_text())
    with pytest.raises(UserError, match="cut.safetensors.*truncated"):
        load_generator(tmp_path / "cut.safetensors")
    (tmp_path / "nojson.safetensors").write_bytes(data)
    with pytest.raises(UserError, match="sidecar"):
        load_generator(tmp_path / "nojson.safetensors")
    other = tiny_generator(res=16)
    (tmp_path / "g.json").write_text(json.dumps({"format": "lgfa-stylegan2", "version": 1,
                                                  "init_kwargs": other.init_kwargs}))
    with pytest.raises(UserError, match="do not match"):
        load_generator(p)
    with pytest.raises(UserError, match="not found"):
        load_generator(tmp_path / "missing.pkl")
    (tmp_path / "junk.bin").write_bytes(b"hello world, not a model")
    with pytest.raises(UserError, match="unrecognised"):
        load_generator(tmp_path / "junk.bin")


def test_convert_cli_round_trip_and_error_exit(tmp_path, capsys):
    G = tiny_generator(res=16)
    pkl = tmp_path / "snap.pkl"
    pkl.write_bytes(official_pickle_bytes(G, protocol=4))
    out = tmp_path / "out.safetensors"
    assert convert_main([str(pkl), str(out), "--fp16"]) == 0
    assert "wrote" in capsys.readouterr().out
    ws = G.mapping(torch.randn(2, G.z_dim), None)
    G2 = load_generator(out)
    assert torch.allclose(G2.synthesis(ws, noise_mode="const"), G.synthesis(ws, noise_mode="const"), atol=0.05)
    assert convert_main([str(out), str(tmp_path / "again.safetensors")]) == 0
    assert torch.equal(load_generator(tmp_path / "again.safetensors").mapping.fc0.weight, G2.mapping.fc0.weight)
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(pkl.read_bytes()[:5000])
    assert convert_main([str(cut), str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cut.pkl" in err and err.count("\n") == 1
    # the real entry point: exit code 2 and a one-line message, nothing written
    proc = subprocess.run([sys.executable, "-m", "src.stylegan.convert", str(cut), str(tmp_path / "y.safetensors")],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "y.safetensors").exists() and not (tmp_path / "x.safetensors").exists()


def test_fp16_modconv_prenormalisation_avoids_overflow():
    """Large styles would overflow fp16 (x*s then conv > 65504); the pre-normalised path stays finite."""
    torch.manual_seed(0)
    x, w, s = torch.randn(2, 64, 8, 8), torch.randn(32, 64, 3, 3), torch.randn(2, 64) * 1e3
    naive = F.conv2d(x.half() * s.half()[:, :, None, None], w.half(), padding=1)
    assert torch.isinf(naive).any()
    ref = modulated_conv2d(x, w, s, padding=1)
    for fused in (False, True):
        y = modulated_conv2d(x.half(), w, s, padding=1, fused_modconv=fused)
        assert y.dtype == torch.float16 and torch.isfinite(y).all()
        assert torch.allclose(y.float(), ref, atol=0.02)


def test_fp16_code_path_forced_on_cpu(monkeypatch):
    """The CUDA fp16 path (fp16 blocks, channels_last, pre-normalised modconv, clamp) run on CPU."""
    from src.stylegan import layers  # the blocks read layers.FP16_DEVICE_TYPES at call time

    G = tiny_generator(res=32, num_fp16_res=2, conv_clamp=256, fp16_channels_last=True)
    ws = G.mapping(torch.randn(3, G.z_dim), None).detach()
    with torch.no_grad():
        ref = G.synthesis(ws, noise_mode="const")
        monkeypatch.setattr(layers, "FP16_DEVICE_TYPES", {"cuda", "cpu"})
        dtypes = {}
        hooks = [getattr(G.synthesis, f"b{r}").conv1.register_forward_hook(
            lambda m, i, o, r=r: dtypes.__setitem__(r, o.dtype)) for r in (8, 16, 32)]
        out = G.synthesis(ws, noise_mode="const")
        one = G.synthesis(ws[:1], noise_mode="const")  # fused path in fp16
        for h in hooks:
            h.remove()
        forced32 = G.synthesis(ws, noise_mode="const", force_fp32=True)
    assert dtypes == {8: torch.float32, 16: torch.float16, 32: torch.float16}
    assert out.dtype == torch.float32 and torch.equal(forced32, ref)
    scale = 1 + float(ref.abs().max())
    assert float((out - ref).abs().max()) < 0.02 * scale and float((one - ref[:1]).abs().max()) < 0.02 * scale
    D = Discriminator(img_resolution=32, channel_base=512, channel_max=32, num_fp16_res=2, conv_clamp=256,
                      block_kwargs=dict(fp16_channels_last=True))
    img = torch.randn(4, 3, 32, 32, requires_grad=True)
    logits = D(img)
    (grad,) = torch.autograd.grad(logits.sum(), img, create_graph=True)
    grad.square().sum().backward()
    assert logits.dtype == torch.float32 and torch.isfinite(D.b32.conv0.weight.grad).all()
    monkeypatch.setattr(layers, "FP16_DEVICE_TYPES", {"cuda"})
    assert torch.allclose(D(img.detach()), logits.detach(), atol=0.05)
