"""GAN training (src/embedded/training/gan*.py, src/losses/gan.py, src/data/augment.py) on tiny CPU sizes."""
from __future__ import annotations

import copy
import math

import pytest
import torch

import src.embedded as synthetic
import src.embedded.training.gan as sg
import src.embedded.training.gan_metrics as gm
from src.config.gan import GAN_GROUPS, regroup_flat_hparams
from src.data.augment import AdaptiveP, AugmentPipe
from src.embedded.datamodule import RenderIndexDataModule
from src.losses.gan import (PathLengthPenalty, d_logistic_loss, ema_beta, g_nonsaturating_loss,
                            lazy_optimizer_params, r1_penalty, update_ema)

TINY = dict(
    resolution=16, seed=1, optim=dict(batch_size=4), precision=dict(mode="fp32"), output=dict(log_every=1),
    ema=dict(kimg=0.01, rampup=None), regularization=dict(pl_interval=2, r1_interval=2, style_mixing_prob=0.9),
    G_kwargs=dict(z_dim=16, w_dim=16, mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=128, channel_max=16)),
    D_kwargs=dict(channel_base=128, channel_max=16),
)


def tiny(base=None, **groups):
    """TINY (or ``base``) with some settings of its groups replaced: tiny(augment=dict(ada=True))."""
    kw = copy.deepcopy(TINY if base is None else base)
    for name, value in groups.items():
        kw[name] = {**kw.get(name, {}), **value} if isinstance(value, dict) else value
    return kw


pytestmark = pytest.mark.usefixtures("one_thread")


def _detached(module):
    """Run training_step without a Trainer: plain optimisers/backward, logs captured."""
    opts = module.configure_optimizers()
    module.optimizers = lambda: opts
    module.manual_backward = lambda loss: loss.backward()
    module.logged = {}
    module.log_dict = lambda d, **k: module.logged.update(d)
    module.log = lambda name, value, **k: module.logged.update({name: value})
    return module


@pytest.fixture(scope="module")
def trained():
    """A tiny module after 3 iterations (iterations 0 and 2 run both lazy regularisers)."""
    torch.manual_seed(0)
    m = _detached(sg.StyleGANModule(**tiny(augment=dict(ada=True, ada_interval=1, ada_kimg=0.001))))
    g0 = copy.deepcopy(m.G)
    ema0 = copy.deepcopy(m.G_ema)
    m.training_step(0, 0)
    m.training_step(1, 1)
    before = copy.deepcopy(m.G_ema)
    g_before = copy.deepcopy(m.G)
    m.training_step(2, 2)
    return dict(m=m, g0=g0, ema0=ema0, ema_before=before, g_before=g_before)


def _dist(a, b):
    return sum((p - q).double().square().sum() for p, q in zip(a.parameters(), b.parameters())).sqrt().item()


# ---------------------------------------------------------------- losses
def test_logistic_losses_values():
    r, f = torch.tensor([[2.0], [-1.0]]), torch.tensor([[0.5], [-3.0]])
    sp = torch.nn.functional.softplus
    assert torch.allclose(d_logistic_loss(r, f), sp(f).mean() + sp(-r).mean())
    assert torch.allclose(g_nonsaturating_loss(f), sp(-f).mean())
    assert g_nonsaturating_loss(torch.tensor([[10.0]])) < 1e-4  # fooled D -> ~0 loss


def test_r1_penalty_of_linear_critic_is_weight_norm():
    w = torch.randn(1, 3, 4, 4)
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    logits = (x * w).flatten(1).sum(1, keepdim=True)
    pen = r1_penalty(x, logits)
    assert pen.shape == (5,)
    assert torch.allclose(pen, w.square().sum().expand(5), rtol=1e-5)


def test_path_length_penalty_tracks_mean():
    pl = PathLengthPenalty(decay=0.5)
    ws = torch.randn(3, 4, 8, requires_grad=True)
    proj = torch.randn(8, 3 * 8 * 8)
    img = torch.tanh(ws.mean(1) @ proj).view(3, 3, 8, 8)  # nonlinear: the penalty depends on ws
    pen = pl(img, ws)
    assert pen.shape == (3,) and torch.isfinite(pen).all()
    assert pl.pl_mean > 0  # moved halfway from 0 to the mean length
    pen.sum().backward()  # second-order graph exists
    assert ws.grad is not None


