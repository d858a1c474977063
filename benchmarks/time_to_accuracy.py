"""Time to accuracy on MNIST: ``pyneuro train --model cnn --preset fast`` against the plain-PyTorch
script (benchmarks/plain_torch_mnist.py) in the same run, seed by seed, alternating.

    python benchmarks/time_to_accuracy.py --seeds 0,1,2            # prints a table and the median ratio
    python benchmarks/time_to_accuracy.py --seeds 0 --json tta.json

Both train the same network (24/32 channels, batch norm, one conv per block) with Adam(W) and
OneCycle on all 60,000 training images; each runs in its own process. ``train_s`` is the training
time until the first test evaluation at or above ``--target`` (the plain script tests after every
epoch, pyneuro's preset once at the end); ``wall_s`` is the whole process (start-up, data, training,
evaluation, and for pyneuro the plots and report). The ratio is pyneuro's over the plain script's:
below 1 is faster. A run that does not reach the target counts as not reached, never as a time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_plain(seed: int, epochs: int, lr: float, target: float) -> dict:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "plain_torch_mnist.py"), "--epochs", str(epochs),
           "--lr", str(lr), "--seed", str(seed), "--target", str(target)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    reached = result["reached"]
    return {"accuracy": result["epochs"][-1]["test_acc"],
            "train_s": reached["time_to_target_s"] if reached else None,
            "wall_s": reached["wall_to_target_s"] if reached else None, "process_s": wall}


def run_pyneuro(seed: int, target: float, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="pyneuro-tta-") as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "pyneuro", "train", "--model", "cnn", "--preset", "fast", "--seed", str(seed),
               "--out", str(out), *extra]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        accuracy = json.loads((out / "eval.json").read_text())["test_acc"]
        epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        train_s = sum(e["epoch_time_s"] for e in epochs)
    reached = accuracy >= target
    return {"accuracy": accuracy, "train_s": train_s if reached else None, "wall_s": wall if reached else None,
            "process_s": wall}


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/time_to_accuracy.py", description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; each runs both, alternating")
    p.add_argument("--target", type=float, default=0.99)
    p.add_argument("--plain-epochs", type=int, default=2)
    p.add_argument("--plain-lr", type=float, default=1e-2, help="the plain script's OneCycle peak (its best here)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to pyneuro train")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if not seeds or not 0 < args.target < 1 or args.plain_epochs < 1 or not args.plain_lr > 0:
        p.error("need at least one seed, 0 < --target < 1, --plain-epochs >= 1 and --plain-lr > 0")
    extra = [item for kv in args.set for item in ("--set", kv)]

    rows = []
    print(f"{'seed':>4}  {'contender':<10} {'test acc':>8}  {'train s':>8}  {'wall s':>7}", flush=True)
    for seed in seeds:
        for name, run in (("plain", lambda: run_plain(seed, args.plain_epochs, args.plain_lr, args.target)),
                          ("pyneuro", lambda: run_pyneuro(seed, args.target, extra))):
            r = {"seed": seed, "contender": name, **run()}
            rows.append(r)
            fmt = lambda v: "not reached" if v is None else f"{v:.1f}"  # noqa: E731
            print(f"{seed:>4}  {name:<10} {r['accuracy'] * 100:7.2f}%  {fmt(r['train_s']):>8}  {fmt(r['wall_s']):>7}",
                  flush=True)
    summary = {}
    for key in ("train_s", "wall_s"):
        plain = _median(r[key] for r in rows if r["contender"] == "plain")
        ours = _median(r[key] for r in rows if r["contender"] == "pyneuro")
        summary[key] = {"plain": plain, "pyneuro": ours, "ratio": ours / plain if plain and ours else None}
    for key, label in (("train_s", "training time"), ("wall_s", "wall time")):
        s = summary[key]
        if s["ratio"] is None:
            print(f"{label} to {args.target:.1%}: not reached by every contender")
        else:
            print(f"{label} to {args.target:.1%}, median: pyneuro {s['pyneuro']:.1f} s vs plain {s['plain']:.1f} s "
                  f"= {s['ratio']:.2f}x")
    if args.json:
        import torch

        Path(args.json).write_text(json.dumps({"target": args.target, "seeds": seeds, "threads": torch.get_num_threads(),
                                               "plain_epochs": args.plain_epochs, "plain_lr": args.plain_lr,
                                               "pyneuro_set": args.set, "runs": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
