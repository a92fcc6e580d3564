"""Face recogniser of the synthetic domain and the animator's identity loss wired from the config."""
from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch

from src.data.augment import degrade
from src.embedded import PARAM_SPACE, render, sample_params
from src.embedded.params import identity_twins, with_expressions_of
from src.embedded.datamodule import RenderIndexDataModule
from src.embedded.face_id import SyntheticFaceID, load_face_id, save_face_id
from src.identity.arcface import ArcFaceIdentity
from src.identity.build import build_identity_net, identity_net_files
from src.embedded.training.face_id import FaceIDModule, info_nce
from src.utils.errors import UserError


def test_twins_move_exactly_the_chosen_visible_identity_attributes():
    p = sample_params(200, torch.Generator().manual_seed(0))
    twins, changed = identity_twins(p, torch.Generator().manual_seed(1), changes=2)
    ident = PARAM_SPACE.mask("identity")
    assert (changed.sum(1) == 2).all() and not changed[:, ~ident].any()
    assert torch.equal(twins[:, ~ident], p[:, ~ident])  # expressions untouched
    unit_p, unit_t = PARAM_SPACE.normalize(p), PARAM_SPACE.normalize(twins)
    moved = (unit_t - unit_p).abs()
    assert (moved[changed] >= 0.2 - 1e-5).all()       # at least min_step of the range (discrete: a class)
    assert (moved[~changed] == 0).all()
    gc, gl = PARAM_SPACE.idx("glasses_color"), PARAM_SPACE.idx("glasses")
    assert not changed[p[:, gl] < 0.5, gc].any()      # invisible frame colours are never the difference
    again, _ = identity_twins(p, torch.Generator().manual_seed(1), changes=2)
    assert torch.equal(again, twins)
    with pytest.raises(UserError):
        identity_twins(p, torch.Generator().manual_seed(1), changes=0)


def test_with_expressions_of_keeps_identity():
    a, b = sample_params(4, torch.Generator().manual_seed(0)), sample_params(4, torch.Generator().manual_seed(1))
    out = with_expressions_of(a, b)
    ident = PARAM_SPACE.mask("identity")
    assert torch.equal(out[:, ident], a[:, ident]) and torch.equal(out[:, ~ident], b[:, ~ident])


def test_info_nce_prefers_the_matching_pair():
    e = torch.nn.functional.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    good = info_nce(e, e, -e, tau=0.1)
    bad = info_nce(e, e.roll(1, 0), e, tau=0.1)  # the negatives equal the anchors
    assert good < 0.05 < bad


def test_degrade_is_seeded_bounded_and_off_at_zero():
    x = render(sample_params(4, torch.Generator().manual_seed(0)), 32)
    assert torch.equal(degrade(x, torch.Generator().manual_seed(0), 0.0), x)
    a = degrade(x, torch.Generator().manual_seed(3), 1.0)
    assert torch.equal(a, degrade(x, torch.Generator().manual_seed(3), 1.0))
    assert a.shape == x.shape and a.abs().max() <= 1 and not torch.equal(a, x)


def test_forward_unit_norm_and_save_load_round_trip(tmp_path):
    net = SyntheticFaceID(resolution=32, width=4, hidden=16, embed_dim=8).eval()
    x = render(sample_params(3, torch.Generator().manual_seed(1)), 32)
    with torch.no_grad():
        e = net(x)
        assert e.shape == (3, 8) and torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
        assert net(torch.nn.functional.interpolate(x, size=48)).shape == (3, 8)  # other sizes are resized
    path = save_face_id(net, tmp_path / "fid.safetensors", {"note": "x"})
    meta = json.loads((tmp_path / "fid.json").read_text())
    assert meta["class"] == "SyntheticFaceID" and meta["init_kwargs"]["embed_dim"] == 8 and meta["note"] == "x"
    back = load_face_id(tmp_path / "fid")
    assert not any(p.requires_grad for p in back.parameters())
    with torch.no_grad():  # stored in fp16: equal up to fp16 rounding of the weights
        torch.testing.assert_close(back(x), net(x), atol=5e-3, rtol=0)
    assert identity_net_files("synthetic", str(tmp_path / "fid")) == [str(path), str(tmp_path / "fid.json")]
    with pytest.raises(UserError, match="not found"):
        load_face_id(tmp_path / "missing")
    (tmp_path / "fid.json").write_text(json.dumps({**meta, "class": "AttributeOracle"}))
    with pytest.raises(UserError, match="not a SyntheticFaceID"):
        load_face_id(tmp_path / "fid")
    (tmp_path / "fid.json").write_text("{not json")
    with pytest.raises(UserError, match="not a face-id description"):
        load_face_id(tmp_path / "fid")
    (tmp_path / "fid.json").write_text(json.dumps(meta))
    path.write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a readable safetensors"):
        load_face_id(tmp_path / "fid")


