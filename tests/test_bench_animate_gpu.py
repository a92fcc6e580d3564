"""bench/bench_animate_gpu.py on a CPU with tiny settings: the printed table's rows (timed ones
consistent with each other, unsupported precisions 'n/a'), the anchors, and bad input."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_animate_gpu", ROOT / "bench" / "bench_animate_gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def table(bench, out: str) -> list[dict]:
    """The rows of the printed table, as dicts keyed by the column names."""
    lines = [ln for ln in out.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert tuple(header) == bench.COLUMNS
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[1:]]


def check_timed(row: dict, frames: int) -> None:
    videos, ms = int(row["videos/call"]), float(row["ms/call"])
    assert ms > 0
    assert float(row["ms/video"]) == pytest.approx(ms / videos, rel=1e-2, abs=1e-2)
    assert float(row["frames/s"]) == pytest.approx(1000.0 * videos * frames / ms, rel=1e-2, abs=0.1)
    assert float(row["ms/frame"]) == pytest.approx(ms / (videos * frames), rel=1e-2, abs=1e-3)
    # on a CPU: no GPU memory, and no anchor (they are 1024 px GPU figures)
    for col in ("peak GiB", "resident GiB", "ms ÷ authors", "ms ÷ goal", "peak ÷ authors", "peak ÷ goal"):
        assert row[col] == "-", col


def test_cpu_smoke_embedded_rows(bench, capsys):
    argv = ["--device", "cpu", "--res", "128", "--videos", "1", "2", "--frames", "4", "--iters", "1",
            "--identity-projection", "0"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "on cpu;" in out and "132.6 ms" in out and "goal 20 ms, peak 4 GiB" in out
    rows = table(bench, out)
    assert [(r["res"], r["videos/call"], r["precision"]) for r in rows] == [
        ("128", v, p) for p in ("fp32", "fp16", "bf16") for v in ("1", "2")]
    for row in rows[:2]:
        assert row["model"].startswith("embedded") and row["proj"] == "0"
        check_timed(row, frames=4)
    for row in rows[2:]:  # fp16 and bf16 blocks compute in fp32 on a CPU
        assert row["ms/call"].startswith("n/a") and row["ms/video"] == "-"


@pytest.mark.slow
def test_cpu_smoke_paper_model_at_another_resolution(bench, capsys):
    argv = ["--device", "cpu", "--res", "16", "--videos", "1", "--frames", "2", "--iters", "1",
            "--precision", "fp32"]
    assert bench.main(argv) == 0
    rows = table(bench, capsys.readouterr().out)
    assert len(rows) == 1 and rows[0]["model"] == f"{bench.PAPER_EXPERIMENT}, random" and rows[0]["proj"] == "0"
    check_timed(rows[0], frames=2)


def test_cuda_graph_rows_beside_the_eager_ones(bench, capsys):
    argv = ["--device", "cpu", "--res", "128", "--videos", "1", "--frames", "2", "--iters", "1",
            "--precision", "fp32", "bf16", "--identity-projection", "0", "--cuda-graphs"]
    assert bench.main(argv) == 0
    rows = table(bench, capsys.readouterr().out)
    assert [(r["precision"], r["graphs"]) for r in rows] == [(p, g) for p in ("fp32", "bf16") for g in ("off", "on")]
    check_timed(rows[0], frames=2)
    assert rows[1]["ms/call"] == "n/a: CUDA graphs run on CUDA only"  # on a CPU
    assert all(r["ms/call"].startswith("n/a") for r in rows[2:])


def test_anchor_ratios_only_on_1024_px_16_frame_rows(bench):
    r = dict(ms=265.2, peak=3.0, resident=1.0, projection=0.0)
    cells = dict(zip(bench.COLUMNS, bench.row_cells(1024, "m", 2, "fp16", r, 16)))
    assert cells["ms/video"] == "132.60" and cells["ms ÷ authors"] == "1.00" and cells["ms ÷ goal"] == "6.63"
    assert cells["peak ÷ authors"] == "2.00" and cells["peak ÷ goal"] == "0.75"
    for res, frames in ((256, 16), (1024, 8)):
        cells = dict(zip(bench.COLUMNS, bench.row_cells(res, "m", 2, "fp16", r, frames)))
        assert cells["ms ÷ authors"] == cells["peak ÷ goal"] == "-"


@pytest.mark.parametrize("argv, message", [
    (["--res", "100"], "--res 100"),
    (["--iters", "0"], "--iters 0"),
    (["--videos", "1", "0"], "--videos 0"),
    (["--precision", "fp8"], "invalid choice"),
    (["--res", "big"], "invalid int value"),
    (["--device", "gpu0"], "--device gpu0"),
    (["--device", "cpu", "--identity-projection", "2"], "--identity-projection 2"),
])
def test_bad_input_is_one_error_line(bench, capsys, argv, message):
    assert bench.main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert captured.out == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_a_gpu_is_one_error_line(bench, capsys):
    assert bench.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cpu" in err[0]