def test_ema_beta_half_life_and_rampup():
    beta = ema_beta(64, ema_kimg=10, ema_rampup=None, cur_nimg=10**7)
    assert math.isclose(beta ** (10_000 / 64), 0.5, rel_tol=1e-9)
    early = ema_beta(64, ema_kimg=10, ema_rampup=0.05, cur_nimg=6400)  # half-life capped at 320 images
    assert early < beta
    assert math.isclose(early ** (320 / 64), 0.5, rel_tol=1e-9)


def test_lazy_optimizer_params():
    lr, (b1, b2) = lazy_optimizer_params(0.002, (0.0, 0.99), 16)
    assert math.isclose(lr, 0.002 * 16 / 17) and b1 == 0.0 and math.isclose(b2, 0.99 ** (16 / 17))
    assert lazy_optimizer_params(0.002, (0.0, 0.99), 0) == (0.002, (0.0, 0.99))


def test_update_ema_lerps_and_copies_buffers():
    src, ema = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        src.weight.fill_(2.0)
        ema.weight.fill_(0.0)
        src.running_mean.fill_(5.0)
    update_ema(ema, src, beta=0.75)
    assert torch.allclose(ema.weight, torch.full((3,), 0.5))
    assert torch.equal(ema.running_mean, src.running_mean)


# ---------------------------------------------------------------- augmentation
def _imgs(n=6, r=16):
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 3, r, r, generator=g) * 2 - 1


def test_augment_p0_is_identity():
    x = _imgs()
    torch.manual_seed(0)
    assert torch.equal(AugmentPipe(p=0.0)(x), x)


def test_augment_p1_changes_every_image():
    x = _imgs()
    torch.manual_seed(0)
    y = AugmentPipe(p=1.0)(x)
    assert y.shape == x.shape
    assert ((y - x).abs().flatten(1).amax(1) > 1e-3).all()


@pytest.mark.parametrize("only", ["xflip", "translate", "scale", "rotate", "brightness", "contrast", "saturation", "cutout"])
def test_each_augment_alone_changes_images(only):
    flags = {k: k == only for k in ["xflip", "translate", "scale", "rotate", "brightness", "contrast", "saturation", "cutout"]}
    x = _imgs(8)
    torch.manual_seed(1)
    y = AugmentPipe(p=1.0, **flags)(x)
    assert (y - x).abs().amax() > 1e-3
    if only == "xflip":
        assert torch.allclose(y, x.flip(3), atol=1e-5)


def test_augment_is_twice_differentiable():
    # R1 on augmented reals needs d/dx of (d D(aug(x)) / dx).
    x = _imgs(4).requires_grad_(True)
    torch.manual_seed(2)
    y = AugmentPipe(p=1.0)(x)
    w = torch.randn_like(y)
    (g,) = torch.autograd.grad((y.square() * w).sum(), x, create_graph=True)
    g.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_adaptive_p_follows_sign_heuristic():
    pipe, ada = AugmentPipe(p=0.5), AdaptiveP(target=0.6, speed_kimg=0.1)
    ada.accumulate(torch.ones(10, 1))          # r_t = 1 > 0.6: D overfits -> p up
    ada.update(pipe, batch_size=10, steps=1)   # step = 10 / 100
    assert math.isclose(pipe.p.item(), 0.6, rel_tol=1e-6) and ada.rt.item() == 1.0
    ada.accumulate(-torch.ones(10, 1))         # r_t = -1 < 0.6 -> p down
    ada.update(pipe, batch_size=10, steps=1)
    assert math.isclose(pipe.p.item(), 0.5, rel_tol=1e-6)
    ada.update(pipe, batch_size=10, steps=1)   # nothing accumulated -> unchanged
    assert math.isclose(pipe.p.item(), 0.5, rel_tol=1e-6)