def test_build_identity_net_kinds(tmp_path):
    assert build_identity_net("none", None) is None
    with pytest.raises(UserError, match="needs domain.identity_loss.checkpoint"):
        build_identity_net("synthetic", None)
    with pytest.raises(UserError, match="must be one of"):
        build_identity_net("facenet", "x")
    save_face_id(SyntheticFaceID(resolution=16, width=2, hidden=4, embed_dim=4), tmp_path / "f")
    assert isinstance(build_identity_net("synthetic", str(tmp_path / "f.safetensors")), SyntheticFaceID)


def test_arcface_identity_is_differentiable_and_crops():
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen["shape"] = tuple(x.shape)
            return torch.nn.functional.normalize(x.mean((2, 3)), dim=1)

    net = ArcFaceIdentity(Probe())
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    net(x * 2 - 1).sum().backward()
    assert seen["shape"] == (2, 3, 112, 112) and x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(UserError):
        ArcFaceIdentity(Probe(), crop="tight")


def test_lightning_fit_logs_twin_accuracy_and_exports(tmp_path):
    model = FaceIDModule(resolution=16, width=4, hidden=16, embed_dim=8, batch_size=6, warmup_steps=1,
                         export_path=str(tmp_path / "fid"))
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, val_check_interval=3,
                         check_val_every_n_epoch=None, num_sanity_val_steps=0)
    trainer.fit(model, RenderIndexDataModule(val_batches=2, test_batches=1))
    m = trainer.callback_metrics
    assert {"val/twin_acc", "val/cos_positive", "val/cos_twin", "val/twin_acc_min", "train/loss"} <= set(m)
    assert 0.0 <= float(m["val/twin_acc"]) <= 1.0
    assert load_face_id(tmp_path / "fid").embed_dim == 8


