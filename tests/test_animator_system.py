"""AnimatorModule: batched rendering, frame 0, losses/gradients, checkpoints without frozen weights,
hash checks, the FaceAnimator round trip, and the prompt data module."""
from __future__ import annotations

import warnings

import pytest
import pytorch_lightning as pl
import torch

from src.data.prompts import PromptDataModule
from src.pipeline import FaceAnimator
from src.systems.animator import AnimatorModule
from src.utils.errors import UserError
from tests.test_animator import PAPER_LOSS, groups, tiny_clip_model, tiny_domain, tiny_generator, write_tiny_models


MODULE_KWARGS = ("generator", "clip", "loss_clip", "perceptual", "identity_net", "identity_metric_net", "hash_check")


def build(variant="ours", **kw):
    """A tiny AnimatorModule; settings by their flat names (see tests.test_animator.groups)."""
    modules = {k: kw.pop(k) for k in MODULE_KWARGS if k in kw}
    modules.setdefault("generator", tiny_generator())
    modules.setdefault("clip", tiny_clip_model())
    domain, loss = kw.pop("domain", tiny_domain()), kw.pop("loss", PAPER_LOSS)
    settings = dict(hidden=8, variant=variant, train_frames=4, val_frames=5, video_every_n_steps=0)
    torch.manual_seed(0)
    return AnimatorModule(domain=domain, loss=loss, **groups(**{**settings, **kw}), **modules)


class CountCalls:
    def __init__(self, module):
        self.batches = []
        module.register_forward_hook(lambda m, args, kwargs_out: self.batches.append(args[0].shape[0]))


def test_animate_renders_all_frames_in_one_call_and_frame0_is_the_input():
    m = build("ours")
    w = m.sample_latents(3, seed=1)
    image = m.render_image(w)
    calls = CountCalls(m.generator.synthesis)
    out = m.animate(w, ["The person is smiling.", "The person is angry.", "The person is crying."],
                    num_frames=5, image=image)
    assert calls.batches == [3 * 5]  # one generator call for all N*T frames
    assert out["frames"].shape == (3, 5, 3, 16, 16) and out["ws"].shape == (3, 5, m.generator.num_ws, 16)
    assert torch.equal(out["ws"][:, 0], w)
    torch.testing.assert_close(out["frames"][:, 0], image.clamp(-1, 1), atol=1e-5, rtol=0)
    assert (out["frames"][:, -1] - out["frames"][:, 0]).abs().max() > 1e-3  # the face moves


def test_paper_variant_frame0_is_not_the_input():
    m = build("paper")
    w = m.sample_latents(2, seed=1)
    out = m.animate(w, ["The person is smiling."], num_frames=3)
    assert not torch.allclose(out["ws"][:, 0], w)
    assert (out["frames"][:, 0] - m.render_image(w).clamp(-1, 1)).abs().max() > 1e-3


def test_animate_bad_input():
    m = build()
    w = m.sample_latents(2)
    with pytest.raises(UserError, match="2 prompts for"):
        m.animate(w[:1], ["a", "b"])
    with pytest.raises(UserError, match="decay"):
        m.animate(w, ["a"], decay="fast")


class L1(torch.nn.Module):
    def forward(self, x, y):
        return (x - y).abs().flatten(1).mean(1)


def test_losses_and_gradients_reach_only_the_animator():
    m = build("ours", perceptual=L1())
    batch = {"caption": ["The person is smiling.", "The person is angry."], "seed": torch.tensor([4, 5])}
    calls = CountCalls(m.generator.synthesis)
    total, terms, out = m.compute_losses(batch)
    assert calls.batches == [2, 2 * 3]  # input face, then frames 1..T-1 in one call
    assert set(terms) == {"contrastive", "lpips", "smoothness", "endpoint", "latent"}
    assert all(torch.isfinite(v) for v in terms.values())
    expected = sum(PAPER_LOSS[k] * terms[k] for k in terms)
    torch.testing.assert_close(total, expected)
    total.backward()
    assert all(p.grad is not None for p in m.animator.parameters())
    assert all(p.grad is None for n, p in m.named_parameters() if not n.startswith("animator."))
    opt = m.configure_optimizers()
    assert opt.defaults["betas"] == (0.0, 0.999) and len(opt.param_groups) == 1
    assert sum(p.numel() for p in opt.param_groups[0]["params"]) == sum(p.numel() for p in m.animator.parameters())


