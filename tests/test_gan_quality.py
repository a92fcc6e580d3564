"""The generator-quality metrics (src/embedded/gan_quality.py) on sets whose answer is known, and
bench/bench_gan_quality.py end to end on a tiny generator."""
from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
import torch.nn.functional as F

from src.embedded import gan_quality as gq
from tests.conftest import ROOT
from tests.fixtures_stylegan import tiny_generator


def gaussian(n, d, seed, shift=0.0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def test_coverage_of_a_set_against_itself_is_one():
    x = gaussian(500, 4, 0)
    g, r, ratio = gq.coverage(x, x)
    assert torch.equal(g, r)
    assert torch.allclose(ratio, torch.ones(4, dtype=torch.float64))


def test_coverage_is_the_ratio_of_percentile_ranges():
    x = torch.linspace(0, 1, 1001, dtype=torch.float64).unsqueeze(1)
    g, r, ratio = gq.coverage(0.25 * x + 3.0, x)        # a quarter of the spread, shifted: coverage 0.25
    assert r[:, 0].tolist() == pytest.approx([0.05, 0.95])
    assert g[:, 0].tolist() == pytest.approx([3.0125, 3.2375])
    assert float(ratio[0]) == pytest.approx(0.25)
    assert math.isnan(float(gq.coverage(x, torch.zeros_like(x))[2][0]))  # nothing to cover


def test_frechet_distance_of_identical_sets_is_zero():
    x = gaussian(400, 3, 1)
    assert gq.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_of_shifted_sets_is_the_squared_shift():
    x = gaussian(400, 3, 2)
    shift = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    assert gq.frechet_distance(x, x + shift) == pytest.approx(float(shift.square().sum()), rel=1e-5)


def test_frechet_distance_of_scaled_gaussians():
    # N(0, I) against N(0, 4 I) in 2-D: Tr(I + 4I - 2 * 2I) = 2 (up to sampling noise)
    a, b = gaussian(20000, 2, 3), 2.0 * gaussian(20000, 2, 4)
    assert gq.frechet_distance(a, b) == pytest.approx(2.0, abs=0.15)


def test_laplacian_variance_drops_under_blur():
    img = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    blurred = F.avg_pool2d(F.pad(img, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    sharp, soft = gq.laplacian_variance(img), gq.laplacian_variance(blurred)
    assert sharp.shape == (2,) and (soft < 0.5 * sharp).all()
    assert gq.laplacian_variance(torch.zeros(1, 3, 8, 8)).item() == 0.0


def test_regression_direction_finds_the_signal():
    x = gaussian(400, 6, 5)
    true = torch.tensor([0.0, 3.0, 0.0, -4.0, 0.0, 0.0], dtype=torch.float64)
    direction, r2 = gq.regression_direction(x, x @ true, ridge=0.0)
    assert torch.allclose(direction, true / true.norm(), atol=1e-6)
    assert r2 == pytest.approx(1.0, abs=1e-6)
    noisy = x @ true + 5.0 * gaussian(400, 1, 6)[:, 0]
    direction, r2 = gq.regression_direction(x, noisy)  # the default ridge: still the right direction
    assert float(direction @ (true / true.norm())) > 0.97 and 0.2 < r2 < 0.6


def test_bad_shapes_are_one_line_errors():
    from src.utils.errors import UserError

    with pytest.raises(UserError):
        gq.coverage(torch.zeros(5, 2), torch.zeros(5, 3))
    with pytest.raises(UserError):
        gq.frechet_distance(torch.zeros(1, 2), torch.zeros(5, 2))
    with pytest.raises(UserError):
        gq.laplacian_variance(torch.zeros(2, 1, 8, 8))


def test_samples_are_deterministic():
    G = tiny_generator(res=16)
    a = next(gq.generator_batches(G, 4, seed=3))
    b = next(gq.generator_batches(G, 4, seed=3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    r1, p1 = next(gq.render_batches(2, 7, 32))
    r2, p2 = next(gq.render_batches(2, 7, 32))
    assert torch.equal(r1, r2) and torch.equal(p1, p2) and r1.shape == (2, 3, 32, 32)


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_gan_quality", ROOT / "bench" / "bench_gan_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_bench_runs_end_to_end(tmp_path, capsys):
    from src.stylegan.native import save_generator

    weights = save_generator(tiny_generator(res=32), tmp_path / "g.safetensors")
    out = tmp_path / "q.json"
    bench = load_bench()
    rc = bench.main(["--generator", str(weights), "--samples", "16", "--batch", "8", "--json", str(out),
                     "--sheet", str(tmp_path / "sheet.png"), "--yaw-sweep", str(tmp_path / "sweep.png"),
                     "--project", "1", "--project-steps", "2"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    result = json.loads(out.read_text())
    assert len(result["coverage"]) == len(gq.attribute_names())
    for key in ("fd_attributes", "fd_attributes_floor", "fd_trunk", "fd_trunk_floor", "sharpness_ratio"):
        assert math.isfinite(result[key]), key
    assert "renders vs renders" in printed and "yaw" in printed and "device cpu" in printed
    assert (tmp_path / "sheet.png").is_file() and (tmp_path / "sweep.png").is_file()
    assert len(result["projection"]) == 2


@pytest.mark.parametrize("argv, message", [
    (["--generator", "/nonexistent.safetensors"], "--generator file not found"),
    (["--samples", "2"], "--samples must be >= 8"),
    (["--batch", "0"], "--batch"),
    (["--device", "gpu9"], "--device"),
])
def test_bench_bad_input_is_one_error_line(argv, message, capsys):
    assert load_bench().main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
