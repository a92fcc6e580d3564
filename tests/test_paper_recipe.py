"""The paper's recipe, option by option, against the formulas of the method as the authors' code has it:
each named option's paper value is checked numerically on small random networks and given tensors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from src.losses.animator import contrastive_clip_loss, latent_reg_loss
from src.networks.animator import RecurrentAnimator
from src.networks.clip_encoder import CLIP_MEAN, CLIP_STD, ClipEncoder
from src.utils.errors import UserError
from tests.test_animator import PAPER_LOSS, tiny_clip_model
from tests.test_animator_system import L1, build

D, L, C, H = 12, 3, 8, 10  # embedding, W+ layers, w_dim, hidden


def lrelu(x, slope):
    return torch.where(x >= 0, x, slope * x)


def reference_mapper(x, layers):
    """PixelNorm, then three equalised-lr linear layers with the fused leaky ReLU (slope 0.2, gain sqrt 2)."""
    x = x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)
    for layer in layers:
        x = lrelu(x @ (layer.weight * layer.scale).t() + layer.bias * layer.lr_mul, 0.2) * math.sqrt(2.0)
    return x


def reference_paper_ws(net, w, text, image, T, h0, slope, steps):
    """The doc's recurrence and frame latents, written out: w_t = w + M_img(e_img) + M_mot(d_t)."""
    z0 = F.normalize(text, dim=-1) + (F.normalize(image, dim=-1) if image is not None else 0)
    z, h, d = z0, h0, [torch.zeros_like(z0)]
    for r in steps:
        u = torch.cat([lrelu(z @ net.W1.weight.t() + net.W1.bias, slope), h], dim=1)
        z, h = (z + r * lrelu(u @ net.W2.weight.t() + net.W2.bias, slope),
                h + r * lrelu(u @ net.W3.weight.t() + net.W3.bias, slope))
        d.append(z - z0)
    n = w.shape[0]
    mot = reference_mapper(torch.stack(d, 1).reshape(n * T, -1), net.motion_mapper.net[1:]).view(n, T, L, C)
    img = reference_mapper(F.normalize(image, dim=-1), net.image_mapper.net[1:]).view(n, 1, L, C) if image is not None else 0
    return w[:, None] + img + mot


def inputs(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, L, C, generator=g), torch.randn(n, D, generator=g), torch.randn(n, D, generator=g),
            0.01 * torch.randn(n, H, generator=g))


@pytest.mark.parametrize("image_branch", [True, False])
def test_paper_recurrence_with_slope_001_and_the_training_step_sizes(image_branch):
    torch.manual_seed(1)
    net = RecurrentAnimator(D, L, C, hidden=H, variant="paper", rnn_slope=0.01, image_branch=image_branch)
    with torch.no_grad():  # trained mappers have biases: M_mot(0) != 0
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    w, text, image, h0 = inputs()
    T = 4
    out = net(w, text, image if image_branch else None, T, decay="none", h0=h0)
    ref = reference_paper_ws(net, w, text, image if image_branch else None, T, h0, 0.01, [0.8 / T] * (T - 1))
    torch.testing.assert_close(out["ws"], ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["offsets"], ref - w[:, None], rtol=1e-5, atol=1e-5)
    assert (out["ws"][:, 0] - w).abs().max() > 1e-3  # the authors' frame 0 is not the input face
    # the slope matters: 0.2 (ours) gives another trajectory from the same weights
    net.rnn_slope = 0.2
    other = net(w, text, image if image_branch else None, T, h0=h0)["ws"]
    assert (other - out["ws"]).abs().max() > 1e-4