def test_contrastive_weight_zero_uses_cosine_and_paper_renders_all_frames():
    m = build("paper", loss={**PAPER_LOSS, "contrastive": 0.0})
    assert m.clip_loss_weight() == ("cosine", 0.5)
    calls = CountCalls(m.generator.synthesis)
    _, terms, _ = m.compute_losses({"caption": ["The person is smiling.", "The person is smiling."],
                                    "seed": torch.tensor([1, 2])})
    assert "cosine" in terms and "contrastive" not in terms
    assert calls.batches == [2, 2 * 4]


def test_text_finetuning_keeps_the_text_tower_in_checkpoints():
    m = build(clip_finetune="text", clip_lr=1e-5, loss_clip=tiny_clip_model(seed=1))
    assert m.loss_clip is not m.clip
    keys = m.trainable_state_dict().keys()
    assert "clip.model.token_embedding.weight" in keys
    assert not any(k.startswith(("generator.", "loss_clip.", "clip.model.visual.")) for k in keys)
    opt = m.configure_optimizers()
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-5]


def test_missing_generator_file_and_module_clip_errors(tmp_path):
    d = tiny_domain(generator={"checkpoint": str(tmp_path / "G.safetensors"), "truncation_psi": 0.7,
                               "noise_mode": "const"})
    with pytest.raises(UserError, match=r"G\.safetensors"):
        AnimatorModule(domain=d, loss=PAPER_LOSS, clip=tiny_clip_model())
    with pytest.raises(UserError, match="pass the CLIP module"):
        AnimatorModule(domain=tiny_domain(), loss=PAPER_LOSS, generator=tiny_generator())
    with pytest.raises(UserError, match="loss config lacks"):
        build(loss={"contrastive": 1.0})


