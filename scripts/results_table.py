"""Print the markdown results table of docs/RESULTS.md from run folders.

    python scripts/results_table.py runs/cnn runs/ann ...
Reads each folder's eval.json (test accuracy), metrics.jsonl (epochs, training time) and
settings.json; the numbers in the docs come from here, not from hand copying."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def row(run: Path) -> str:
    ev = json.loads((run / "eval.json").read_text())
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train_s = sum(r["epoch_time_s"] for r in records)
    fastest = min(r["epoch_time_s"] for r in records)  # the least contended epoch
    best_val = max(r["val_acc"] for r in records)
    s = ev["settings"]
    return (f"| {ev['model']} | **{100 * ev['test_acc']:.2f}%** | {100 * best_val:.2f}% | {len(records)} | "
            f"{train_s / 60:.1f} min | {fastest:.0f} s | {s['train']['batch_size']} / {s['train']['lr']:g} | {ev['device']} |")


def main(paths) -> int:
    print("| model | test acc | best val acc | epochs | training time | fastest epoch | batch / peak lr | device |")
    print("|---|---|---|---|---|---|---|---|")
    for p in paths:
        print(row(Path(p)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