def test_text_only_ignores_the_image_and_has_no_image_mapper():
    net = RecurrentAnimator(D, L, C, hidden=H, variant="paper", rnn_slope=0.01, image_branch=False)
    assert net.image_mapper is None
    w, text, image, h0 = inputs()
    a = net(w, text, None, 4, h0=h0)["ws"]
    b = net(w, text, image, 4, h0=h0)["ws"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(UserError, match="image_emb"):
        RecurrentAnimator(D, L, C, hidden=H, variant="paper")(w, text, None, 4, h0=h0)


def test_inference_step_sizes_are_the_authors_linear_decay():
    torch.manual_seed(2)
    net = RecurrentAnimator(D, L, C, hidden=H, variant="paper", rnn_slope=0.01).eval()
    w, text, image, h0 = inputs(seed=3)
    T = 16
    steps = [0.8 / T * (T - t) / T for t in range(1, T)]
    out = net(w, text, image, T, decay="linear", h0=h0)
    torch.testing.assert_close(out["ws"], reference_paper_ws(net, w, text, image, T, h0, 0.01, steps),
                               rtol=1e-5, atol=1e-5)


def test_latent_reduction_sum_is_the_sum_over_frames_of_the_per_frame_mse():
    g = torch.Generator().manual_seed(4)
    ws, w = torch.randn(2, 5, L, C, generator=g), torch.randn(2, L, C, generator=g)
    per_frame = [((ws[:, t] - w) ** 2).mean() for t in range(5)]
    torch.testing.assert_close(latent_reg_loss(ws, w, "sum"), sum(per_frame))
    torch.testing.assert_close(latent_reg_loss(ws, w, "mean"), sum(per_frame) / 5)
    # text-only: the latent is a W shared by the layers ([N,1,C] broadcasts as the authors' img_ws does)
    torch.testing.assert_close(latent_reg_loss(ws, w[:, :1], "sum"),
                               sum(((ws[:, t] - w[:, :1]) ** 2).mean() for t in range(5)))
    with pytest.raises(ValueError, match="latent reduction"):
        latent_reg_loss(ws, w, "median")


def test_pool_resize_is_adaptive_average_pooling_without_clamp():
    model = tiny_clip_model()
    enc = ClipEncoder(model, kind="module", image_size=16)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5)) * 2.4 - 1.2  # beyond [-1, 1]
    pooled = F.avg_pool2d(x, 4)
    m = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    expected = F.normalize(model.encode_image(((pooled + 1) / 2 - m) / s), dim=-1)
    torch.testing.assert_close(enc.encode_image(x, resize="pool"), expected, rtol=1e-5, atol=1e-6)
    assert (enc.encode_image(x) - expected).abs().max() > 1e-4  # antialias + clamp is another input
    with pytest.raises(UserError, match="resize"):
        enc.encode_image(x, resize="nearest")


def test_lpips_pool_mode_compares_a_large_frame_with_a_224_photo():
    from src.networks.perceptual import LPIPS

    lp = LPIPS("alex", resize=32, load=False, resize_mode="pool")
    frame = torch.rand(1, 3, 128, 128) * 2 - 1
    torch.testing.assert_close(lp.to_size(frame), F.avg_pool2d(frame, 4))
    assert lp(frame, torch.rand(1, 3, 32, 32) * 2 - 1).shape == (1,)


def test_contrastive_candidates_local_versus_global():
    captions = ["The person is smiling.", "The person is angry."]
    candidates = captions + ["The person is winking.", "The person is crying."]
    batch = {"caption": captions, "candidates": candidates, "seed": torch.tensor([1, 2])}
    local = build("paper", loss={**PAPER_LOSS, "negatives": "local"})
    assert local.contrastive_candidates(batch)[0] == captions
    glob = build("paper", loss={**PAPER_LOSS, "negatives": "global"})
    assert glob.contrastive_candidates(batch)[0] == candidates
    with pytest.raises(UserError, match="negatives"):
        build("paper", loss={**PAPER_LOSS, "negatives": "everyone"})


def test_contrastive_formula_with_the_own_prompt_among_the_candidates():
    g = torch.Generator().manual_seed(6)
    img, txt = F.normalize(torch.randn(4, 8, generator=g), dim=1), F.normalize(torch.randn(4, 8, generator=g), dim=1)
    s = img @ txt.t()
    expected = torch.log(1 + torch.exp((s - s.diag()[:, None]) / 0.07).sum(1)).mean()
    torch.testing.assert_close(contrastive_clip_loss(img, txt, 0.07), expected)


@pytest.mark.parametrize("finetune,visual_trains", [("none", False), ("text", False), ("all", True)])
def test_clip_finetune_groups_and_image_tower_gradients(finetune, visual_trains):
    m = build("paper", clip_finetune=finetune, clip_lr=1e-5, loss_clip=tiny_clip_model(seed=1))
    opt = m.configure_optimizers()
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs == ([1e-3] if finetune == "none" else [1e-3, 1e-5])
    keys = m.trainable_state_dict().keys()
    assert any(k.startswith("clip.model.visual.") for k in keys) == visual_trains
    assert any(k == "clip.model.token_embedding.weight" for k in keys) == (finetune != "none")
    total, _, _ = m.compute_losses({"caption": ["The person is smiling.", "The person is angry."],
                                    "seed": torch.tensor([1, 2])})
    total.backward()
    visual_grad = [p.grad for n, p in m.clip.named_parameters() if n.startswith("model.visual.")]
    assert any(g is not None and g.abs().sum() > 0 for g in visual_grad) == visual_trains