def test_prompt_datamodule_batches():
    dm = PromptDataModule({"template": "The person is {}.", "concepts": ["a", "b", "c", "d"]}, batch_size=3, seed=1,
                          train_batches=5, val_batches=2, test_batches=2)
    ds = dm.dataset("train")
    b0 = ds[0]
    assert len(b0["caption"]) == 3 and len(set(b0["caption"])) == 3
    assert all(c.startswith("The person is ") for c in b0["caption"])
    assert ds[0]["caption"] == b0["caption"] and torch.equal(ds[0]["seed"], b0["seed"])  # deterministic
    assert [ds[i]["caption"] for i in range(5)] != [b0["caption"]] * 5
    assert dm.dataset("val")[0]["caption"] != dm.dataset("train")[0]["caption"] or \
        not torch.equal(dm.dataset("val")[0]["seed"], b0["seed"])
    assert len(list(dm.train_dataloader())) == 5
    assert b0["candidates"] == b0["caption"]  # batch_size <= prompts: the batch's own prompts
    # more samples than prompts: further permutations, each prompt at most ceil(3/2) = 2 times
    small = PromptDataModule({"template": "{}", "concepts": ["a", "b"]}, batch_size=3).dataset("train")[0]
    assert sorted(small["candidates"]) == ["a", "b"] and max(small["caption"].count(c) for c in "ab") == 2
    with pytest.raises(UserError, match="duplicates"):
        PromptDataModule({"template": "{}", "concepts": ["a", "a"]}, batch_size=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A module built from files (generator .safetensors, open_clip .pt), trained 2 steps, saved."""
    tmp = tmp_path_factory.mktemp("animator")
    g_path, clip_cfg = write_tiny_models(tmp)
    domain = tiny_domain(generator={"checkpoint": str(g_path), "truncation_psi": 0.7, "noise_mode": "const"},
                         clip=clip_cfg, loss_clip=dict(clip_cfg))
    torch.manual_seed(0)
    settings = groups(hidden=8, train_frames=3, val_frames=4, video_every_n_steps=2, video_fps=4.0, num_videos=2,
                      export_path=str(tmp / "run" / "animator.safetensors"))
    module = AnimatorModule(domain=domain, loss=PAPER_LOSS, **settings)
    dm = PromptDataModule(domain["prompts"], batch_size=3, seed=0, train_batches=2, val_batches=1, test_batches=1)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         default_root_dir=str(tmp / "run"))
    trainer.fit(module, datamodule=dm)
    ckpt = tmp / "animator.ckpt"
    trainer.save_checkpoint(ckpt)
    return dict(tmp=tmp, module=module, trainer=trainer, ckpt=ckpt, g_path=g_path, metrics=dict(trainer.callback_metrics))


def test_training_logs_losses_metrics_and_videos(trained):
    metrics = trained["metrics"]
    for key in ("train/loss", "train/loss_contrastive", "train/loss_smoothness", "train/loss_endpoint",
                "train/loss_latent", "val/text_top1", "val/clip_score", "val/pixel_jerk", "val/flicker",
                "val/frame0_psnr", "val/clip_id_drift", "val/clip_acd"):
        assert key in metrics, key
    assert metrics["val/frame0_psnr"] >= 99.0  # variant 'ours': frame 0 is the input face
    videos = list((trained["tmp"] / "run" / "videos").glob("*.mp4"))
    assert videos and all(v.stat().st_size > 0 for v in videos)


def test_checkpoint_holds_only_trainable_weights_and_hashes(trained):
    ckpt = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    assert ckpt["state_dict"] and all(k.startswith("animator.") for k in ckpt["state_dict"])
    assert set(ckpt["frozen_hashes"]) == {"generator", "clip"}
    assert len(ckpt["frozen_hashes"]["generator"]["sha256"]) == 64
    hp = ckpt["hyper_parameters"]
    assert hp["domain"]["generator"]["checkpoint"] == str(trained["g_path"]) and hp["loss"] == PAPER_LOSS
    assert not any(k in hp for k in ("generator", "clip", "loss_clip", "perceptual"))


def test_fit_ends_by_writing_the_file_inference_reads(trained):
    path = trained["tmp"] / "run" / "animator.safetensors"
    assert path.is_file()
    pipe = FaceAnimator.from_pretrained(path)
    module = trained["module"]
    for (k, a), (k2, b) in zip(module.animator.state_dict().items(), pipe.animator.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert pipe.config["net"] == module.hparams["net"] and pipe.config["inference"]["frames"] == 4


def test_load_animator_round_trip(trained):
    module = trained["module"]
    loaded = FaceAnimator.from_pretrained(trained["ckpt"])
    assert not hasattr(loaded, "loss_clip") and not hasattr(loaded, "perceptual")  # inference only
    for (k, a), (k2, b) in zip(module.animator.state_dict().items(), loaded.animator.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    w = module.sample_latents(2, seed=3)
    a = module.animate(w, ["The person is smiling.", "The person is angry."], num_frames=4, seed=1)
    b = loaded.animate(w, ["The person is smiling.", "The person is angry."], num_frames=4, seed=1)
    torch.testing.assert_close(a["frames"], b["frames"])
    torch.testing.assert_close(a["ws"], b["ws"])


def test_hash_mismatch_and_moved_files(trained, tmp_path):
    import shutil

    from src.stylegan import save_generator

    g_path = trained["g_path"]
    backup = tmp_path / "backup"
    backup.mkdir()
    for f in (g_path, g_path.with_suffix(".json")):
        shutil.copy(f, backup / f.name)
    try:
        save_generator(tiny_generator(seed=7), g_path)  # same architecture, other weights
        with pytest.raises(UserError, match=r"generator: trained with G\.safetensors, G\.json \(sha256 [0-9a-f]{12}\)"):
            FaceAnimator.from_pretrained(trained["ckpt"])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            FaceAnimator.from_pretrained(trained["ckpt"], hash_check="warn")
        assert any("frozen weights differ" in str(w.message) for w in caught)
    finally:
        for f in backup.iterdir():
            shutil.copy(f, g_path.parent / f.name)
    moved = tmp_path / "moved" / "G2.safetensors"
    moved.parent.mkdir()
    shutil.copy(g_path, moved)
    shutil.copy(g_path.with_suffix(".json"), moved.with_suffix(".json"))
    loaded = FaceAnimator.from_pretrained(trained["ckpt"], overrides={"domain.generator.checkpoint": str(moved)})
    assert loaded.config["domain"]["generator"]["checkpoint"] == str(moved)
    with pytest.raises(UserError, match="not found"):
        FaceAnimator.from_pretrained(tmp_path / "nope.ckpt")


def test_lightning_resume_restores_trainable_weights(trained, tmp_path):
    from src.systems.checkpoint_io import AtomicCheckpointIO

    hp = dict(trained["module"].hparams)
    fresh = AnimatorModule(**hp)
    assert not all(torch.equal(a, b) for a, b in zip(fresh.animator.parameters(), trained["module"].animator.parameters()))
    seen = {}

    class Probe(pl.Callback):
        def on_train_start(self, trainer, module):
            seen["weights"] = [p.detach().clone() for p in module.animator.parameters()]
            seen["step"] = trainer.global_step

    dm = PromptDataModule(hp["domain"]["prompts"], batch_size=3, seed=0, train_batches=2, val_batches=1)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, default_root_dir=str(tmp_path), plugins=[AtomicCheckpointIO()],
                         callbacks=[Probe()])
    trainer.fit(fresh, datamodule=dm, ckpt_path=str(trained["ckpt"]))
    assert seen["step"] == 2
    for a, b in zip(seen["weights"], trained["module"].animator.parameters()):
        assert torch.equal(a, b.detach())


def test_identity_metric_from_the_domain(tmp_path):
    from src.embedded.oracle import AttributeOracle, save_oracle

    torch.manual_seed(0)
    path = save_oracle(AttributeOracle(resolution=16, width=4, hidden=8).eval(), tmp_path / "oracle")
    batch = {"caption": ["The person is smiling.", "The person is angry."], "seed": torch.tensor([1, 2])}
    m = build(domain=tiny_domain(identity_metric="oracle"), identity_metric_path=str(path))
    metrics = m.evaluate_batch(batch)
    assert {"id_drift", "id_drift_max", "acd", "text_top1", "frame0_psnr"} <= set(metrics)
    m = build(domain=tiny_domain(identity_metric="oracle"))  # no weights: CLIP stands in, with a warning
    with pytest.warns(UserWarning, match="identity metric 'oracle' unavailable"):
        metrics = m.evaluate_batch(batch)
    assert "clip_id_drift" in metrics and "id_drift" not in metrics


def test_hydra_containers_become_plain_hparams():
    from omegaconf import OmegaConf

    m = build(domain=OmegaConf.create(tiny_domain()), loss=OmegaConf.create(PAPER_LOSS),
              betas=OmegaConf.create([0.0, 0.99]))

    def plain(x):
        if isinstance(x, dict):
            return all(isinstance(k, str) and plain(v) for k, v in x.items())
        if isinstance(x, (list, tuple)):
            return all(plain(v) for v in x)
        return x is None or isinstance(x, (str, int, float, bool))

    assert plain(dict(m.hparams)) and m.hparams["train"]["betas"] == [0.0, 0.99]
    assert m.configure_optimizers().defaults["betas"] == (0.0, 0.99)


def test_clip_views_average_the_clip_loss_over_augmented_copies():
    batch = {"caption": ["The person is smiling.", "The person is angry."], "seed": torch.tensor([4, 5])}
    m = build("ours", clip_views=3, clip_view_noise=0.02)
    total, terms, _ = m.compute_losses(batch)
    assert torch.isfinite(terms["contrastive"])
    total.backward()
    assert all(p.grad is not None for p in m.animator.parameters())
    assert not any("pipe" in k for k in m.state_dict())  # the augmentation is not a weight
    plain = build("ours")
    _, plain_terms, _ = plain.compute_losses(batch)
    assert float(plain_terms["contrastive"]) != float(terms["contrastive"])  # the views change the term
    with pytest.raises(UserError, match="clip_views"):
        build("ours", clip_views=-1)


def test_batch_transfer_keeps_seeds_on_the_cpu():
    # The seeds only seed CPU generators: moving them to the GPU would force a read-back (host
    # sync) every step. "meta" stands in for the accelerator here.
    m = build()
    batch = {"caption": ["a", "b"], "seed": torch.tensor([3, 4]), "ws": torch.zeros(2, 4)}
    moved = m.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert moved["seed"] is batch["seed"] and moved["seed"].device.type == "cpu"
    assert moved["ws"].device.type == "meta" and moved["caption"] == ["a", "b"]
    plain = m.transfer_batch_to_device({"ws": torch.zeros(1)}, torch.device("meta"), 0)
    assert plain["ws"].device.type == "meta"


def test_motion_total_train_matches_the_training_step_sum():
    """Inference videos move as far in total as training videos: sum r_t = 0.8 (T_train - 1) / T_train
    whatever the frame count and decay; 'paper' keeps the authors' step sizes."""
    from src.networks.animator import step_sizes, training_matched_strength

    for frames, decay in ((16, "linear"), (16, "none"), (9, "sqrt"), (24, "exp"), (4, "none")):
        k = training_matched_strength(frames, decay, train_frames=4)
        assert sum(step_sizes(frames, decay, k)) == pytest.approx(0.6)
    assert training_matched_strength(16, "linear", 4) == pytest.approx(1.6)
    assert training_matched_strength(4, "none", 4) == pytest.approx(1.0)
    m = build()
    w = m.sample_latents(2, seed=3)
    prompts = ["The person is smiling.", "The person is angry."]
    frames = int(m.pipeline.inference_cfg.frames) + 1  # no resampling at or above the file's frame count
    k = training_matched_strength(frames, "linear", 4)
    trained = m.animate(w, prompts, num_frames=frames, decay="linear")  # hparams default: train
    paper_scaled = m.animate(w, prompts, num_frames=frames, decay="linear", strength=k, motion_total="paper")
    torch.testing.assert_close(trained["ws"], paper_scaled["ws"])
    paper = m.animate(w, prompts, num_frames=frames, decay="linear", motion_total="paper")
    assert not torch.allclose(paper["ws"][:, -1], trained["ws"][:, -1])  # linear decay: factor 1.6
    with pytest.raises(UserError, match="motion_total"):
        m.animate(w, prompts, motion_total="more")
    with pytest.raises(UserError, match="motion_total"):
        build(motion_total="more")


def test_short_videos_play_the_whole_motion():
    """Under motion_total 'train' a video shorter than the file's inference.frames is that motion
    resampled: it starts at the input, ends where the full-length video ends, and every frame lies
    on the full-length trajectory. 'paper' runs the recurrence for the frames asked."""
    from src.networks.animator import resample_frames

    m = build()
    full = int(m.pipeline.inference_cfg.frames)
    w = m.sample_latents(2, seed=3)
    prompts = ["The person is smiling.", "The person is angry."]
    long = m.animate(w, prompts, num_frames=full, decay="linear")
    for frames in (2, 3, 4, full - 1):
        short = m.animate(w, prompts, num_frames=frames, decay="linear")
        assert short["ws"].shape[1] == frames and torch.equal(short["ws"][:, 0], w)
        torch.testing.assert_close(short["ws"][:, -1], long["ws"][:, -1])
        torch.testing.assert_close(short["offsets"], resample_frames(long["offsets"], frames))
    grid = max(k for k in range(2, full) if (full - 1) % (k - 1) == 0)  # frames that fall on the full grid
    on_grid = m.animate(w, prompts, num_frames=grid, decay="linear")
    torch.testing.assert_close(on_grid["ws"], long["ws"][:, ::(full - 1) // (grid - 1)])
    paper = m.animate(w, prompts, num_frames=4, decay="linear", motion_total="paper")
    assert not torch.allclose(paper["ws"][:, -1], long["ws"][:, -1])


def test_resampling_keeps_the_ends_and_interpolates_linearly():
    from src.networks.animator import resample_frames

    x = torch.randn(3, 16, 2, 5)
    four = resample_frames(x, 4)
    assert torch.equal(four, x[:, ::5])  # 0, 5, 10, 15: on the grid
    two = resample_frames(x, 2)
    assert torch.equal(two[:, 0], x[:, 0]) and torch.equal(two[:, 1], x[:, -1])
    up = resample_frames(x, 31)  # half steps
    torch.testing.assert_close(up[:, 1::2], (x[:, :-1] + x[:, 1:]) / 2)
    assert resample_frames(x, 16) is x
    with pytest.raises(UserError, match="at least 2 frames"):
        resample_frames(x, 1)


def test_without_image_mapper_the_offsets_are_motion_only_and_reload(tmp_path):
    m = build(use_image_mapper=False)
    assert m.animator.image_mapper is None
    assert not any(k.startswith("animator.image_mapper") for k in m.trainable_state_dict())
    w = m.sample_latents(2, seed=3)
    out = m.animate(w, ["The person is smiling."], num_frames=4)
    assert torch.equal(out["ws"][:, 0], w)
    path = m.export(tmp_path / "a.safetensors")
    back = FaceAnimator.from_pretrained(path, generator=m.generator, clip=m.clip)
    assert back.animator.image_mapper is None
    torch.testing.assert_close(back.animate(w, ["The person is smiling."], num_frames=4)["ws"], out["ws"])


def test_w_space_offsets_on_chosen_layers_export_and_reload(tmp_path):
    m = build(offset_space="w", offset_layers=[0, 1])
    w = m.sample_latents(2, seed=3)
    out = m.animate(w, ["The person is smiling."], num_frames=4)
    assert torch.equal(out["ws"][:, :, 2:], w[:, None, 2:].expand_as(out["ws"][:, :, 2:]))
    path = m.export(tmp_path / "a.safetensors")
    back = FaceAnimator.from_pretrained(path, generator=m.generator, clip=m.clip)
    assert back.animator.offset_space == "w" and back.animator.offset_layers == [0, 1]
    torch.testing.assert_close(back.animate(w, ["The person is smiling."], num_frames=4)["ws"], out["ws"])



def test_init_checkpoint_warm_starts_the_animator_from_an_export_or_a_lightning_checkpoint(tmp_path):
    m = build()
    with torch.no_grad():
        for p in m.animator.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # away from the seeded initialisation every build starts at
    path = m.export(tmp_path / "a.safetensors")
    warm = build(init_checkpoint=str(path), generator=m.generator, clip=m.clip)
    for (name, a), b in zip(m.animator.state_dict().items(), warm.animator.state_dict().values()):
        torch.testing.assert_close(b, a, msg=name)
    cold = build(generator=m.generator, clip=m.clip)
    assert not all(torch.equal(a, b) for a, b in zip(cold.animator.parameters(), m.animator.parameters()))
    # the same from a Lightning checkpoint (the path is kept in hparams, so the run records its start)
    trainer = pl.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.strategy.connect(m)
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    warm2 = build(init_checkpoint=str(tmp_path / "a.ckpt"), generator=m.generator, clip=m.clip)
    assert warm2.hparams["train"]["init_checkpoint"] == str(tmp_path / "a.ckpt")
    for a, b in zip(m.animator.parameters(), warm2.animator.parameters()):
        assert torch.equal(a, b)
    # an inference rebuild does not read it again (the export's own weights win, the file may be gone)
    (tmp_path / "a.ckpt").unlink()
    warm2.export(tmp_path / "b.safetensors")
    back = FaceAnimator.from_pretrained(tmp_path / "b.safetensors", generator=m.generator, clip=m.clip)
    for a, b in zip(m.animator.parameters(), back.animator.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(UserError, match="does not fit"):
        build(init_checkpoint=str(path), use_image_mapper=False, generator=m.generator, clip=m.clip)
    with pytest.raises(UserError, match="model.train.init_checkpoint: animator checkpoint not found"):
        build(init_checkpoint=str(tmp_path / "missing.safetensors"))
    (tmp_path / "other.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(UserError, match="model.train.init_checkpoint: .*not an exported animator"):
        build(init_checkpoint=str(tmp_path / "other.safetensors"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        other = tiny_generator()
        with torch.no_grad():
            next(other.parameters()).add_(1.0)  # other weights than the start's
        build(init_checkpoint=str(path), clip=m.clip, generator=other)
    assert any("another generator" in str(w.message) for w in caught)


def test_identity_projection_removes_the_reading_change_keeps_frame0_and_travels_with_the_export(tmp_path):
    from src.embedded import PARAM_SPACE
    from src.identity.projection import identity_jacobian
    from src.embedded.oracle import AttributeOracle, save_oracle
    names = PARAM_SPACE.identity_names
    torch.manual_seed(0)
    save_oracle(AttributeOracle(resolution=16, width=2, hidden=4, num_params=len(names)).eval(), tmp_path / "reader", names)
    reader_path = str(tmp_path / "reader.safetensors")
    m = build()
    w = m.sample_latents(2, seed=3)
    plain = m.animate(w, ["The person is smiling."], num_frames=4)
    with pytest.raises(UserError, match="projection_reader"):
        m.animate(w, ["The person is smiling."], num_frames=4, identity_projection=1.0)
    m = build(identity_projection=1.0, projection_reader=reader_path)
    out = m.animate(w, ["The person is smiling."], num_frames=4)
    assert torch.equal(out["ws"][:, 0], w) and torch.equal(out["frames"][:, 0], plain["frames"][:, 0])
    assert not torch.equal(out["ws"], plain["ws"])
    # to first order the projected offsets leave the readings the face shows unchanged
    reader = m.projection_reader()
    jac, _ = identity_jacobian(lambda ws: m.generator.synthesis(ws, noise_mode=m.noise_mode), reader, w,
                            m.animator.layer_mask)
    seen = [i for i, n in enumerate(names) if n != "glasses_color"]
    before = (jac @ plain["offsets"].flatten(2).transpose(1, 2))[:, seen]
    after = (jac @ out["offsets"].flatten(2).transpose(1, 2))[:, seen]
    assert after.abs().max() < 1e-2 * before.abs().max()
    torch.testing.assert_close(m.animate(w, ["The person is smiling."], num_frames=4, identity_projection=0.0)["ws"],
                               plain["ws"])
    with pytest.raises(UserError, match="identity_projection"):
        m.animate(w, ["The person is smiling."], num_frames=4, identity_projection=2.0)
    path = m.export(tmp_path / "a.safetensors", relative_to=tmp_path)
    back = FaceAnimator.from_pretrained(path, generator=m.generator, clip=m.clip)
    assert back.config["inference"]["projection_reader"] == reader_path and back.config["inference"]["identity_projection"] == 1.0
    # Lightning validates and tests under torch.inference_mode(), where a model trained with
    # model.inference.identity_projection > 0 first loads its reader and takes the Jacobian
    with torch.inference_mode():
        w_inf = back.sample_latents(2, seed=3)
        torch.testing.assert_close(back.animate(w_inf, ["The person is smiling."], num_frames=4)["ws"], out["ws"])
    with torch.no_grad():
        torch.testing.assert_close(back.animate(w, ["The person is smiling."], num_frames=4)["ws"], out["ws"])
    torch.testing.assert_close(back.animate(w, ["The person is smiling."], num_frames=4)["ws"], out["ws"])
    with pytest.raises(UserError, match="projection_reader"):
        build(identity_projection=0.5)
    with pytest.raises(UserError, match="identity_projection"):
        build(identity_projection=-0.1, projection_reader=reader_path)


def test_files_with_ungrouped_settings_load_into_the_groups(tmp_path):
    """Animator files written before the settings were grouped (every setting at the top level)
    rebuild the same animator: the reader moves each setting into its group."""
    import json

    from safetensors.torch import save_file

    from src.pipeline.animator_file import FORMAT

    m = build(offset_space="w", offset_layers=[0, 1], identity_projection=0.0, train_frames=4, val_frames=5)
    path = m.export(tmp_path / "new.safetensors")
    hp = m.config()
    flat = {"domain": hp["domain"], "loss": hp["loss"], "hash_check": hp["hash_check"], "inference_only": True,
            "train_frames": hp["train"]["frames"], "val_frames": hp["inference"]["frames"],
            "val_decay": hp["inference"]["decay"]}
    for group in ("net", "train", "inference", "validation"):  # the settings files had then
        flat.update({k: v for k, v in hp[group].items() if k not in ("frames", "decay", "export_path")})
    save_file({k: v.contiguous() for k, v in m.trainable_state_dict().items()}, str(tmp_path / "old.safetensors"),
              metadata={"format": FORMAT, "hyper_parameters": json.dumps(flat), "frozen_hashes": json.dumps(m.frozen_hashes)})
    new = FaceAnimator.from_pretrained(path, generator=m.generator, clip=m.clip)
    old = FaceAnimator.from_pretrained(tmp_path / "old.safetensors", generator=m.generator, clip=m.clip)
    assert (old.net_cfg, old.train_cfg, old.inference_cfg) == (new.net_cfg, new.train_cfg, new.inference_cfg)
    assert old.animator.offset_space == "w" and old.animator.offset_layers == [0, 1]
    w = m.sample_latents(2, seed=3)
    torch.testing.assert_close(old.animate(w, ["The person is smiling."], num_frames=4)["ws"],
                               new.animate(w, ["The person is smiling."], num_frames=4)["ws"])


def test_unknown_setting_in_a_group_is_one_line():
    with pytest.raises(UserError, match=r"model.net has no setting 'hiddn'"):
        AnimatorModule(domain=tiny_domain(), loss=PAPER_LOSS, net={"hiddn": 8}, generator=tiny_generator(),
                       clip=tiny_clip_model())


@pytest.mark.parametrize("group, values, message", [
    ("train", {"lr": "fast"}, "model.train.lr must be a number, got 'fast'"),
    ("train", {"frames": 4.5}, "model.train.frames must be an integer, got 4.5"),
    ("train", {"clip_finetune": None}, "model.train.clip_finetune must be a string, got null"),
    ("net", {"hidden": True}, "model.net.hidden must be an integer, got True"),
])
def test_a_setting_of_the_wrong_kind_is_one_line(group, values, message):
    with pytest.raises(UserError, match=message):
        AnimatorModule(domain=tiny_domain(), loss=PAPER_LOSS, **{group: values}, generator=tiny_generator(),
                       clip=tiny_clip_model())
