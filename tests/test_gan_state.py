"""The compact GAN training state (src/embedded/training/gan_state.py) on tiny CPU GANs: a round trip
within the precision policy, capped shards, a resume whose losses follow the uninterrupted run's, and
one error line for a corrupt, missing or misfitting file before any tensor is read."""
from __future__ import annotations

import copy
import hashlib
import json

import pytest
import torch

import src.embedded.training.gan as sg
import src.embedded.training.gan_state as gs
from tests.test_gan_training import TINY, _detached, tiny

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = 64  # tensors above 64 elements get the shipped policy (fp16 weights, bf16 second moment)
ITERS, MORE = 4, 6


def _ckpt(m, step=0):
    """A Lightning-like checkpoint dict of a detached module (what the Trainer saves)."""
    ckpt = {"epoch": 0, "global_step": 2 * m.iteration, "pytorch-lightning_version": "test",
            "state_dict": m.state_dict(), "optimizer_states": [o.state_dict() for o in m.optimizers()],
            "hyper_parameters": dict(m.hparams), "loops": {"fit_loop": {"state_dict": {"combined_loader": [
                {"epoch": 0, "batches": m.iteration}]}}}, "lr_schedulers": [], "callbacks": {"x": (1, 2.5, None)}}
    m.on_save_checkpoint(ckpt)
    return copy.deepcopy(ckpt)


def _run(m, first, n, losses):
    for it in range(first, first + n):
        torch.manual_seed(1000 + it)  # what StepSeeds does before every batch
        m.training_step(it, it)
        losses.append((m.logged["train/loss_g"].item(), m.logged["train/loss_d"].item()))


def _fresh():
    torch.manual_seed(0)
    return _detached(sg.StyleGANModule(**TINY))


def _restored(ckpt):
    m = _fresh()
    m.on_load_checkpoint(ckpt)
    m.load_state_dict(ckpt["state_dict"])
    for opt, state in zip(m.optimizers(), ckpt["optimizer_states"]):
        opt.load_state_dict(state)
    return m


@pytest.fixture(scope="module")
def runs():
    """The uninterrupted run's losses and the checkpoint after ITERS iterations."""
    whole, losses = _fresh(), []
    _run(whole, 0, ITERS + MORE, losses)
    cut = _fresh()
    _run(cut, 0, ITERS, [])
    return dict(losses=losses, ckpt=_ckpt(cut))


def test_round_trip_within_the_precision_policy(runs, tmp_path):
    ckpt = runs["ckpt"]
    manifest = gs.write_state(ckpt, tmp_path, shard_mib=0.02, exact_up_to=SMALL)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(manifest["shards"]) >= 3 and files == sorted([gs.MANIFEST] + [s["file"] for s in manifest["shards"]])
    for s in manifest["shards"]:
        data = (tmp_path / s["file"]).read_bytes()
        assert len(data) == s["bytes"] <= 0.02 * 2**20 and hashlib.sha256(data).hexdigest() == s["sha256"]
    back = gs.read_state(tmp_path)
    assert {k for k in back if k != "state_dict"} == {k for k in ckpt if k != "state_dict"}
    assert back["callbacks"] == {"x": (1, 2.5, None)} and back["loops"] == ckpt["loops"]
    assert torch.equal(back["stylegan_progress"]["render_rng"], ckpt["stylegan_progress"]["render_rng"])
    assert back["stylegan_progress"]["cur_nimg"] == ITERS * 4 and back["global_step"] == 2 * ITERS
    stored = {n: e["stored"] for n, e in manifest["tensors"].items()}
    assert not any(k.startswith(gs.EVAL_NETWORKS) for k in back["state_dict"])
    for k, v in back["state_dict"].items():
        a = ckpt["state_dict"][k]
        assert v.dtype == a.dtype and v.shape == a.shape
        tol = 2.0 ** -11 if stored[f"state_dict.{k}"] == "float16" else 0.0
        assert (v - a).abs().max() <= tol * a.abs().max(), k
    assert "float16" in stored.values() and "bfloat16" in stored.values()
    for opt_a, opt_b in zip(ckpt["optimizer_states"], back["optimizer_states"]):
        assert opt_a["param_groups"] == opt_b["param_groups"] and opt_a["param_groups"][0]["betas"][0] == 0.0
        for j, st in opt_a["state"].items():
            got = opt_b["state"][j]
            assert torch.equal(got["step"], st["step"]) and not got["exp_avg"].any()  # dropped: beta1 = 0
            assert (got["exp_avg_sq"] - st["exp_avg_sq"]).abs().max() <= 2.0 ** -8 * st["exp_avg_sq"].abs().max()


def test_adam_with_beta1_zero_never_reads_its_first_moment():
    torch.manual_seed(0)
    w = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(2)]
    opt = torch.optim.Adam(w, lr=0.0025, betas=(0.0, 0.99), foreach=True)
    for _ in range(3):
        for p in w:
            p.grad = torch.randn_like(p)
        opt.step()
    twin_w = [torch.nn.Parameter(p.detach().clone()) for p in w]
    twin = torch.optim.Adam(twin_w, lr=0.0025, betas=(0.0, 0.99), foreach=True)
    state = copy.deepcopy(opt.state_dict())
    for s in state["state"].values():
        s["exp_avg"].normal_()  # any value: it is overwritten with the gradient first
    twin.load_state_dict(state)
    for _ in range(2):
        for p, q in zip(w, twin_w):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        opt.step()
        twin.step()
    assert all(torch.equal(p, q) for p, q in zip(w, twin_w))


