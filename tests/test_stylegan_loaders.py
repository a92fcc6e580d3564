"""Loaders: official-layout NVIDIA pickles (restricted unpickler), malicious pickles, rosinality
checkpoints (both layouts, doc key tables, independent rosinality-style forward)."""
from __future__ import annotations

import argparse
import builtins
import os
import pickle
import pickletools
import warnings

import pytest
import torch

from src.stylegan import Discriminator, Generator, load_generator
from src.stylegan.loaders import detect_format
from src.utils.errors import UserError
from tests.fixtures_stylegan import (_Evil, _Record, official_modules, official_pickle_bytes, rosinality_expected_shapes,
                                     rosinality_mapping, rosinality_state_dict, rosinality_synthesis, tiny_generator)


def _globals_in(data: bytes):
    """(opcode names, referenced globals) of a pickle."""
    ops, names, strings, memo = set(), set(), [], {}
    last = None
    for op, arg, _ in pickletools.genops(data):
        ops.add(op.name)
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
            last = arg
        elif op.name == "MEMOIZE":
            memo[len(memo)] = last
        elif op.name in ("BINGET", "LONG_BINGET"):
            last = memo.get(arg)
            strings.append(last)
        else:
            last = None
        if op.name == "GLOBAL":
            names.add(arg.replace(" ", "."))
        if op.name == "STACK_GLOBAL":
            names.add(f"{strings[-2]}.{strings[-1]}")
    return ops, names


