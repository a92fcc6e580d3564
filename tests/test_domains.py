"""The real-face domains (human, anime, dog) train and animate end to end with tiny random models.

Each domain config is used as shipped (prompt vocabulary, identity metric, truncation), with only
the generator and CLIP files swapped for tiny random ones; the input face is a real sample photo
from ../shared/data/faces projected into the tiny generator.
"""
from __future__ import annotations

import pytest
import torch

import animate
from tests.conftest import SHARED_FACES, compose_train
from tests.test_train import tiny_overrides  # noqa: F401  (fixture)

DOMAINS = {"human": "human", "anime": "anime", "dog": "dog"}


def _domain_overrides(tiny_overrides: list[str], domain: str) -> list[str]:
    keep = [o for o in tiny_overrides if not o.startswith(("domain=", "domain.prompts", "domain.identity_metric"))]
    return keep + [f"domain={domain}", "domain.generator.truncation_psi=0.7"]


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_domain_trains_and_animates_a_real_photo(domain, tiny_overrides, tmp_path, capsys):  # noqa: F811
    from train import train

    if domain == "human":
        pytest.importorskip("dlib", reason="the human domain's identity metric needs dlib-bin")
    folder = SHARED_FACES / DOMAINS[domain]
    photos = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")) if folder.is_dir() else []
    if not photos:
        pytest.skip(f"no sample faces in {folder}")
    cfg = compose_train(_domain_overrides(tiny_overrides, domain)
                        + ["trainer.max_steps=1", "trainer.val_check_interval=1",
                           "callbacks.model_checkpoint.every_n_train_steps=1"], tmp_path)
    assert cfg.domain.name.startswith(domain) and len(cfg.domain.prompts.concepts) >= 5
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    if cfg.domain.identity_metric == "dlib":
        assert "test/id_drift" in metrics  # the real face-recognition embedding was used
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    out = tmp_path / "anim.gif"
    prompt = cfg.domain.prompts.template.format(cfg.domain.prompts.concepts[0])
    rc = animate.main([f"checkpoint={ckpt}", f"image={photos[0]}", "projection_steps=3", "frames=4",
                       f"text={prompt}", f"output={out}"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "PSNR" in captured.err and out.is_file() and out.with_suffix(".png").is_file()
