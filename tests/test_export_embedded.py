"""scripts/export_embedded.py: the assets folder it writes, the inference setting and start it records."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from tests.conftest import ROOT

ASSETS = ROOT / "assets"


@pytest.fixture(scope="module")
def export_main():
    spec = importlib.util.spec_from_file_location("export_embedded", ROOT / "scripts" / "export_embedded.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def common_args(out):
    return ["--animator-ckpt", str(ASSETS / "animator_synthetic.safetensors"),
            "--generator", str(ASSETS / "stylegan2_synthetic128.safetensors"),
            "--clip", str(ASSETS / "clip_synthetic.safetensors"),
            "--oracle", str(ASSETS / "oracle_synthetic.safetensors"), "--out", str(out)]


def metadata(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["hyper_parameters"])


@pytest.mark.parametrize("extra,needle", [
    (["--identity-projection", "0.5"], "--identity-reader"),
    (["--identity-projection", "1.5", "--identity-reader", str(ASSETS / "identity_reader_synthetic.safetensors")],
     "[0, 1]"),
])
def test_bad_projection_options_fail_before_writing(export_main, tmp_path, capsys, extra, needle):
    out = tmp_path / "assets"
    assert export_main(common_args(out) + extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and needle in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_export_records_projection_and_start_and_is_relocatable(export_main, tmp_path, capsys):
    from safetensors.torch import load_file

    from src.pipeline import FaceAnimator

    out = tmp_path / "assets"
    reader = ASSETS / "identity_reader_synthetic.safetensors"
    assert export_main(common_args(out) + ["--identity-reader", str(reader), "--identity-projection", "0.25",
                                           "--started-from", "git show REV:assets/animator_synthetic.safetensors"]) == 0
    dst = out / "animator_synthetic.safetensors"
    hp = metadata(dst)
    # file names relative to the folder, the projection and a portable start in the record
    assert hp["inference"]["identity_projection"] == 0.25
    assert hp["inference"]["projection_reader"] == "identity_reader_synthetic.safetensors"
    assert hp["domain"]["identity_loss"]["checkpoint"] == "identity_reader_synthetic.safetensors"
    assert hp["domain"]["generator"]["checkpoint"] == "stylegan2_synthetic128.safetensors"
    assert hp["train"]["init_checkpoint"] == "git show REV:assets/animator_synthetic.safetensors"
    assert (out / "identity_reader_synthetic.json").is_file() and (out / "clip_synthetic.text_cache.safetensors").is_file()
    source, exported = load_file(str(ASSETS / "animator_synthetic.safetensors")), load_file(str(dst))
    assert source.keys() == exported.keys() and all(torch.equal(source[k], exported[k]) for k in source)
    # the folder moves: the record resolves against wherever it now is, the projection included
    moved = tmp_path / "moved"
    out.rename(moved)
    module = FaceAnimator.from_pretrained(moved / "animator_synthetic.safetensors")
    assert module.config["inference"]["identity_projection"] == 0.25
    assert module.config["inference"]["projection_reader"] == str(moved / "identity_reader_synthetic.safetensors")
    module.projection_reader()  # loads from the moved folder


def test_shipped_animator_runs_with_its_recorded_projection():
    hp = metadata(ASSETS / "animator_synthetic.safetensors")
    assert 0 < hp["inference"]["identity_projection"] <= 1
    assert (ASSETS / hp["inference"]["projection_reader"]).is_file()