def _write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("protocol", [3, 4])
def test_official_pickle_loads_g_ema_identically(tmp_path, protocol):
    G_ema = tiny_generator(res=16, seed=0)
    G_raw = tiny_generator(res=16, seed=5)
    D = Discriminator(img_resolution=16, channel_base=256, channel_max=32)
    data = official_pickle_bytes(G_ema, G=G_raw, D=D, protocol=protocol)
    ops, names = _globals_in(data)
    assert ("GLOBAL" in ops) == (protocol == 3) and ("STACK_GLOBAL" in ops) == (protocol == 4)
    expected = {"torch_utils.persistence._reconstruct_persistent_obj", "dnnlib.util.EasyDict",
                "collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                "torch.storage._load_from_bytes", "numpy._core.multiarray.scalar", "numpy.dtype"}
    assert expected <= names
    assert ("builtins.set" in names) == (protocol == 3)
    path = _write(tmp_path, f"snap{protocol}.pkl", data)
    assert detect_format(path) == "nvidia-pickle"
    G = load_generator(path)
    assert not G.training and G.init_kwargs == G_ema.init_kwargs
    for (ka, a), (kb, b) in zip(G.state_dict().items(), G_ema.state_dict().items()):
        assert ka == kb and torch.equal(a, b), ka
    ws = G_ema.mapping(torch.randn(2, G_ema.z_dim), None)
    assert torch.equal(G.synthesis(ws, noise_mode="const"), G_ema.synthesis(ws, noise_mode="const"))
    assert not torch.equal(G.synthesis.b4.const, G_raw.synthesis.b4.const)


def test_conditional_pickle_and_layout_variants(tmp_path):
    G_ema = tiny_generator(res=8, c_dim=4, seed=3)
    z, c = torch.randn(3, G_ema.z_dim), torch.eye(4)[:3]
    ref = G_ema(z, c, noise_mode="const")
    # full snapshot, protocol 3
    G = load_generator(_write(tmp_path, "c.pkl", official_pickle_bytes(G_ema, protocol=3)))
    assert torch.equal(G(z, c, noise_mode="const"), ref) and G.c_dim == 4
    # TF-converted layout: only G, D, G_ema
    G = load_generator(_write(tmp_path, "tf.pkl", official_pickle_bytes(G_ema, keys={"G", "D", "G_ema"})))
    assert torch.equal(G(z, c, noise_mode="const"), ref)
    # only G (no G_ema): falls back to G
    G = load_generator(_write(tmp_path, "g.pkl", official_pickle_bytes(G_ema, keys={"G"})))
    assert torch.equal(G(z, c, noise_mode="const"), ref)
    # bare persistent Generator object; file named .pt: content decides
    bare = _write(tmp_path, "bare.pt", official_pickle_bytes(G_ema, bare=True, protocol=4))
    assert torch.equal(load_generator(bare)(z, c, noise_mode="const"), ref)


def test_numpy1_module_names(tmp_path):
    G_ema = tiny_generator(res=8)
    data = official_pickle_bytes(G_ema, protocol=3)
    assert b"numpy._core.multiarray\nscalar" in data
    old = data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
    G = load_generator(_write(tmp_path, "np1.pkl", old))
    assert torch.equal(G.mapping.fc0.weight, G_ema.mapping.fc0.weight)


def test_module_src_is_never_executed(tmp_path):
    sentinel = tmp_path / "sentinel_src"
    src = f"open({str(sentinel)!r}, 'w').write('pwned')\nimport os\nos.system('touch {sentinel}')\n"
    G_ema = tiny_generator(res=8)
    G = load_generator(_write(tmp_path, "src.pkl", official_pickle_bytes(G_ema, module_src=src)))
    assert torch.equal(G.synthesis.b8.conv0.weight, G_ema.synthesis.b8.conv0.weight)
    assert not sentinel.exists()


def test_malicious_pickles_are_refused(tmp_path):
    sentinel = tmp_path / "sentinel"
    G_ema = tiny_generator(res=8)
    cases = {
        "system.pkl": (pickle.dumps({"G_ema": _Evil(os.system, f"touch {sentinel}")}, protocol=4),
                       ("posix.system", "os.system")),
        "eval.pkl": (pickle.dumps(_Evil(builtins.eval, f"open({str(sentinel)!r}, 'w')"), protocol=2),
                     ("builtins.eval",)),
        "nested.pkl": (official_pickle_bytes(G_ema, protocol=3, replace={"augment_pipe": _Evil(
            builtins.exec, f"open({str(sentinel)!r}, 'w')")}), ("builtins.exec",)),
        "getattr.pkl": (pickle.dumps(_Evil(getattr, "abc", "upper"), protocol=4), ("builtins.getattr",)),
    }
    for name, (data, globals_) in cases.items():
        path = _write(tmp_path, name, data)
        with pytest.raises(UserError) as ei:
            load_generator(path)
        msg = str(ei.value)
        assert name in msg and any(g in msg for g in globals_) and "\n" not in msg, msg
    assert not sentinel.exists()


def test_malicious_tensor_and_meta_payloads(tmp_path):
    # a persistent object whose meta is not a dict, and a tensor rebuilt from a non-storage
    with official_modules():
        bad_meta = pickle.dumps({"G_ema": _Record(["not", "a", "dict"])}, protocol=4)
    with pytest.raises(UserError, match="meta"):
        load_generator(_write(tmp_path, "meta.pkl", bad_meta))
    from torch._utils import _rebuild_tensor_v2

    bad_tensor = pickle.dumps({"G_ema": _Evil(_rebuild_tensor_v2, "x", 0, (2,), (1,), False, None)}, protocol=4)
    with pytest.raises(UserError, match="storage"):
        load_generator(_write(tmp_path, "tensor.pkl", bad_tensor))
    # out-of-bounds view over a real storage
    storage = torch.zeros(4).untyped_storage()
    oob = pickle.dumps({"G_ema": _Evil(_rebuild_tensor_v2, torch.storage.TypedStorage(
        wrap_storage=storage, dtype=torch.float32, _internal=True), 0, (100,), (1,), False, None)}, protocol=4)
    with pytest.raises(UserError, match="past its storage"):
        load_generator(_write(tmp_path, "oob.pkl", oob))


def test_pickle_errors(tmp_path):
    G_ema = tiny_generator(res=8)
    data = official_pickle_bytes(G_ema)
    with pytest.raises(UserError, match="trunc.pkl: truncated"):
        load_generator(_write(tmp_path, "trunc.pkl", data[: len(data) // 3]))
    with pytest.raises(UserError, match="neither 'G_ema' nor 'G'"):
        load_generator(_write(tmp_path, "nog.pkl", pickle.dumps({"D": None, "x": 1}, protocol=4)))
    with pytest.raises(UserError, match="not a StyleGAN2-ADA snapshot"):
        load_generator(_write(tmp_path, "list.pkl", pickle.dumps([1, 2], protocol=4)))
    # architecture kwargs that do not fit the stored tensors
    G_bad = tiny_generator(res=8)
    G_bad.init_kwargs = dict(G_bad.init_kwargs, synthesis_kwargs=dict(channel_base=256, channel_max=16))
    with pytest.raises(UserError, match="do not match.*synthesis.b4.const has shape"):
        load_generator(_write(tmp_path, "shape.pkl", official_pickle_bytes(G_bad)))
    # StyleGAN3-like kwargs: clear refusal (and flat kwargs of the stylegan3 repo's StyleGAN2 port load)
    G_flat = tiny_generator(res=8)
    G_flat.init_kwargs = {k: v for k, v in G_flat.init_kwargs.items() if k != "synthesis_kwargs"}
    G_flat.init_kwargs.update(channel_base=512, channel_max=32, fused_modconv_default="inference_only")
    G = load_generator(_write(tmp_path, "flat.pkl", official_pickle_bytes(G_flat)))
    assert G.init_kwargs["synthesis_kwargs"] == {"channel_base": 512, "channel_max": 32}
    assert torch.equal(G.synthesis.b8.conv1.weight, G_flat.synthesis.b8.conv1.weight)
    G_sg3 = tiny_generator(res=8)
    G_sg3.init_kwargs = dict(G_sg3.init_kwargs, synthesis_kwargs=dict(channel_base=512, magnitude_ema_beta=0.99))
    with pytest.raises(UserError, match="not a supported StyleGAN2-ADA generator.*magnitude_ema_beta"):
        load_generator(_write(tmp_path, "sg3.pkl", official_pickle_bytes(G_sg3)))


# ----------------------------------------------------------------------------------------------
# rosinality
# ----------------------------------------------------------------------------------------------

def _rosinality_g(size, style_dim=32, n_mlp=2, cm=1, seed=0):
    return tiny_generator(res=size, w_dim=style_dim, num_layers=n_mlp, channel_base=16384 * cm, channel_max=512,
                          seed=seed)


def test_rosinality_doc_table_size64_cm1(tmp_path):
    expected = rosinality_expected_shapes(64, 1)
    assert len(expected) == 99 and len(rosinality_expected_shapes(256, 2)) == 135
    torch.manual_seed(0)
    G = Generator(z_dim=512, w_dim=512, img_resolution=64, mapping_kwargs=dict(num_layers=8),
                  synthesis_kwargs=dict(channel_base=16384, channel_max=512))
    sd = rosinality_state_dict(G)
    assert {k: tuple(v.shape) for k, v in sd.items()} == dict(expected)
    path = tmp_path / "r64.pt"
    torch.save({"g_ema": sd, "latent_avg": torch.randn(512)}, path)
    G2 = load_generator(path)
    assert G2.init_kwargs["synthesis_kwargs"] == {"channel_base": 16384, "channel_max": 512}
    assert G2.init_kwargs["mapping_kwargs"] == {"num_layers": 8} and G2.img_resolution == 64
    for (k, a), b in zip(G.state_dict().items(), G2.state_dict().values()):
        if k != "mapping.w_avg":
            assert torch.equal(a, b), k


def test_rosinality_convert_weight_layout_same_image(tmp_path):
    G = _rosinality_g(16, seed=1)
    sd = rosinality_state_dict(G)
    latent_avg = torch.randn(G.w_dim)
    path = tmp_path / "cw.pt"
    torch.save({"g_ema": sd, "latent_avg": latent_avg, "g": sd, "d": {"x": torch.zeros(1)}}, path)
    assert detect_format(path) == "torch"
    G2 = load_generator(path)
    assert torch.equal(G2.mapping.w_avg, latent_avg)
    z = torch.randn(2, G.w_dim)
    assert torch.allclose(G2.mapping(z, None)[:, 0], rosinality_mapping(sd, z, 2), atol=1e-5)
    ws = torch.randn(2, G2.num_ws, G.w_dim)
    with torch.no_grad():
        ref = rosinality_synthesis(sd, ws, 16)  # independent plain-torch rosinality forward
        ours = G2.synthesis(ws, noise_mode="const")
    assert ref.shape == ours.shape == (2, 3, 16, 16)
    assert (ref - ours).abs().max() < 1e-4 * max(1.0, float(ref.abs().max()))


def test_rosinality_train_layout_namespace_and_w_avg_estimate(tmp_path):
    G = _rosinality_g(8, seed=2)
    sd = rosinality_state_dict(G)
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.Adam([p])
    p.sum().backward()
    opt.step()
    args = argparse.Namespace(size=8, n_mlp=2, latent=G.w_dim, channel_multiplier=2, batch=4, lr=0.002)
    ckpt = {"g": sd, "d": {"convs.0.0.weight": torch.zeros(1)}, "g_ema": sd, "g_optim": opt.state_dict(),
            "d_optim": opt.state_dict(), "args": args, "ada_aug_p": 0.1}
    path = tmp_path / "train.pt"
    torch.save(ckpt, path)
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)  # the Namespace needs the allow-list
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        G2 = load_generator(path)
    assert any("latent_avg" in str(w.message) and "estimated" in str(w.message) for w in rec)
    z = torch.randn(10_000, G.w_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(G2.mapping.w_avg, rosinality_mapping(sd, z, 2).mean(0), atol=1e-4)
        ws = torch.randn(1, G2.num_ws, G.w_dim)
        assert torch.allclose(G2.synthesis(ws, noise_mode="const"), rosinality_synthesis(sd, ws, 8), atol=1e-4)
    # legacy (non-zip) torch.save of the same checkpoint also loads (content-based dispatch)
    legacy = tmp_path / "legacy.pkl"
    torch.save({"g_ema": sd, "latent_avg": torch.zeros(G.w_dim)}, legacy, _use_new_zipfile_serialization=False)
    assert detect_format(legacy) == "torch"
    assert torch.equal(load_generator(legacy).synthesis.b8.conv0.weight, G.synthesis.b8.conv0.weight)
    # args that contradict the weights
    torch.save(dict(ckpt, args=argparse.Namespace(size=16, n_mlp=2, latent=G.w_dim, channel_multiplier=2)), path)
    with pytest.raises(UserError, match="args.size=16"):
        load_generator(path)


class _Foreign:
    pass


def test_rosinality_errors(tmp_path):
    G = _rosinality_g(8, seed=3)
    sd = rosinality_state_dict(G)
    path = tmp_path / "ok.pt"
    torch.save({"g_ema": sd, "latent_avg": torch.zeros(G.w_dim)}, path)
    data = path.read_bytes()
    with pytest.raises(UserError, match="cut.pt: not a loadable rosinality checkpoint"):
        load_generator(_write(tmp_path, "cut.pt", data[: len(data) // 2]))
    torch.save({"g_ema": sd, "extra": _Foreign()}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="foreign.pt"):
        load_generator(tmp_path / "foreign.pt")
    torch.save({"model": sd}, tmp_path / "nog.pt")
    with pytest.raises(UserError, match="no 'g_ema'"):
        load_generator(tmp_path / "nog.pt")
    bad = dict(sd)
    bad["convs.0.conv.blur.kernel"] = torch.ones(4, 4)
    torch.save({"g_ema": bad, "latent_avg": torch.zeros(G.w_dim)}, tmp_path / "blur.pt")
    with pytest.raises(UserError, match="blur kernel"):
        load_generator(tmp_path / "blur.pt")
    extra = dict(sd, **{"convs.9.conv.weight": torch.zeros(1)})
    torch.save({"g_ema": extra, "latent_avg": torch.zeros(G.w_dim)}, tmp_path / "extra.pt")
    with pytest.raises(UserError, match="convs.9.conv.weight"):
        load_generator(tmp_path / "extra.pt")