# ---------------------------------------------------------------- training steps
def test_steps_give_finite_losses_and_run_regularisers(trained):
    m = trained["m"]
    for k in ("train/loss_g", "train/loss_d", "train/logits_real", "train/logits_fake"):
        assert torch.isfinite(m.logged[k]), k
    assert m.pl_penalty.pl_mean > 0                 # the path-length step ran
    assert m.iteration == 3 and m.cur_nimg == 12
    assert all(torch.isfinite(p).all() for p in list(m.G.parameters()) + list(m.D.parameters()))
    assert _dist(m.G, trained["g0"]) > 0           # G was optimised
    assert 0.0 <= m.augment_pipe.p.item() <= 1.0


def test_r1_runs_on_its_interval(monkeypatch):
    calls = []
    orig = sg.r1_penalty
    monkeypatch.setattr(sg, "r1_penalty", lambda x, l: calls.append(1) or orig(x, l))
    torch.manual_seed(0)
    m = _detached(sg.StyleGANModule(**tiny(regularization=dict(r1_interval=2, pl_interval=0))))
    for i in range(3):
        m.training_step(i, i)
    assert len(calls) == 2  # iterations 0 and 2


def test_ema_differs_from_g_and_moves_towards_it(trained):
    m = trained["m"]
    assert _dist(m.G_ema, m.G) > 0
    assert _dist(m.G_ema, trained["ema0"]) > 0
    # The last update pulled G_ema towards the current G.
    assert _dist(m.G_ema, m.G) < _dist(trained["ema_before"], m.G)


def test_step_makes_no_host_sync(monkeypatch):
    torch.manual_seed(0)
    m = _detached(sg.StyleGANModule(**tiny(output=dict(log_every=0), augment=dict(ada=True, ada_interval=1))))
    m.training_step(0, 0)  # warm up lazy init outside the count
    counts = {"n": 0, "paused": False}

    def counting(name):
        orig = getattr(torch.Tensor, name)

        def f(self, *a, **k):
            if not counts["paused"]:
                counts["n"] += 1
                counts.setdefault("where", []).append(name)
            return orig(self, *a, **k)
        return f

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))

    def paused(fn):
        # The renderer and the CPU parameter sampler are outside the step's own code.
        def g(*a, **k):
            counts["paused"] = True
            try:
                return fn(*a, **k)
            finally:
                counts["paused"] = False
        return g

    monkeypatch.setattr(synthetic, "render", paused(synthetic.render))
    monkeypatch.setattr(synthetic, "sample_params", paused(synthetic.sample_params))
    # torch's CPU Adam reads its CPU step counter with .item() (no device sync); on CUDA the
    # module uses fused Adam, whose counters live on the GPU.
    for opt in m.optimizers():
        monkeypatch.setattr(opt, "step", paused(opt.step))
    for i in range(1, 5):  # covers PL (i=4), R1 (i=2, 4) and ADA updates
        m.training_step(i, i)
    assert counts["n"] == 0, counts.get("where")


def test_export_round_trip(trained, tmp_path):
    from src.stylegan import load_generator

    m = trained["m"]
    out = m.export_generator(tmp_path / "gen.safetensors")
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers
    G = load_generator(str(out), device="cpu")
    z = torch.randn(2, m.z_dim)
    c = torch.zeros(2, 0)
    with torch.no_grad():
        ref = m.G_ema.synthesis(m.G_ema.mapping(z, c), noise_mode="const")
        got = G.synthesis(G.mapping(z, c), noise_mode="const")
    assert got.shape == (2, 3, 16, 16)
    assert (got.float() - ref).abs().max() < 0.05  # fp16 weights