def _resumed_losses(ckpt, tmp_path, exact_up_to, spoil=None):
    gs.write_state(ckpt, tmp_path, exact_up_to=exact_up_to)
    back = gs.read_state(tmp_path)
    if spoil:
        spoil(back)
    losses = []
    _run(_restored(back), ITERS, MORE, losses)
    return torch.tensor(losses)


def test_resume_follows_the_uninterrupted_losses(runs, tmp_path):
    whole = torch.tensor(runs["losses"][ITERS:])
    exact = _resumed_losses(runs["ckpt"], tmp_path / "exact", exact_up_to=1 << 40)
    assert torch.equal(exact, whole)  # kept exactly (Adam's first moment dropped): bit for bit
    compact = _resumed_losses(runs["ckpt"], tmp_path / "compact", exact_up_to=SMALL)

    def no_second_moment(ck):  # what dropping exp_avg_sq too would do: steps ~10x too large
        for opt in ck["optimizer_states"]:
            for s in opt["state"].values():
                s["exp_avg_sq"].zero_()

    spoiled = _resumed_losses(runs["ckpt"], tmp_path / "spoiled", SMALL, no_second_moment)
    dev, bad = (compact - whole).abs().max().item(), (spoiled - whole).abs().max().item()
    print(f"largest loss deviation over {MORE} resumed iterations: compact {dev:.2e}, no second moment {bad:.2e}")
    assert dev <= 0.02 and dev < bad / 5


def _state(runs, tmp_path):
    gs.write_state(runs["ckpt"], tmp_path, shard_mib=0.02, exact_up_to=SMALL)
    return json.loads((tmp_path / gs.MANIFEST).read_text())


