"""RecurrentAnimator: decay schedules, frame-0 property, variants, seeding, gradients.

Also holds the tiny-model builders shared by the other animator test files.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from src.networks.animator import Mapper, RecurrentAnimator, decay_factor, step_sizes
from src.utils.errors import UserError

TINY_CLIP_NAME = "lgfa-test-tiny-clip"
TINY_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"layers": 1, "width": 32, "head_width": 16, "patch_size": 8, "image_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def tiny_generator(seed: int = 0):
    """A random 16 px StyleGAN2 generator (num_ws 6, w_dim 16)."""
    from src.stylegan import Generator

    torch.manual_seed(seed)
    return Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                     mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=128, channel_max=16)).eval()


def tiny_clip_model(seed: int = 0):
    """A random open_clip CLIP (embed 16, 16 px images, context 16); nothing is downloaded."""
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    return CLIP(**TINY_CLIP_CFG).eval()


def register_tiny_clip(tmp_dir: Path) -> str:
    """Register TINY_CLIP_CFG under TINY_CLIP_NAME with open_clip (idempotent) and return the name."""
    import open_clip

    if TINY_CLIP_NAME not in open_clip.list_models():
        path = Path(tmp_dir) / f"{TINY_CLIP_NAME}.json"
        path.write_text(json.dumps(TINY_CLIP_CFG))
        open_clip.add_model_config(path)
    return TINY_CLIP_NAME


def write_tiny_models(tmp_dir: Path) -> tuple[Path, dict]:
    """Save a tiny generator (G.safetensors) and a tiny open_clip model (clip.pt) into ``tmp_dir``.
    Returns the generator path and a domain clip config that loads the CLIP from its file."""
    from src.stylegan import save_generator

    g_path = save_generator(tiny_generator(), Path(tmp_dir) / "G")
    clip_path = Path(tmp_dir) / "clip.pt"
    torch.save(tiny_clip_model().state_dict(), clip_path)
    clip_cfg = {"kind": "open_clip", "model_name": register_tiny_clip(tmp_dir), "pretrained": str(clip_path),
                "checkpoint": None}
    return g_path, clip_cfg


def tiny_domain(**over) -> dict:
    d = {"name": "test", "resolution": 16,
         "generator": {"checkpoint": None, "truncation_psi": 0.7, "noise_mode": "const"},
         "clip": {"kind": "module", "model_name": None, "pretrained": None, "checkpoint": None},
         "loss_clip": {"kind": "module", "model_name": None, "pretrained": None, "checkpoint": None},
         "prompts": {"template": "The person is {}.", "concepts": ["smiling", "angry", "winking", "crying", "pouting"]},
         "identity_metric": "none", "perceptual": "none"}
    d.update(over)
    return d


def groups(**flat) -> dict:
    """AnimatorModule's typed groups (net, train, inference, validation) from flat setting names;
    train_frames / val_frames / val_decay name train.frames / inference.frames / inference.decay."""
    from dataclasses import fields

    from src.config.animator import (AnimatorInferenceConfig, AnimatorNetConfig, AnimatorTrainConfig,
                                   AnimatorValidationConfig)

    renamed = {"train_frames": ("train", "frames"), "val_frames": ("inference", "frames"),
               "val_decay": ("inference", "decay")}
    owners = {f.name: group for group, cls in (("net", AnimatorNetConfig), ("train", AnimatorTrainConfig),
                                               ("inference", AnimatorInferenceConfig),
                                               ("validation", AnimatorValidationConfig))
              for f in fields(cls)}
    out: dict = {}
    # the unit tests' modules keep the CLIP frozen (one CLIP serves the animator and the loss) unless a
    # test asks for fine-tuning; the task's default fine-tunes it (tests/test_paper_recipe.py covers that)
    flat = {"clip_finetune": "none", **flat}
    for key, value in flat.items():
        group, name = renamed.get(key) or (owners[key], key)
        out.setdefault(group, {})[name] = value
    return out


PAPER_LOSS = {"contrastive": 0.5, "lpips": 1.0, "smoothness": 1.0, "endpoint": 1.0, "latent": 1.0,
              "identity": 0.0, "tau": 0.07}


# ----------------------------------------------------------------------------------- tests
def make(variant="ours", **kw):
    torch.manual_seed(0)
    return RecurrentAnimator(embed_dim=8, num_ws=3, w_dim=4, hidden=6, variant=variant, **kw)


def inputs(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, 4, generator=g), torch.randn(n, 8, generator=g), torch.randn(n, 8, generator=g))


def test_decay_values():
    T = 4
    assert [decay_factor(t, T, "linear") for t in (1, 2, 3)] == [0.75, 0.5, 0.25]
    assert decay_factor(1, T, "sqrt") == pytest.approx(math.sqrt(0.75))
    assert decay_factor(2, T, "exp") == pytest.approx(1 - math.exp(0.5 - 1))
    assert decay_factor(3, T, "none") == decay_factor(3, T, "const") == 1.0
    assert step_sizes(4, "none") == pytest.approx([0.2, 0.2, 0.2])
    assert step_sizes(4, "linear", strength=2.0) == pytest.approx([0.3, 0.2, 0.1])
    with pytest.raises(UserError, match="decay"):
        decay_factor(1, 4, "cosine")


def test_ours_frame0_is_input_exactly():
    m = make("ours")
    w, te, ie = inputs()
    out = m(w, te, ie, num_frames=5)
    assert out["ws"].shape == (2, 5, 3, 4) and out["offsets"].shape == (2, 5, 3, 4)
    assert torch.equal(out["ws"][:, 0], w)
    assert torch.count_nonzero(out["offsets"][:, 0]) == 0
    assert torch.equal(out["motion"][:, 0], torch.zeros(2, 8))
    assert not torch.allclose(out["ws"][:, -1], w)  # it does move
    torch.testing.assert_close(out["ws"], w[:, None] + out["offsets"])
    s = out["image_scale"]
    assert s[:, 0].eq(0).all() and torch.allclose(s[:, -1], torch.ones(2)) and (s >= 0).all() and (s <= 1).all()


def test_paper_variant_frame0_differs_and_matches_formula():
    m = make("paper")
    w, te, ie = inputs()
    out = m(w, te, ie, num_frames=4)
    assert not torch.allclose(out["ws"][:, 0], w)
    expected0 = w + m.image_mapper(torch.nn.functional.normalize(ie, dim=-1)) + m.motion_mapper(torch.zeros(2, 8))
    torch.testing.assert_close(out["ws"][:, 0], expected0)


def test_recurrence_matches_hand_unrolled_steps():
    m = make("ours").eval()
    m.h0_eval = "zero"
    w, te, ie = inputs(n=1)
    out = m(w, te, ie, num_frames=3, decay="linear")
    lr = torch.nn.functional.leaky_relu
    z0 = torch.nn.functional.normalize(te, dim=-1) + torch.nn.functional.normalize(ie, dim=-1)
    z, h = z0, torch.zeros(1, 6)
    for t, r in ((1, 0.8 / 3 * 2 / 3), (2, 0.8 / 3 * 1 / 3)):
        u = torch.cat([lr(m.W1(z), 0.2), h], 1)
        z, h = z + r * lr(m.W2(u), 0.2), h + r * lr(m.W3(u), 0.2)
        torch.testing.assert_close(out["motion"][:, t], z - z0)


def test_strength_zero_is_a_still_video():
    m = make("ours")
    w, te, ie = inputs()
    out = m(w, te, ie, num_frames=4, strength=0.0)
    assert torch.equal(out["ws"], w[:, None].expand(-1, 4, -1, -1))


def test_h0_seeded_and_zero_in_eval():
    m = make("ours")
    w, te, ie = inputs()
    a = m(w, te, ie, 4, generator=torch.Generator().manual_seed(3))["ws"]
    b = m(w, te, ie, 4, generator=torch.Generator().manual_seed(3))["ws"]
    c = m(w, te, ie, 4, generator=torch.Generator().manual_seed(4))["ws"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    z = make("ours", h0_eval="zero").eval()
    assert torch.equal(z.initial_hidden(2, "cpu", torch.float32, torch.Generator().manual_seed(1)), torch.zeros(2, 6))
    z.train()
    assert z.initial_hidden(2, "cpu", torch.float32).abs().sum() > 0


def test_image_embedding_is_stop_gradient_in_the_recurrence_and_all_params_get_grads():
    m = make("ours")
    w, te, ie = inputs()
    ie.requires_grad_(True)
    te.requires_grad_(True)
    out = m(w, te, ie, 4)
    motion_grad = torch.autograd.grad(out["motion"].sum(), [te, ie], allow_unused=True)
    assert motion_grad[0] is not None and motion_grad[0].abs().sum() > 0
    assert motion_grad[1] is None or motion_grad[1].abs().sum() == 0
    out = m(w, te, ie, 4)
    out["ws"].pow(2).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name  # no unused parameters under DDP


def test_mapper_last_activation_configurable():
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    lin = Mapper(8, 2, 4, last_activation="linear")(x)
    lrelu = Mapper(8, 2, 4, last_activation="lrelu")(x)
    assert lin.shape == lrelu.shape == (64, 2, 4)
    # lrelu(., 0.2) * sqrt(2): negative outputs are shrunk 5x relative to positive ones
    assert lin.min() < -0.5 and lrelu.min() > lin.min() / 2
    with pytest.raises(UserError):
        Mapper(8, 2, 4, last_activation="tanh")


def test_bad_arguments():
    with pytest.raises(UserError, match="variant"):
        make("other")
    m = make()
    w, te, ie = inputs()
    with pytest.raises(UserError, match="num_frames"):
        m(w, te, ie, 1)
    with pytest.raises(UserError, match="w_input"):
        m(torch.zeros(2, 4, 4), te, ie, 3)


@pytest.mark.parametrize("variant", ["ours", "paper"])
def test_w_offset_space_moves_every_layer_by_the_same_offset(variant):
    m = make(variant, offset_space="w")
    assert m.motion_mapper.num_ws == 1 and m.image_mapper.num_ws == 1  # a W offset, not one per layer
    w, te, ie = inputs()
    out = m(w, te, ie, num_frames=4)
    off = out["offsets"]
    assert off.shape == (2, 4, 3, 4) and off[:, 1:].abs().sum() > 0
    torch.testing.assert_close(off, off[:, :, :1].expand_as(off))  # the same offset on every layer
    if variant == "ours":
        assert torch.equal(out["ws"][:, 0], w)


@pytest.mark.parametrize("space", ["wplus", "w"])
def test_offset_layers_keep_the_other_layers_at_the_input(space):
    m = make(offset_space=space, offset_layers=[0, 2])
    w, te, ie = inputs()
    out = m(w, te, ie, num_frames=4)
    assert torch.equal(out["ws"][:, :, 1], w[:, None, 1].expand(2, 4, 4))  # layer 1 never moves
    assert out["offsets"][:, 1:, 0].abs().sum() > 0 and out["offsets"][:, 1:, 2].abs().sum() > 0
    # the loss reaches the mappers through the kept layers only, and still reaches them
    out["ws"][:, -1].sum().backward()
    assert m.motion_mapper.net[-1].weight.grad.abs().sum() > 0


def test_offset_space_and_layers_reject_bad_values():
    with pytest.raises(UserError, match="offset_space"):
        make(offset_space="s")
    for layers in ([], [3], [-1], [0, 0]):
        with pytest.raises(UserError, match="offset_layers"):
            make(offset_layers=layers)
