"""bench/bench_ddp_animator.py on CPU, one process, tiny models: the benchmark JSON, the summary
table, and the equivalence files + --compare (a run against itself must be identical)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--tiny", "--device", "cpu", "--no-lpips", "--res", "32", "--batch", "2"]


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_ddp_animator", ROOT / "bench" / "bench_ddp_animator.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench():
    return _load_bench()


@pytest.fixture
def restore_determinism():
    flags = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield
    torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
    (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
     torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) = flags[2:]


def test_single_process_benchmark_json(bench, tmp_path, capsys):
    out = tmp_path / "k1.json"
    assert bench.main(TINY + ["--steps", "2", "--warmup", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    for key in ("format", "world_size", "env", "config", "model", "step_ms", "wall_ms_per_step", "frames_per_s",
                "videos_per_s", "phases_ms", "memory", "sync", "scaling_efficiency", "loss_last_step"):
        assert key in res, key
    assert res["format"] == bench.RESULT_FORMAT and res["world_size"] == 1 and res["config"]["ddp"] is False
    assert res["config"]["global_batch"] == 2 and res["config"]["frames"] == 4
    assert res["step_ms"]["n"] == 2 and res["step_ms"]["median"] > 0 and res["wall_ms_per_step"] > 0
    assert res["frames_per_s"]["total"] > 0 and res["frames_per_s"]["per_gpu"] == res["frames_per_s"]["total"]
    ph = res["phases_ms"]
    for name in ("generator", "clip_loss", "clip_input", "forward", "backward", "optimizer", "step"):
        assert ph[name]["mean"] > 0, name
    assert ph["forward"]["mean"] >= ph["generator"]["mean"] + ph["clip_loss"]["mean"] - 1e-6
    assert ph["step"]["mean"] >= ph["forward"]["mean"] + ph["backward"]["mean"] - 1e-6
    assert res["model"]["trainable_params"] > 0 and res["model"]["num_ws"] > 0
    assert res["sync"] is None  # one process: no DDP, nothing to synchronise
    table = capsys.readouterr().out
    assert "| step ms (median / mean; max over ranks) |" in table
    assert "| device | cpu |" in table  # the GPU's name on CUDA
    assert "authors' 393 ms, 12.2 GiB; goal 80 ms, 12 GiB) | - (the anchors: 1024 px" in table  # not the anchor's shape

    # the combined table of several runs, efficiency 1 for the baseline itself
    assert bench.main(["--summarize", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "| K | res |" in summary and "| 1 | 32 | 2 |" in summary and "1.000" in summary
    assert summary.splitlines()[0].endswith("| device |") and summary.splitlines()[2].endswith("| cpu |")

    # a GPU run is named by the GPU's name
    res["env"].update(device="cuda", gpu_name="NVIDIA H100 80GB HBM3")
    out.write_text(json.dumps(res))
    assert bench.main(["--summarize", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[2].endswith("| NVIDIA H100 80GB HBM3 |")


@pytest.mark.slow
def test_equivalence_files_and_compare(bench, tmp_path, capsys, restore_determinism):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for path in (a, b):
        assert bench.main(TINY + ["--check-equivalence", "2", "--save-weights", str(path)]) == 0
        assert "K=1 x batch 2 on cpu: 2 Adam steps" in capsys.readouterr().out
    meta, groups = bench.read_weights(str(a))
    assert meta["steps"] == 2 and meta["world_size"] == 1 and len(meta["losses"]) == 2
    assert set(groups["final"]) == set(groups["init"]) == set(groups["grad1"])
    assert any(not torch.equal(groups["final"][k], groups["init"][k]) for k in groups["final"])  # it trained
    capsys.readouterr()
    assert bench.main(["--compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "EQUIVALENT" in out and "NOT EQUIVALENT" not in out
    assert "(K=1 x batch 2 on cpu)" in out
    assert "| final weights | 0.000e+00 |" in out


def test_clear_errors(bench, capsys):
    if not torch.cuda.is_available():
        assert bench.main(["--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err
    assert bench.main(TINY[:4] + ["--batch", "99"]) == 2
    assert "distinct prompts" in capsys.readouterr().err
    assert bench.main(["--check-equivalence", "2"]) == 2
    assert "--save-weights" in capsys.readouterr().err


def test_the_anchor_rows_are_ratios_for_the_anchor_shape_only():
    from bench.ddp_animator.report import anchor_rows

    run = {"world_size": 1, "config": {"res": 1024, "batch_per_gpu": 4, "frames": 4, "lpips": True},
           "step_ms": {"median": 196.5}, "memory": {"peak_allocated_GiB": [6.1]}}
    (ms_row, ms), (peak_row, peak) = anchor_rows(run)
    assert ms == "0.50 / 2.46" and peak == "0.50 / 0.51" and "393" in ms_row and "12.2 GiB" in peak_row
    run["config"]["lpips"] = False
    assert "without LPIPS" in anchor_rows(run)[0][1]
    for change in ({"world_size": 2}, {"config": {**run["config"], "frames": 8}}):
        assert anchor_rows({**run, **change})[0][1].startswith("- ")
