"""The table of scripts/device/paper_vs_ours.sh: one row per variant, read from its evaluation JSON.

    python bench/paper_vs_ours_table.py RUNS_DIR > paper_vs_ours.md

Columns: steps trained (the run's CSV log), oracle right-way rate, reach and identity drift, CLIP
top-1, MS-SSIM (temporal) and the differences of right way / reach / drift to the row 'ours'.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

ORDER = ("ours", "paper", "rnn_slope", "variant", "latent_sum", "negatives_local", "resize_pool", "clip_all",
         "text_only")
KEYS = (("oracle_right_way", "right way", "{:.3f}"), ("oracle_reach", "reach", "{:.3f}"),
        ("oracle_identity_drift", "id drift", "{:.4f}"), ("text_top1", "top-1", "{:.3f}"),
        ("ms_ssim", "MS-SSIM", "{:.4f}"))


def steps_trained(runs: Path, variant: str) -> str:
    logs = sorted((runs / "animator" / "runs" / f"pvo-{variant}").glob("**/metrics.csv"))
    best = 0
    for log in logs:
        with open(log, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("step", "").isdigit():
                    best = max(best, int(row["step"]))
    return str(best + 1) if logs else "?"


def main(runs: Path) -> int:
    results = {v: json.loads((runs / f"{v}.json").read_text())["summary"]
               for v in ORDER if (runs / f"{v}.json").is_file()}
    if not results:
        print(f"error: no <variant>.json under {runs}", file=sys.stderr)
        return 2
    gpu = (runs / "gpu.txt").read_text().strip() if (runs / "gpu.txt").is_file() else "?"
    timing = (runs / "timing.txt").read_text().strip().replace("\n", ", ") if (runs / "timing.txt").is_file() else ""
    base = results.get("ours", {})
    print(f"GPU: {gpu}; {timing}\n")
    print("| variant | steps | " + " | ".join(h for _, h, _ in KEYS) + " | vs ours: right way / reach / drift |")
    print("|---" * (len(KEYS) + 3) + "|")
    for v, s in results.items():
        cells = [fmt.format(s[k]) if isinstance(s.get(k), (int, float)) else "-" for k, _, fmt in KEYS]
        delta = " / ".join(f"{s[k] - base[k]:+.3f}" if v != "ours" and k in s and k in base else "-"
                           for k in ("oracle_right_way", "oracle_reach", "oracle_identity_drift"))
        print(f"| {v} | {steps_trained(runs, v)} | " + " | ".join(cells) + f" | {delta} |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        sys.exit(2)
    sys.exit(main(Path(sys.argv[1])))