def _one_line_error(tmp_path, capsys, monkeypatch, match):
    import safetensors.torch

    def no_reads(*a, **k):
        raise AssertionError("a tensor was read before the state was checked")

    monkeypatch.setattr(safetensors.torch, "load_file", no_reads)
    assert gs.main(["import", str(tmp_path), str(tmp_path / "out.ckpt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and match in err, err
    assert not (tmp_path / "out.ckpt").exists()


def test_a_corrupt_shard_is_one_line(runs, tmp_path, capsys, monkeypatch):
    manifest = _state(runs, tmp_path)
    path = tmp_path / manifest["shards"][1]["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    _one_line_error(tmp_path, capsys, monkeypatch, "corrupt shard")


def test_a_missing_shard_is_one_line(runs, tmp_path, capsys, monkeypatch):
    manifest = _state(runs, tmp_path)
    (tmp_path / manifest["shards"][-1]["file"]).unlink()
    _one_line_error(tmp_path, capsys, monkeypatch, "missing shard")


@pytest.mark.parametrize("name,shape,match", [
    ("state_dict.G.mapping.fc0.weight", [1 << 30, 1 << 30], "the networks of its hyper_parameters have"),
    ("stylegan_progress.render_rng", [1 << 31, 1 << 31], "no network describes"),
    ("optimizer_states.0.state.9999.exp_avg_sq", [4], "a parameter the networks do not have"),
])
def test_absurd_shapes_are_one_line(runs, tmp_path, capsys, monkeypatch, name, shape, match):
    manifest = _state(runs, tmp_path)
    manifest["tensors"][name] = {**manifest["tensors"].get(name, {"dtype": "float32", "stored": "float32", "shard": 0}),
                                 "shape": shape}
    (tmp_path / gs.MANIFEST).write_text(json.dumps(manifest))
    _one_line_error(tmp_path, capsys, monkeypatch, match)


def test_absurd_networks_are_one_line(runs, tmp_path, capsys, monkeypatch):
    manifest = _state(runs, tmp_path)
    manifest["checkpoint"]["hyper_parameters"]["G_kwargs"]["synthesis_kwargs"]["channel_max"] = 1 << 16
    (tmp_path / gs.MANIFEST).write_text(json.dumps(manifest))
    _one_line_error(tmp_path, capsys, monkeypatch, "channel_max = 65536 is outside")


@pytest.mark.slow
def test_a_run_resumes_from_an_imported_state_bit_for_bit(tmp_path, capsys):
    """Through train.py's own resume: a state exported from a stopped run's last.ckpt (kept exactly,
    Adam's first moment dropped, evaluation networks left out) and imported into a fresh run folder
    ends where the uninterrupted run ends, bit for bit."""
    from tests.conftest import compose_train
    from tests.test_resume_exact import _assert_bit_identical
    from tests.test_resume_tasks import COMMON, TASKS
    from train import train

    base = COMMON + TASKS["stylegan"][0]
    whole, cut, moved = tmp_path / "whole", tmp_path / "cut", tmp_path / "moved"
    train(compose_train(base + ["trainer.max_steps=8"], whole))
    train(compose_train(base + ["trainer.max_steps=4"], cut))
    ckpt = torch.load(cut / "run/checkpoints/last.ckpt", weights_only=True)
    gs.write_state(ckpt, tmp_path / "state", exact_up_to=1 << 40)
    assert gs.main(["import", str(tmp_path / "state"), str(moved / "run/checkpoints/last.ckpt")]) == 0
    capsys.readouterr()
    train(compose_train(base + ["trainer.max_steps=8"], moved))
    assert "resuming from" in capsys.readouterr().err
    a, b = (torch.load(r / "run/checkpoints/last.ckpt", weights_only=True) for r in (whole, moved))
    assert a["global_step"] == b["global_step"] == 8
    _assert_bit_identical(a["state_dict"], b["state_dict"], "state_dict")
    _assert_bit_identical(a["optimizer_states"], b["optimizer_states"], "optimizer_states")
    _assert_bit_identical(a["stylegan_progress"], b["stylegan_progress"], "stylegan_progress")


def test_a_channels_last_run_exports_and_its_moments_take_the_layout_back(tmp_path):
    """experiment=embedded_stylegan builds its fp16 blocks channels-last: their weights and Adam moments
    are not in the plain layout, which safetensors refuses. They are stored plainly, and on resume each
    moment takes its parameter's layout again (a fused Adam indexes them alike)."""
    kw = tiny(precision=dict(mode="fp16_res"))
    kw["G_kwargs"]["synthesis_kwargs"].update(num_fp16_res=2, conv_clamp=256, fp16_channels_last=True)
    kw["D_kwargs"].update(num_fp16_res=2, conv_clamp=256, block_kwargs=dict(fp16_channels_last=True))
    torch.manual_seed(0)
    m = _detached(sg.StyleGANModule(**kw))
    _run(m, 0, 2, [])
    ckpt = _ckpt(m)
    assert any(t.dim() == 4 and not t.is_contiguous() for t in ckpt["state_dict"].values())
    gs.write_state(ckpt, tmp_path / "state", exact_up_to=10**9)  # exact: the values must come back as they were
    back = gs.read_state(tmp_path / "state")
    torch.manual_seed(0)
    r = _detached(sg.StyleGANModule(**kw))
    r.on_load_checkpoint(back)
    r.load_state_dict(back["state_dict"])
    for opt, saved, state in zip(r.optimizers(), m.optimizers(), back["optimizer_states"]):
        opt.load_state_dict(state)
        gs.align_state_layouts(opt)
        pairs = [(p, v, q) for (p, s), (q, s0) in zip(opt.state.items(), saved.state.items())
                 for k, v in s.items() if torch.is_tensor(v) and v.shape == p.shape and k == "exp_avg_sq"]
        assert pairs and any(not p.is_contiguous() for p, _, _ in pairs)
        for p, v, q in pairs:
            assert v.stride() == p.stride()
            torch.testing.assert_close(v, saved.state[q]["exp_avg_sq"], rtol=0, atol=0)


def test_keep_replaces_the_kept_state_only_with_a_checked_one(runs, tmp_path, capsys):
    came_back, kept = tmp_path / "came_back", tmp_path / "runs" / "gan"
    manifest = _state(runs, came_back)
    (came_back / "chunk.log").write_text("not part of the state")
    assert gs.main(["keep", str(came_back), str(kept)]) == 0
    assert "kept in" in capsys.readouterr().out
    assert sorted(p.name for p in kept.iterdir()) == sorted([gs.MANIFEST] + [s["file"] for s in manifest["shards"]])
    before = {p.name: p.read_bytes() for p in kept.iterdir()}
    path = came_back / manifest["shards"][0]["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert gs.main(["keep", str(came_back), str(kept)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "corrupt shard" in err
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == before  # the good state stays
    assert not any(p.name.endswith((".new", ".old")) for p in kept.parent.iterdir())


def test_the_state_gives_its_g_ema_as_a_generator_file(runs, tmp_path, capsys):
    from src.stylegan import load_generator

    gs.write_state(runs["ckpt"], tmp_path / "state", shard_mib=0.02, exact_up_to=SMALL)
    out = tmp_path / "G.safetensors"
    assert gs.main(["generator", str(tmp_path / "state"), str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out and out.with_suffix(".json").is_file()
    G = load_generator(str(out), device="cpu")
    ema = {k[len("G_ema."):]: v for k, v in runs["ckpt"]["state_dict"].items() if k.startswith("G_ema.")}
    z = torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(0))
    ref = _fresh().G_ema
    ref.load_state_dict(ema)
    with torch.no_grad():
        want = ref.synthesis(ref.mapping(z, None), noise_mode="const")
        got = G.synthesis(G.mapping(z, None), noise_mode="const")
    # fp16 weights (2^-11 relative each, as the shipped generator): a few of those through the layers
    assert (got - want).abs().max() < 8 * 2.0 ** -11 * want.abs().max()
    assert gs.main(["generator", str(tmp_path / "none"), str(tmp_path / "x.safetensors")]) == 2
    assert not (tmp_path / "x.safetensors").exists()
