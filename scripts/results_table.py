"""Print the markdown results tables of docs/RESULTS.md from run folders.

    python scripts/results_table.py runs/cnn runs/ann runs/vae ...

Reads each folder's eval.json (the test figures), metrics.jsonl (epochs, training time) and the
settings eval.json carries; the numbers in the docs come from here, not from hand copying.
Classifiers and generative models report different things, so each kind gets its own table
(classifiers first), in the order the folders were given."""
from __future__ import annotations

import json
import sys
from pathlib import Path

CLASSIFY_HEADER = "| model | test acc | best val acc | epochs | training time | fastest epoch | batch / peak lr | device |"
GENERATE_HEADER = ("| model | −ELBO | IW | KL | recon | epochs | training time | fastest epoch | batch / peak lr "
                   "| device |")


def _read(run: Path) -> tuple[dict, list[dict]]:
    for name in ("eval.json", "metrics.jsonl"):
        if not (run / name).is_file():
            raise SystemExit(f"results_table: {run} has no {name} (is it a finished run folder?)")
    ev = json.loads((run / "eval.json").read_text())
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    if not records:
        raise SystemExit(f"results_table: {run / 'metrics.jsonl'} holds no epoch")
    return ev, records


def _common(ev: dict, records: list[dict]) -> str:
    """epochs | training time | fastest epoch | batch / peak lr | device."""
    train_s = sum(r["epoch_time_s"] for r in records)
    fastest = min(r["epoch_time_s"] for r in records)  # the least contended epoch
    train = ev["settings"]["train"]
    return (f"{len(records)} | {train_s / 60:.1f} min | {fastest:.0f} s | {train['batch_size']} / {train['lr']:g} | "
            f"{ev['device']} |")


def _nats(ev: dict, key: str) -> str:
    value = ev.get(key, ev.get("test_terms", {}).get(key))
    return "—" if value is None else f"{value:.2f}"


def row(run: Path) -> tuple[str, str]:
    """(task kind, markdown row) of one run folder."""
    ev, records = _read(run)
    if ev.get("task", "classify") == "generate":
        iw = _nats(ev, "iw_nll_nats")
        if iw != "—" and "iw_samples" in ev:
            iw += f" (k={ev['iw_samples']})"
        return "generate", (f"| {ev['model']} | **{_nats(ev, 'neg_elbo_nats')}** | {iw} | {_nats(ev, 'kl_nats')} | "
                            f"{_nats(ev, 'recon_nats')} | " + _common(ev, records))
    vals = [r["val_acc"] for r in records if "val_acc" in r]
    best_val = f"{100 * max(vals):.2f}%" if vals else "—"  # no validation pass (train_split train+val)
    return "classify", f"| {ev['model']} | **{100 * ev['test_acc']:.2f}%** | {best_val} | " + _common(ev, records)


def tables(paths) -> str:
    rows = {"classify": [], "generate": []}
    for p in paths:
        kind, line = row(Path(p))
        rows[kind].append(line)
    out = []
    for kind, header in (("classify", CLASSIFY_HEADER), ("generate", GENERATE_HEADER)):
        if rows[kind]:
            if out:
                out.append("")
            out += [header, "|" + "---|" * header.count(" | ") + "---|", *rows[kind]]
    return "\n".join(out)


def main(paths) -> int:
    if not paths:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    print(tables(paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