def test_a_few_steps_learn_to_tell_twins_apart():
    """The contrastive objective with hard twins lowers its loss on a fixed batch (CPU, tiny net)."""
    torch.manual_seed(0)
    model = FaceIDModule(resolution=16, width=8, hidden=32, embed_dim=16, batch_size=16, degrade=0.0)
    images, _ = model._triplets((0, "fixed"), 1, 0.0)
    opt = torch.optim.Adam(model.net.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        a, p, n = model.net(images).chunk(3)
        loss = info_nce(a, p, n, 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.6 * losses[0]


def test_task_config_composes(tmp_path):
    from hydra.utils import instantiate

    from tests.conftest import compose_train

    cfg = compose_train(["experiment=embedded_face_id", "hardware=cpu"], tmp_path)
    assert cfg.task.name == "face_id" and cfg.task.monitor == "val/twin_acc" and cfg.trainer.max_steps > 0
    model = instantiate(cfg.model)
    assert isinstance(model, FaceIDModule) and model.hparams.resolution == 128


def test_identity_loss_needs_a_network_in_the_config(tmp_path):
    from src.config.schema import validate_config
    from tests.conftest import compose_train

    cfg = compose_train(["task=animator", "domain=synthetic", "loss.identity=1.0"], tmp_path)
    with pytest.raises(UserError, match="domain.identity_loss.kind"):
        validate_config(cfg)
    cfg = compose_train(["task=animator", "domain=synthetic", "loss.identity=1.0", "domain.identity_loss.kind=synthetic",
                         "domain.identity_loss.checkpoint=x.safetensors"], tmp_path)
    validate_config(cfg)


def test_animator_builds_its_identity_loss_from_the_domain(tmp_path):
    from tests.test_animator import PAPER_LOSS, tiny_domain
    from tests.test_animator_system import build

    save_face_id(SyntheticFaceID(resolution=16, width=2, hidden=4, embed_dim=4), tmp_path / "fid")
    loss = {**PAPER_LOSS, "identity": 2.0}
    domain = tiny_domain(identity_loss={"kind": "synthetic", "checkpoint": str(tmp_path / "fid.safetensors")})
    m = build(domain=domain, loss=loss)
    assert isinstance(m.identity_net, SyntheticFaceID) and "identity_net" in m.frozen_hashes
    batch = {"caption": ["The person is smiling.", "The person is angry."], "seed": torch.tensor([4, 5])}
    total, terms, _ = m.compute_losses(batch)
    assert "identity" in terms and torch.isfinite(terms["identity"])
    total.backward()
    assert all(p.grad is None for p in m.identity_net.parameters())
    with pytest.raises(UserError, match="needs an identity network"):
        build(domain=tiny_domain(), loss=loss)
    from src.pipeline import FaceAnimator

    pipe = FaceAnimator(m.config(), generator=m.generator, clip=m.clip)  # inference never loads it
    assert not any(isinstance(x, SyntheticFaceID) for x in pipe.modules())


def test_shipped_animator_experiment_points_at_the_shipped_recogniser(tmp_path):
    from pathlib import Path

    from src.config.schema import validate_config
    from tests.conftest import compose_train

    cfg = compose_train(["experiment=embedded_animator"], tmp_path)
    validate_config(cfg)
    assert cfg.loss.identity > 0 and str(cfg.domain.identity_loss.kind.value) == "synthetic"
    net = build_identity_net("synthetic", cfg.domain.identity_loss.checkpoint)
    assert Path(cfg.domain.identity_loss.checkpoint).is_file() and net.embed_dim == 128
    g = torch.Generator().manual_seed(0)
    anchor = sample_params(16, g)
    positive = with_expressions_of(anchor, sample_params(16, g))   # same person, new expression and pose
    twin = with_expressions_of(identity_twins(anchor, g, changes=1)[0], sample_params(16, g))
    with torch.no_grad():
        a, p, n = net(render(torch.cat([anchor, positive, twin]), 128)).chunk(3)
    cos_p, cos_n = (a * p).sum(1), (a * n).sum(1)
    assert cos_p.mean() > 0.9 and cos_p.mean() - cos_n.mean() > 0.2 and (cos_p > cos_n).float().mean() >= 0.8


def test_twins_never_change_what_cannot_be_seen_even_when_asked_for_many():
    p = sample_params(50, torch.Generator().manual_seed(3))
    p[:, PARAM_SPACE.idx("glasses")] = 0.0  # frame colour invisible: 19 visible identity attributes
    twins, changed = identity_twins(p, torch.Generator().manual_seed(4), changes=20)
    assert (changed.sum(1) == 19).all() and not changed[:, PARAM_SPACE.idx("glasses_color")].any()
    assert not changed[:, ~PARAM_SPACE.mask("identity")].any()


def test_identity_reader_distance_counts_only_what_the_input_shows():
    """The attribute reader's identity distance: mean |f - g| over the attributes; the frame colour
    counts only where the input face wears glasses; identity_loss uses the reader's distance."""
    from src.losses.animator import identity_loss
    from src.identity.reader import IdentityAttributeReader
    from src.embedded.oracle import AttributeOracle

    names = ["glasses", "glasses_color", "mouth_width"]
    reader = IdentityAttributeReader(AttributeOracle(resolution=16, width=2, hidden=4, num_params=3), names).eval()
    g = torch.tensor([[[0.0, 0.5, 0.5]], [[1.0, 0.5, 0.5]]])           # [N=2, 1, A]: no glasses / glasses
    f = torch.tensor([[[0.0, 0.9, 0.7]], [[1.0, 0.9, 0.7]]])           # frame colour and mouth moved
    d = reader.identity_distance(f, g)
    assert d.shape == (2, 1)
    assert torch.allclose(d[:, 0], torch.tensor([(0.0 + 0.2) / 2, (0.0 + 0.4 + 0.2) / 3]))
    assert torch.equal(reader.identity_distance(g, g), torch.zeros(2, 1))
    with pytest.raises(UserError, match="identity parameters only"):
        IdentityAttributeReader(reader.net, ["smile", "glasses", "mouth_width"])
    frames = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    loss = identity_loss(reader, frames, frames[:, 0])
    readings = reader(frames.flatten(0, 1)).view(2, 3, 3)
    assert torch.allclose(loss, reader.identity_distance(readings, readings[:, :1]).mean())


def test_animator_builds_the_attribute_identity_loss(tmp_path):
    from src.embedded import PARAM_SPACE
    from src.identity.reader import IdentityAttributeReader
    from src.embedded.oracle import AttributeOracle, save_oracle
    from tests.test_animator import PAPER_LOSS, tiny_domain
    from tests.test_animator_system import build

    names = PARAM_SPACE.identity_names
    save_oracle(AttributeOracle(resolution=16, width=2, hidden=4, num_params=len(names)), tmp_path / "reader", names)
    domain = tiny_domain(identity_loss={"kind": "attributes", "checkpoint": str(tmp_path / "reader.safetensors")})
    m = build(domain=domain, loss={**PAPER_LOSS, "identity": 3.0})
    assert isinstance(m.identity_net, IdentityAttributeReader) and "identity_net" in m.frozen_hashes
    batch = {"caption": ["The person is smiling.", "The person is angry."], "seed": torch.tensor([4, 5])}
    total, terms, _ = m.compute_losses(batch)
    assert "identity" in terms and torch.isfinite(terms["identity"]) and terms["identity"] >= 0
    total.backward()
    assert all(p.grad is None for p in m.identity_net.parameters())
    save_oracle(AttributeOracle(resolution=16, width=2, hidden=4), tmp_path / "judge")  # every parameter
    with pytest.raises(UserError, match="identity parameters only"):
        build_identity_net("attributes", str(tmp_path / "judge.safetensors"))