def test_fit_validate_test_and_export_with_lightning(tmp_path):
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    cfg = OmegaConf.load("conf/task/stylegan.yaml")
    assert cfg.task.name == "stylegan" and cfg.task.monitor == "val/fd"
    model_kw = OmegaConf.to_container(cfg.model, resolve=False)
    model_kw.pop("_target_")
    model_kw = tiny(model_kw, **{**TINY, "output": dict(export_path=str(tmp_path / "g.safetensors"), log_every=2),
                                 "validation": dict(sample_dir=str(tmp_path / "samples"))})
    model_kw.update(G_kwargs=TINY["G_kwargs"], D_kwargs=TINY["D_kwargs"])  # the tiny networks, not merged
    data_kw = OmegaConf.to_container(cfg.data)
    data_kw.pop("_target_")
    data_kw.update(val_batches=1, test_batches=1)
    torch.manual_seed(0)
    m = sg.StyleGANModule(**model_kw)
    trainer = pl.Trainer(accelerator="cpu", max_steps=4, val_check_interval=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    dm = RenderIndexDataModule(**data_kw)
    trainer.fit(m, datamodule=dm)
    assert m.iteration == 2 and trainer.global_step == 4  # 2 optimiser steps per iteration
    assert torch.isfinite(trainer.callback_metrics["val/fd"])
    trainer.test(m, datamodule=dm)
    assert trainer.callback_metrics["test/fd"] >= 0
    assert (tmp_path / "g.safetensors").is_file() and (tmp_path / "g.json").is_file()
    assert list((tmp_path / "samples").glob("*.png"))
    # Checkpoints are data only (weights_only loading) and restore the progress counters.
    from omegaconf import DictConfig

    as_hydra = {k: DictConfig(v) if isinstance(v, dict) else v for k, v in model_kw.items()}  # as Hydra passes it
    m2 = sg.StyleGANModule(**as_hydra)
    assert type(m2.hparams["G_kwargs"]) is dict and type(m2.hparams["optim"]) is dict
    assert type(m2.hparams["optim"]["betas"]) is list and m2.optim_cfg == m.optim_cfg
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    ckpt = torch.load(tmp_path / "c.ckpt", weights_only=True)
    assert ckpt["stylegan_progress"]["cur_nimg"] == 8
    hp = ckpt["hyper_parameters"]  # the groups, as plain dicts
    assert hp["optim"]["batch_size"] == 4 and hp["precision"]["mode"] == "fp32" and hp["resolution"] == 16
    assert set(hp) == {"resolution", "G_kwargs", "D_kwargs", "seed", *GAN_GROUPS}
    m3 = sg.StyleGANModule(**model_kw)
    m3.on_load_checkpoint(ckpt)
    m3.load_state_dict(ckpt["state_dict"])
    assert m3.iteration == 2 and _dist(m3.G_ema, m.G_ema) == 0


def test_trainer_precision_other_than_32_is_refused():
    import pytorch_lightning as pl

    from src.utils.errors import UserError

    m = sg.StyleGANModule(**TINY)
    trainer = pl.Trainer(accelerator="cpu", precision="bf16-mixed", max_steps=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(UserError, match="32-true"):
        trainer.fit(m, datamodule=RenderIndexDataModule(steps_per_epoch=2, val_batches=1, test_batches=1))


@pytest.mark.parametrize("group", sorted(GAN_GROUPS))
def test_unknown_group_key_fails_in_one_line(group):
    from src.utils.errors import UserError

    with pytest.raises(UserError) as err:
        sg.StyleGANModule(**tiny(**{group: {"typo_key": 1}}))
    assert "\n" not in str(err.value) and f"model.{group} has no setting 'typo_key'" in str(err.value)


def test_unknown_or_old_flat_key_on_the_command_line_fails(tmp_path):
    from src.utils.errors import UserError
    from tests.conftest import compose_train
    from src.systems.run import instantiate as _instantiate

    with pytest.raises(Exception, match=r"model\.r1_gamma"):  # the flat keys of before the groups
        compose_train(["task=stylegan", "model.r1_gamma=0.1"], tmp_path)
    cfg = compose_train(["task=stylegan", "+model.regularization.r1_gama=0.1"], tmp_path)
    with pytest.raises(UserError) as err:
        _instantiate(cfg.model)  # as train.py builds the model
    assert "\n" not in str(err.value) and "model.regularization has no setting 'r1_gama'" in str(err.value)
    with pytest.raises(UserError, match=r"model\.precision\.mode 'fp8'"):
        sg.StyleGANModule(**tiny(precision=dict(mode="fp8")))


def test_configs_list_every_setting_with_the_dataclass_defaults(tmp_path):
    from dataclasses import asdict

    from omegaconf import OmegaConf

    from tests.conftest import compose_train

    cfg = compose_train(["task=stylegan"], tmp_path)
    for name, cls in GAN_GROUPS.items():
        node, defaults = cfg.model[name], asdict(cls())
        assert set(node) == set(defaults), name
        for key in node:  # paths of the run (interpolations) are the config's, None in code
            if not OmegaConf.is_interpolation(node, key):
                assert node[key] == defaults[key], f"model.{name}.{key}"
    shipped = compose_train(["experiment=embedded_stylegan"], tmp_path)
    assert shipped.model.optim.batch_size == 256 and shipped.model.regularization.r1_gamma == 0.1
    assert shipped.model.precision.cuda_graphs  # on a GPU; a CPU run steps eagerly
    assert shipped.model.validation.oracle_path.endswith("oracle_synthetic.safetensors")


def test_export_script_reads_flat_and_grouped_checkpoints(trained, tmp_path):
    """scripts/export_stylegan_ckpt.py also exports checkpoints written before the groups (flat hparams)."""
    import importlib.util

    from src.stylegan import load_generator
    from tests.conftest import ROOT

    m = trained["m"]
    flat = dict(resolution=16, seed=1, G_kwargs=TINY["G_kwargs"], D_kwargs=TINY["D_kwargs"], batch_size=4,
                g_lr=0.0025, d_lr=0.0025, betas=[0.0, 0.99], r1_gamma=None, r1_interval=2, pl_interval=2,
                pl_weight=2.0, pl_batch_shrink=2, pl_decay=0.01, style_mixing_prob=0.9, ema_kimg=0.01,
                ema_rampup=None, ada=True, ada_target=0.6, ada_interval=1, ada_kimg=0.001, augment_p=0.0,
                augment_kwargs=None, precision="fp32", allow_tf32=True, log_every=1, export_path=None,
                feature_clip_path=None, oracle_path=None, sample_dir=None, fused_adam=True)
    regrouped = regroup_flat_hparams(flat)
    # settings the flat form predates take their defaults
    from dataclasses import asdict

    from src.config.gan import GAN_GROUPS, gan_groups

    filled = {**regrouped, **{k: asdict(v) for k, v in gan_groups(**{g: regrouped.get(g) for g in GAN_GROUPS}).items()}}
    assert filled == dict(m.hparams) and regroup_flat_hparams(dict(m.hparams)) == dict(m.hparams)
    spec = importlib.util.spec_from_file_location("export_stylegan_ckpt", ROOT / "scripts" / "export_stylegan_ckpt.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    z = torch.randn(2, m.z_dim)
    with torch.no_grad():
        ref = m.G_ema.synthesis(m.G_ema.mapping(z, m._c(2)), noise_mode="const")
    for name, hp in (("flat", flat), ("grouped", dict(m.hparams))):
        torch.save({"hyper_parameters": hp, "state_dict": m.state_dict(), "global_step": 6}, tmp_path / f"{name}.ckpt")
        assert script.main([str(tmp_path / f"{name}.ckpt"), str(tmp_path / name)]) == 0
        G = load_generator(str(tmp_path / f"{name}.safetensors"), device="cpu")
        with torch.no_grad():
            assert (G.synthesis(G.mapping(z, m._c(2)), noise_mode="const").float() - ref).abs().max() < 0.05


def test_random_feature_extractor_is_fixed():
    a, b = gm.RandomConvFeatures(), gm.RandomConvFeatures()
    x = _imgs(2)
    assert torch.equal(a(x), b(x)) and a(x).shape == (2, gm.RandomConvFeatures.num_features)


def test_eval_with_oracle_and_clip_features(tmp_path):
    from src.embedded.oracle import AttributeOracle, save_oracle
    from src.networks.small_clip import SmallClip, save_small_clip

    torch.manual_seed(0)
    save_oracle(AttributeOracle(resolution=16, width=4, hidden=8), tmp_path / "oracle.safetensors")
    save_small_clip(SmallClip(image_size=16, patch_size=8, width=32, layers=1, heads=2, embed_dim=8),
                    tmp_path / "clip.safetensors")
    for kw, feat_type in ((dict(oracle_path=str(tmp_path / "oracle.safetensors")), gm._OracleFeatures),
                          (dict(feature_clip_path=str(tmp_path / "clip.safetensors")), gm._ClipImageFeatures)):
        m = _detached(sg.StyleGANModule(**tiny(validation=kw)))
        assert isinstance(m._feature_net, feat_type)
        m._eval_start()
        m._eval_step(0)
        m._eval_step(1)
        m._eval_end("val")
        assert torch.isfinite(m.logged["val/fd"])
        if "oracle_path" in kw:
            assert 0 <= m.logged["val/attr_dist"] < 2
        else:
            assert "val/attr_dist" not in m.logged


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp16_res", "fp32"])
def test_cuda_steps_are_finite_and_sync_free(precision, monkeypatch):
    """On the GPU: fused Adam, fp16 blocks, side-stream renders; torch's sync debug mode must not
    fire in the step's own code (the renderer and the optimiser run with it off)."""
    torch.manual_seed(0)
    kw = tiny(resolution=32, optim=dict(batch_size=8), precision=dict(mode=precision), output=dict(log_every=0),
              G_kwargs={**TINY["G_kwargs"], "synthesis_kwargs": dict(channel_base=512, channel_max=32,
                                                                     num_fp16_res=2, conv_clamp=256)},
              D_kwargs=dict(channel_base=512, channel_max=32, num_fp16_res=2, conv_clamp=256),
              augment=dict(ada=True, ada_interval=1))
    m = sg.StyleGANModule(**kw).cuda()
    _detached(m)
    for i in range(2):
        m.training_step(i, i)

    def quiet(fn):
        def g(*a, **k):
            mode = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode(0)
            try:
                return fn(*a, **k)
            finally:
                torch.cuda.set_sync_debug_mode(mode)
        return g

    monkeypatch.setattr(synthetic, "render", quiet(synthetic.render))
    monkeypatch.setattr(synthetic, "sample_params", quiet(synthetic.sample_params))
    for opt in m.optimizers():
        monkeypatch.setattr(opt, "step", quiet(opt.step))
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(2, 18):
            m.training_step(i, i)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert all(torch.isfinite(p).all() for p in list(m.G.parameters()) + list(m.D.parameters()))
    assert all(torch.isfinite(p).all() for p in m.G_ema.parameters())


def test_bilinear_reflect_matches_grid_sample_and_has_double_backward():
    import torch.nn.functional as F

    from src.data.augment import bilinear_sample_reflect

    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64, requires_grad=True)
    theta = torch.tensor([[[1.3, 0.4, 0.7], [-0.3, 0.9, -1.1]], [[-1.0, 0.0, 0.2], [0.1, 1.6, 0.5]]], dtype=torch.float64)
    grid = F.affine_grid(theta, [2, 3, 11, 5], align_corners=False)  # reaches well outside: reflections
    ours = bilinear_sample_reflect(x, grid)
    ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    torch.testing.assert_close(ours, ref)
    assert torch.autograd.gradgradcheck(lambda t: bilinear_sample_reflect(t, grid), (x,))


def test_a_checkpoint_records_the_render_state_before_the_prefetched_reals():
    """The reals of the next step are rendered ahead; a resumed run must render them again."""
    from src.embedded.training.gan_reals import RealPrefetcher

    g = torch.Generator().manual_seed(3)
    reals = RealPrefetcher(2, 16)
    reals.take(g, torch.device("cpu"))
    reals.prefetch(g, torch.device("cpu"))  # the next step's reals, drawn before the checkpoint
    saved = reals.state_before_pending
    pending = reals.take(g, torch.device("cpu"))
    resumed = torch.Generator()
    resumed.set_state(saved)
    torch.testing.assert_close(RealPrefetcher(2, 16).take(resumed, torch.device("cpu")), pending, rtol=0, atol=0)


def test_the_graphed_reals_option_renders_eagerly_on_a_cpu():
    """precision.cuda_graphs replays the reals' render on a GPU only: on a CPU the same images, no graph."""
    from src.embedded.training.gan_reals import RealPrefetcher

    cpu = torch.device("cpu")
    graphed = RealPrefetcher(2, 16, cuda_graphs=True)
    got = graphed.take(torch.Generator().manual_seed(5), cpu)
    torch.testing.assert_close(got, RealPrefetcher(2, 16).take(torch.Generator().manual_seed(5), cpu), rtol=0, atol=0)
    assert graphed.graphs.recorded == 0 and len(graphed.graphs) == 0


def test_the_reals_group_sets_how_often_faces_are_moved():
    """model.reals reaches the rendered stream: every face active draws the whole pose range."""
    from src.embedded import PARAM_SPACE, sample_params
    from src.utils.errors import UserError

    m = _detached(sg.StyleGANModule(**tiny(reals=dict(active_prob=1.0, neutral_prob=0.0))))
    assert m._reals.draw == dict(active_prob=1.0, neutral_prob=0.0)
    yaw = PARAM_SPACE.idx("yaw")
    turned = {}
    for p, q in ((0.35, 0.3), (1.0, 0.0)):
        params = sample_params(2048, torch.Generator().manual_seed(0), active_prob=p, neutral_prob=q)
        half_turned = (2 * PARAM_SPACE.normalize(params)[:, yaw] - 1).abs() > 0.5
        turned[p] = float(half_turned.float().mean())
    assert turned[1.0] > 3 * turned[0.35] > 0
    with pytest.raises(UserError, match="active_prob must be a probability"):
        sample_params(2, active_prob=1.5)


def test_cuda_graphs_stay_off_on_the_cpu_and_with_augmentation():
    m = _detached(sg.StyleGANModule(**tiny(precision=dict(mode="fp32", cuda_graphs=True, graph_warmup=1))))
    for i in range(3):
        m.training_step(i, i)
    assert m._graphs is None and m._phase_graphs() is None
    assert all(torch.isfinite(p).all() for p in m.G.parameters())


def test_a_static_input_first_seen_after_a_recording_gets_its_buffer():
    """G's phase is recorded before D's input is first copied in: that must not count as a change."""
    from src.embedded.training.gan_graphs import PhaseGraphs

    graphs = PhaseGraphs(warmup=1)
    graphs._graphs["G"] = object()  # a phase recorded earlier in the iteration
    x = torch.arange(6.0).reshape(2, 3)
    buf = graphs.static_input("real", x)
    assert graphs.static_input("real", x + 1) is buf and torch.equal(buf, x + 1)
    with pytest.raises(RuntimeError, match="changed from"):
        graphs.static_input("real", torch.zeros(3, 3))


def test_validation_keeps_the_gradients_that_recorded_phases_write():
    """Lightning frees every .grad before validation (on_validation_model_zero_grad); the recorded
    phases accumulate into those tensors, so with graphs they are zeroed in place."""
    from src.embedded.training.gan_graphs import PhaseGraphs

    m = _detached(sg.StyleGANModule(**tiny()))
    m.on_validation_model_zero_grad()
    assert all(p.grad is None for p in m.parameters())
    m._graphs = PhaseGraphs(warmup=1)
    PhaseGraphs.allocate_grads(m.G.parameters())
    grads = [p.grad.fill_(1.0) for p in m.G.parameters()]
    m.on_validation_model_zero_grad()
    assert all(p.grad is g and not g.any() for p, g in zip(m.G.parameters(), grads))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_phases_recorded_before_their_gradients_were_freed_are_recorded_again():
    """What the trainer's default before validation does (zero_grad(set_to_none=True)) must not
    leave a recorded phase writing into freed memory: the phase is recorded again."""
    torch.manual_seed(0)
    kw = tiny(resolution=32, optim=dict(batch_size=8), output=dict(log_every=0),
              precision=dict(mode="fp16_res", cuda_graphs=True, graph_warmup=2),
              G_kwargs={**TINY["G_kwargs"], "synthesis_kwargs": dict(channel_base=512, channel_max=32,
                                                                     num_fp16_res=2, conv_clamp=256)},
              D_kwargs=dict(channel_base=512, channel_max=32, num_fp16_res=2, conv_clamp=256))
    m = _detached(sg.StyleGANModule(**kw).cuda())
    for i in range(4):
        m.training_step(i, i)
    assert m._graphs.recorded >= 2 and m._graphs.rerecorded == 0
    m.on_validation_model_zero_grad()  # ours: in place, the graphs stay
    m.training_step(4, 4)
    assert m._graphs.rerecorded == 0
    torch.nn.Module.zero_grad(m, set_to_none=True)  # the trainer's default
    before, recorded = [p.detach().clone() for p in m.G.parameters()], m._graphs.recorded
    m.training_step(5, 5)
    torch.cuda.synchronize()
    # G's and D's phase of that iteration: recorded again (or for the first time, a new variant)
    assert m._graphs.rerecorded + (m._graphs.recorded - recorded) == 2 and m._graphs.rerecorded >= 1
    assert all(p.grad is not None for p in [*m.G.parameters(), *m.D.parameters()])
    assert any(not torch.equal(a, p) for a, p in zip(before, m.G.parameters()))  # the step still trains
    assert all(torch.isfinite(p).all() for p in m.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp16_res", "bf16"])
def test_recorded_phases_compute_what_the_eager_phases_compute(precision):
    """A replayed G or D phase (each lazy-regulariser variant) gives the losses and gradients of the
    same phase run eagerly from the same weights, reals and CUDA random state."""
    torch.manual_seed(0)
    kw = tiny(resolution=32, optim=dict(batch_size=8), output=dict(log_every=0),
              precision=dict(mode=precision, cuda_graphs=True, graph_warmup=3),
              G_kwargs={**TINY["G_kwargs"], "synthesis_kwargs": dict(channel_base=512, channel_max=32,
                                                                     num_fp16_res=2, conv_clamp=256)},
              D_kwargs=dict(channel_base=512, channel_max=32, num_fp16_res=2, conv_clamp=256))
    m = _detached(sg.StyleGANModule(**kw).cuda())
    for i in range(8):  # 3 eager, then every variant (iterations 4 and 6 regularise) recorded
        m.training_step(i, i)
    assert m._graphs.recorded == 4
    opt_g, opt_d = m.optimizers()
    real = m._graphs.static_input("real", m._reals.take(m._gen, m.device))

    def phase(key, graphed):
        # The eager run zeroes the gradients in place as the recorded phase does: the recorded
        # graphs accumulate into those very tensors, which must stay the parameters' .grad.
        if key[0] == "G":
            m.G.requires_grad_(True), m.D.requires_grad_(False)
            fn, net = (lambda: m._g_phase(opt_g, key[1], True)), m.G
        else:
            m.G.requires_grad_(False), m.D.requires_grad_(True)
            fn, net = (lambda: m._d_phase(opt_d, real, key[1], True)), m.D
        grads_before = [p.grad for p in net.parameters()]
        out = m._graphs.run(key, fn, 10**6, params=list(net.parameters())) if graphed else fn()
        torch.cuda.synchronize()
        assert all(p.grad is g for p, g in zip(net.parameters(), grads_before))
        return [t.float().clone() for t in out], [p.grad.float().clone() for p in net.parameters()]

    for key in [("G", False), ("G", True), ("D", False), ("D", True)]:
        pl_mean = m.pl_penalty.pl_mean.clone()
        rng = torch.cuda.get_rng_state()
        out_graph, grads_graph = phase(key, True)
        m.pl_penalty.pl_mean.copy_(pl_mean)
        torch.cuda.set_rng_state(rng)
        out_eager, grads_eager = phase(key, False)
        for a, b in zip(out_graph, out_eager):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
        scale = max(g.abs().max().item() for g in grads_eager)
        for a, b in zip(grads_graph, grads_eager):
            torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3 * scale)


@pytest.mark.parametrize("override, message", [
    (dict(reals=dict(active_prob=2.0)), "model.reals.active_prob must be a probability in"),
    (dict(reals=dict(neutral_prob="abc")), "model.reals.neutral_prob must be a number, got 'abc'"),
    (dict(optim=dict(batch_size=2.5)), "model.optim.batch_size must be an integer, got 2.5"),
    (dict(precision=dict(cuda_graphs="yes")), "model.precision.cuda_graphs must be true or false"),
])
def test_a_setting_of_the_wrong_kind_is_one_line_at_construction(override, message):
    from src.utils.errors import UserError

    with pytest.raises(UserError, match=message):
        sg.StyleGANModule(**tiny(**override))
