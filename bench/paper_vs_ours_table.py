"""The table of scripts/device/paper_vs_ours.sh: one row per variant, read from its evaluation JSON.

    python bench/paper_vs_ours_table.py RUNS_DIR [RUNS_DIR ...] > paper_vs_ours.md

Several RUNS_DIRs (one per training seed) give the mean over seeds and, after it, the half range
(max - min) / 2 in brackets. Columns: oracle right-way rate, reach and identity drift, CLIP top-1,
MS-SSIM (temporal, when evaluated) and the differences of right way / reach / drift to the row 'ours'.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = ("ours", "paper", "rnn_slope", "variant", "latent_sum", "negatives_local", "resize_pool", "clip_all",
         "text_only")
KEYS = (("oracle_right_way", "right way", "{:.3f}"), ("oracle_reach", "reach", "{:.3f}"),
        ("oracle_identity_drift", "id drift", "{:.4f}"), ("text_top1", "top-1", "{:.3f}"),
        ("ms_ssim", "MS-SSIM", "{:.4f}"))
DELTAS = ("oracle_right_way", "oracle_reach", "oracle_identity_drift")


def _summaries(runs: Path) -> dict[str, dict]:
    return {v: json.loads((runs / f"{v}.json").read_text())["summary"]
            for v in ORDER if (runs / f"{v}.json").is_file()}


def _note(runs: Path, name: str) -> str:
    path = runs / name
    return path.read_text().strip().replace("\n", ", ") if path.is_file() else "?"


def main(dirs: list[Path]) -> int:
    per_seed = [_summaries(d) for d in dirs]
    variants = [v for v in ORDER if all(v in s for s in per_seed)]
    if not variants:
        print(f"error: no <variant>.json present in every one of {', '.join(map(str, dirs))}", file=sys.stderr)
        return 2

    def values(v: str, k: str) -> list[float]:
        return [s[v][k] for s in per_seed if isinstance(s[v].get(k), (int, float))]

    def cell(v: str, k: str, fmt: str) -> str:
        x = values(v, k)
        if not x:
            return "-"
        mean = sum(x) / len(x)
        return fmt.format(mean) + (f" (±{fmt.format((max(x) - min(x)) / 2)})" if len(x) > 1 else "")

    print(f"GPU: {_note(dirs[0], 'gpu.txt')}; {len(dirs)} training seed(s); {_note(dirs[0], 'timing.txt')}\n")
    print("| variant | " + " | ".join(h for _, h, _ in KEYS) + " | vs ours: right way / reach / drift |")
    print("|---" * (len(KEYS) + 2) + "|")
    for v in variants:
        cells = [cell(v, k, fmt) for k, _, fmt in KEYS]
        delta = " / ".join(
            f"{sum(values(v, k)) / len(values(v, k)) - sum(values('ours', k)) / len(values('ours', k)):+.3f}"
            if v != "ours" and "ours" in variants and values(v, k) and values("ours", k) else "-" for k in DELTAS)
        print(f"| {v} | " + " | ".join(cells) + f" | {delta} |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        sys.exit(2)
    sys.exit(main([Path(a) for a in sys.argv[1:]]))