def test_photo_is_what_clip_sees_and_lpips_compares_against():
    seen = []

    class Recording(L1):
        def forward(self, x, y):
            seen.append(y.clone())
            return super().forward(x, y)

    m = build("paper", perceptual=Recording())
    photo = torch.rand(2, 3, 16, 16) * 2 - 1
    batch = {"caption": ["The person is smiling.", "The person is angry."], "seed": torch.tensor([1, 2])}
    _, with_photo, _ = m.compute_losses({**batch, "photo": photo})
    assert all(torch.equal(y, photo) for y in seen)
    seen.clear()
    _, without, _ = m.compute_losses(batch)
    assert not torch.equal(seen[0], photo)
    assert with_photo["lpips"] != without["lpips"]


def test_text_only_training_has_no_lpips_term():
    m = build("paper", image_branch=False, perceptual=L1())
    _, terms, _ = m.compute_losses({"caption": ["The person is smiling.", "The person is angry."],
                                    "seed": torch.tensor([1, 2])})
    assert "lpips" not in terms and {"contrastive", "smoothness", "endpoint", "latent"} <= set(terms)


def test_paper_experiments_compose_with_the_authors_values():
    from src.config.compose import compose_config

    human = compose_config("train", ["experiment=human_paper"])
    net, tr = human.model.net, human.model.train
    assert (net.variant, net.rnn_slope, net.mapper_hidden, net.image_branch) == ("paper", 0.01, 1024, True)
    assert (tr.clip_finetune, tr.clip_lr, tr.lr, list(tr.betas), tr.frames) == ("all", 1e-5, 1e-3, [0.0, 0.999], 4)
    assert {k: str(getattr(v, "value", v)) for k, v in human.loss.items() if k in
            ("latent_reduction", "negatives", "resize_224")} == {"latent_reduction": "sum", "negatives": "local",
                                                                  "resize_224": "pool"}
    assert human.data.clip_image == "photo" and human.model.inference.motion_total == "paper"
    assert (human.hardware.devices, human.data.batch_size, human.trainer.max_steps) == (4, 4, 5000)
    met = compose_config("train", ["experiment=metfaces_paper"])
    assert met.model.net.image_branch is False and met.model.train.clip_finetune == "text"
    assert (met.loss.contrastive, met.loss.lpips, met.loss.endpoint) == (0.2, 0.0, 0.0)
    assert met.domain.generator.truncation_psi == 1.0
    assert compose_config("train", ["experiment=metfaces_paper_clip03"]).loss.contrastive == 0.3


def test_paper_experiment_without_its_files_names_them_all_in_one_line(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "experiment=human_paper",
                           f"paths.checkpoints={tmp_path / 'ckpt'}", f"paths.data_dir={tmp_path / 'data'}",
                           f"paths.log_dir={tmp_path / 'logs'}"], capture_output=True, text=True, timeout=300)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needed in ("stylegan2-ffhq-1024x1024.pkl", "celebahq_latents.pt", "data.photos=", "docs/real_domains.md"):
        assert needed in err[0]
    assert not (tmp_path / "logs").exists()  # nothing half-made


def test_local_group_is_the_mean_of_each_groups_own_contrastive_loss():
    g = torch.Generator().manual_seed(7)
    img, txt = F.normalize(torch.randn(4, 8, generator=g), dim=1), F.normalize(torch.randn(4, 8, generator=g), dim=1)
    group = torch.arange(4) // 2
    allowed = group[:, None] == group[None, :]
    per_gpu = (contrastive_clip_loss(img[:2], txt[:2]) + contrastive_clip_loss(img[2:], txt[2:])) / 2
    torch.testing.assert_close(contrastive_clip_loss(img, txt, allowed=allowed), per_gpu)
    m = build("paper", loss={**PAPER_LOSS, "negatives": "local", "local_group": 2})
    assert torch.equal(m.contrastive_groups(4), allowed)
    with pytest.raises(UserError, match="local_group"):
        m.contrastive_groups(3)
