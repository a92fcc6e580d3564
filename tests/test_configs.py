"""Every config combination composes; typos, wrong types and bad values fail clearly."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from src.config.schema import validate_config
from src.utils.errors import UserError
from tests.conftest import ROOT, compose_train


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


DOMAINS, LOSSES, HARDWARE = options("domain"), options("loss"), options("hardware")


def test_groups_are_populated():
    assert {"synthetic", "human", "anime", "dog"} <= set(DOMAINS)
    assert {"paper", "no_contrastive", "no_lpips", "no_smoothness", "no_endpoint", "no_latent"} <= set(LOSSES)
    assert {"cpu", "gpu", "ddp", "slurm"} <= set(HARDWARE)
    assert options("task") and options("experiment") and options("debug")


@pytest.mark.parametrize("domain,loss,hardware", list(itertools.product(DOMAINS, LOSSES, HARDWARE)))
def test_domain_loss_hardware_compose(domain, loss, hardware, tmp_path):
    cfg = compose_train([f"domain={domain}", f"loss={loss}", f"hardware={hardware}"], tmp_path)
    OmegaConf.resolve(cfg)
    validate_config(cfg)
    assert cfg.domain.name and cfg.loss.tau == pytest.approx(0.07)
    assert cfg.model._target_ and cfg.data._target_


@pytest.mark.parametrize("group", ["experiment", "debug", "task", "logger", "callbacks", "hparams_search"])
def test_every_option_composes(group, tmp_path):
    for option in options(group):
        cfg = compose_train([f"{group}={option}"], tmp_path)
        OmegaConf.resolve(cfg)
        validate_config(cfg)


def test_shipped_and_all_layers_animator_recipes(tmp_path):
    # the shipped animator: the base recipe, fine-tuned on the identity-attribute term, then refined
    # with a stronger identity term and weaker LPIPS/latent terms
    base = compose_train(["experiment=embedded_animator"], tmp_path)
    identity = compose_train(["experiment=embedded_animator_identity"], tmp_path)
    final = compose_train(["experiment=embedded_animator_identity_refine"], tmp_path)
    OmegaConf.resolve(final)
    assert identity.domain.identity_loss.kind == "attributes" and identity.loss.identity == 60.0
    assert final.domain.identity_loss.kind == "attributes" and final.loss.identity == 120.0
    assert final.loss.lpips == final.loss.latent == 1.0 and identity.loss.lpips == identity.loss.latent == 2.0
    assert final.domain.identity_loss.checkpoint.endswith("identity_reader_synthetic.safetensors")
    assert final.model.inference.projection_reader == final.domain.identity_loss.checkpoint
    assert final.model.inference.identity_projection == 0.5 and identity.model.inference.identity_projection == 0.0
    # the fine-tuning stages start from the shipped file by default (its metadata says where it started)
    assert base.model.train.init_checkpoint is None
    for cfg in (identity, final):
        assert OmegaConf.select(cfg, "model.train.init_checkpoint", throw_on_resolution_failure=False) is not None
    assert final.model.train.init_checkpoint.endswith("assets/animator_synthetic.safetensors")
    assert final.name == "embedded-animator-identity-refine"
    for key in ("model.net.offset_layers", "model.train.clip_views", "loss.contrastive", "seed"):
        assert OmegaConf.select(final, key) == OmegaConf.select(base, key), key
    # the export records the recipe it came from, the inference projection and a portable start
    import json

    from safetensors import safe_open
    with safe_open(str(ROOT / "assets" / "animator_synthetic.safetensors"), "pt") as f:
        hp = json.loads(f.metadata()["hyper_parameters"])
    assert dict(hp["loss"]) == dict(final.loss)
    assert hp["domain"]["identity_loss"]["kind"] == "attributes"
    assert hp["net"]["offset_layers"] == list(final.model.net.offset_layers)
    assert hp["inference"]["identity_projection"] == final.model.inference.identity_projection
    assert hp["inference"]["projection_reader"] == "identity_reader_synthetic.safetensors"
    assert hp["train"]["init_checkpoint"].startswith("git show ")
    shipped = base
    assert list(shipped.model.net.offset_layers) == list(range(8)) and shipped.loss.identity == 7.0
    assert shipped.trainer.max_steps == 6000 and shipped.model.net.offset_space == "wplus"
    old = compose_train(["experiment=embedded_animator_all_layers"], tmp_path)
    assert old.model.net.offset_layers is None and old.loss.identity == 0.0 and old.trainer.max_steps == 3000
    assert old.loss.contrastive == shipped.loss.contrastive == 2.0 and old.model.train.clip_views == 4


def test_paper_weights():
    cfg = OmegaConf.load(ROOT / "conf" / "loss" / "paper.yaml")
    weights = {"contrastive": 0.5, "lpips": 1.0, "smoothness": 1.0, "endpoint": 1.0, "latent": 1.0,
               "identity": 0.0, "tau": 0.07}
    assert dict(cfg) == {**weights, "latent_reduction": "sum", "negatives": "local", "resize_224": "pool"}
    default = OmegaConf.load(ROOT / "conf" / "loss" / "default.yaml")
    assert {k: default[k] for k in weights} == weights  # ours: the same weights, our term choices
    for name in ("contrastive", "lpips", "smoothness", "endpoint", "latent"):
        ablation = OmegaConf.load(ROOT / "conf" / "loss" / f"no_{name}.yaml")
        assert ablation[name] == 0.0
        assert {k: v for k, v in ablation.items() if k != name} == {k: v for k, v in weights.items() if k != name}


@pytest.mark.parametrize("override,needle", [
    ("loss.contrastve=0.2", "contrastve"),          # typo in a key
    ("loss.tau=abc", "tau"),                         # wrong type
    ("domain.generator.noise_mode=sometimes", "noise_mode"),  # not an enum value
    ("hardware.num_nodes=two", "num_nodes"),
])
def test_typos_and_types_fail_at_compose(override, needle, tmp_path):
    with pytest.raises(Exception) as err:
        compose_train([override], tmp_path)
    assert needle in str(err.value)


@pytest.mark.parametrize("override,needle", [
    ("loss.lpips=-1", "loss.lpips"),
    ("loss.tau=0", "loss.tau"),
    ("hardware.precision=17-mixed", "hardware.precision"),
    ("domain.resolution=100", "domain.resolution"),
    ("hardware.ops_impl=triton", "hardware.ops_impl"),
    ("model.net.offset_space=style", "model.net.offset_space"),
    ("model.net.offset_layers=[0,0]", "model.net.offset_layers"),
    ("model.net.offset_layers=[-1]", "model.net.offset_layers"),
    ("model.net.offset_layers=[]", "model.net.offset_layers"),
])
def test_bad_values_fail_validation(override, needle, tmp_path):
    cfg = compose_train([override], tmp_path)
    with pytest.raises(UserError, match=needle.replace(".", r"\.")):
        validate_config(cfg)


def test_run_dir_survives_requeue(monkeypatch):
    from src.config.schema import resolve_run_dir_name

    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert resolve_run_dir_name(None) == "slurm-4242"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert resolve_run_dir_name(None) == "slurm-77_3"
    assert resolve_run_dir_name("my-exp") == "my-exp"


def test_unknown_keys_of_the_training_groups_fail_before_training(tmp_path):
    """A misspelt key in a typed group is refused when the config is validated (a sweep fails at once)."""
    from src.config.schema import validate_config
    from src.utils.errors import UserError

    for overrides, needle in ((["task=animator", "+model.net.hiddn=8"], "model.net has no setting 'hiddn'"),
                              (["task=stylegan", "+model.regularization.r1_gama=0.1"],
                               "model.regularization has no setting 'r1_gama'")):
        cfg = compose_train(overrides, tmp_path)
        with pytest.raises(UserError, match=needle):
            validate_config(cfg)
