"""Regenerate every figure and every measured table in docs/ (`make docs`).

    python scripts/make_docs.py                  # tables, then figures
    python scripts/make_docs.py tables [--check] # the kernel pages' tables from docs/bench/*.json
    python scripts/make_docs.py figures [--models cnn,vae] [--runs runs]

Figures: each picture in docs/figures comes from a run folder. A recorded run, `runs/<name>`
(trained by hand with the full recipe, holding last.pt and eval.json), is used when it is there;
otherwise a small run is trained into `runs/docs/<name>` with the settings below (minutes on a
CPU, and labelled as such). Every picture is then redrawn from the run's checkpoint with today's
code (`pyneuro viz`), copied to docs/figures/<name>-<picture>.png, and docs/figures/SOURCES.md
says which run each figure came from and what that run reached.

Tables: `python -m benchmarks --device cpu --json docs/bench/cpu.json` records a benchmark run;
the tables between `<!-- bench:<op> -->` and `<!-- /bench -->` in docs/kernels/*.md are rendered
from it (`--check`: fail if a page is not what the recorded JSON gives).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FIGURES = DOCS / "figures"
BENCH = DOCS / "bench"
SMALL = ["--set", "train.train_subset=10000", "--set", "train.val_subset=2000"]


@dataclass(frozen=True)
class Run:
    model: str
    small_args: list[str]                       # `pyneuro train` arguments of the small run
    pictures: list[str] = field(default_factory=list)  # files of the run folder that go to docs/figures
    sweep: bool = False                         # PV-RNN's meta-prior sweep, not one training run


_CLASSIFIER = ["curves.png", "confusion.png", "architecture.png", "embedding.png"]

# The order a learner reads the pages in (README): ANN, CNN, RNN, LSTM, GRU, transformer, S4D,
# Mamba, MTRNN, PV-RNN, VAE; then the extra runs some pages show.
RUNS: dict[str, Run] = {
    "ann": Run("ann", ["--epochs", "2", *SMALL], [*_CLASSIFIER, "weights.png"]),
    "cnn": Run("cnn", ["--epochs", "2", *SMALL], [*_CLASSIFIER, "filters.png", "feature_maps.png"]),
    "rnn": Run("rnn", ["--epochs", "2", *SMALL], [*_CLASSIFIER, "gates.png"]),
    "lstm": Run("lstm", ["--epochs", "2", *SMALL], [*_CLASSIFIER, "gates.png"]),
    "gru": Run("gru", ["--epochs", "2", *SMALL], [*_CLASSIFIER, "gates.png"]),
    "transformer": Run("transformer", ["--epochs", "2", *SMALL], [*_CLASSIFIER, "attention.png"]),
    "s4d": Run("s4d", ["--epochs", "1", *SMALL], [*_CLASSIFIER, "kernels.png"]),
    "mamba": Run("mamba", ["--epochs", "2", *SMALL], [*_CLASSIFIER, "selectivity.png"]),
    "mtrnn": Run("mtrnn", ["--epochs", "2", *SMALL], [*_CLASSIFIER, "units.png"]),
    "pvrnn": Run("pvrnn", ["--epochs", "5", "--set", "model.sequences=2000", "--set", "train.train_subset=2000",
                           "--set", "model.completion_subset=200"],
                 ["curves.png", "architecture.png", "generations.png", "completions.png", "prior_posterior.png"]),
    "vae": Run("vae", ["--epochs", "3", "--set", "train.train_subset=10000", "--set", "model.iw_samples=50"],
               ["curves.png", "architecture.png", "reconstructions.png", "samples.png", "latent.png"]),
    "vae-latent2": Run("vae", ["--preset", "latent2", "--epochs", "3", "--set", "train.train_subset=10000",
                               "--set", "model.iw_samples=50"], ["manifold.png", "latent.png"],
                       ),
    "pvrnn-sweep": Run("pvrnn", ["--sequences", "500", "--epochs", "5"], ["meta_prior.png"], sweep=True),
    "demo-cnn": Run("cnn", ["--preset", "fast"], ["predictions.png"]),
}


def _python_module(module: str, *args: str) -> None:
    cmd = [sys.executable, "-m", module, *args]
    print("+", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def _pyneuro(*args: str) -> None:
    _python_module("pyneuro", *args)


def _is_complete(folder: Path, run: Run) -> bool:
    if run.sweep:
        return (folder / "sweep.json").exists() and (folder / "meta_prior.png").exists()
    return (folder / "last.pt").exists() and (folder / "eval.json").exists()


def _run_folder(name: str, run: Run, runs: Path, extra_args=()) -> tuple[Path, bool]:
    """(folder, recorded): the recorded run when there is one, else the small run (trained if missing)."""
    recorded = runs / name
    if _is_complete(recorded, run):
        if run.sweep or json.loads((recorded / "eval.json").read_text()).get("settings", {}).get("model") == run.model:
            return recorded, True
    small = runs / "docs" / name
    if not _is_complete(small, run):
        if run.sweep:
            _python_module("pyneuro.viz.pvrnn", "--meta-prior-sweep", "--out", str(small), *run.small_args)
        else:
            _pyneuro("train", "--model", run.model, "--out", str(small), "--overwrite", *run.small_args, *extra_args)
    return small, False


def _headline(folder: Path, run: Run) -> str:
    if run.sweep:
        sweep = json.loads((folder / "sweep.json").read_text())
        ws = ", ".join(f"{r['meta_prior']:g}" for r in sweep["results"])
        return f"meta-prior sweep, w = {ws}; {sweep['sequences']} sequences, {sweep['epochs']} epochs each"
    summary = json.loads((folder / "eval.json").read_text())
    settings = summary.get("settings", {})
    epochs = settings.get("train", {}).get("epochs", "?")
    if "test_acc" in summary:
        figure = f"test accuracy {100 * summary['test_acc']:.2f}%"
    else:
        nats = {k: v for k, v in summary.items()
                if k.endswith(("_nats", "_acc")) and isinstance(v, (int, float)) and not isinstance(v, bool)}
        figure = "test loss " + f"{summary.get('test_loss', float('nan')):.2f}" + "".join(
            f", {k} {v:.2f}" for k, v in nats.items())
    return f"{epochs} epochs, {figure}"


def make_figures(names: list[str], runs: Path = ROOT / "runs", figures: Path = FIGURES,
                 extra_args: tuple[str, ...] = ()) -> list[Path]:
    """Draw the runs' figures into ``figures``. ``extra_args``: appended to every small run's
    `pyneuro train` (the tests point it at a tiny data set)."""
    figures.mkdir(parents=True, exist_ok=True)
    written, sources = [], []
    for name in names:
        run = RUNS[name]
        folder, recorded = _run_folder(name, run, runs, extra_args)
        if not run.sweep:
            _pyneuro("viz", str(folder))  # redraw the model's pictures with today's code
        for picture in run.pictures:
            target = figures / f"{name}-{picture}"
            shutil.copyfile(folder / picture, target)
            written.append(target)
        kind = "recorded run" if recorded else f"small run made by make docs ({' '.join(run.small_args)})"
        sources.append((name, run, folder, kind, _headline(folder, run)))
    _write_sources(figures / "SOURCES.md", sources)
    return written


def _write_sources(path: Path, sources) -> None:
    """Merge this call's runs into SOURCES.md (a partial `--models` call keeps the others' lines)."""
    lines = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.startswith("| `") and "` |" in line:
                lines[line.split("`")[1]] = line
    for name, run, folder, kind, headline in sources:
        rel = folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder
        pictures = ", ".join(f"{name}-{p}" for p in run.pictures)
        lines[name] = f"| `{name}` | `{rel}` | {kind} | {headline} | {pictures} |"
    order = [n for n in RUNS if n in lines]
    text = ("# Where the figures come from\n\n"
            "Written by `make docs` (scripts/make_docs.py): each figure's run, whether it is a recorded\n"
            "full run (`runs/<name>`, trained with the command on the model's page) or a small run that\n"
            "`make docs` trained itself when no recorded run was at hand, and what that run reached.\n\n"
            "| run | folder | kind | result | figures |\n|---|---|---|---|---|\n"
            + "\n".join(lines[n] for n in order) + "\n")
    path.write_text(text)


# ---------------------------------------------------------------------------------------------
# Tables from the recorded benchmark JSON

PAGES = {"selective_scan": "selective_scan.md", "attention": "attention.md", "attention_qkvpacked": "attention.md",
         "lstm": "rnn.md", "gru": "rnn.md", "rnn": "rnn.md", "leaky": "rnn.md", "batch_norm_relu": "batch_norm.md",
         "add_layer_norm": "layer_norm.md", "bias_gelu": "gelu.md"}


def _shape_text(shape: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in shape.items())


def render_table(results: dict, op: str) -> str:
    """One markdown table of a recorded benchmark run's cases of ``op``."""
    m = results["machine"]
    peaks = ", ".join(f"{d} {v:.3f} TFLOP/s" for d, v in results.get("gemm_peak_TFLOPs", {}).items())
    where = m.get("gpu") or m.get("cpu") or m.get("platform", "?")
    head = (f"Recorded {m['date']} on {where} ({results['device']}, {m.get('threads', '?')} threads, torch "
            f"{m['torch']}); limits measured in the same run: copy {results['copy_bandwidth_GBps']:.1f} GB/s"
            + (f", GEMM {peaks}" if peaks else "") + ". Ratio: the baseline's time over the contender's.\n\n")
    rows = ["| mode | dtype | shape | contender | median | × baseline | % of limit |", "|---|---|---|---|---|---|---|"]
    for case in results["cases"]:
        if case["op"] != op:
            continue
        for row in case["results"]:
            if "error" in row:
                rows.append(f"| {case['mode']} | {case['dtype']} | {_shape_text(case['shape'])} | {row['contender']} "
                            f"| error | | |")
                continue
            ratio = f"{row['speedup_vs_baseline']:.2f}×" if "speedup_vs_baseline" in row else ""
            limit = ""
            if "fraction_of_gemm_peak" in row:
                limit = f"{100 * row['fraction_of_gemm_peak']:.0f}% GEMM"
            elif "fraction_of_copy_bw" in row:
                limit = f"{100 * row['fraction_of_copy_bw']:.0f}% copy"
            name = row["contender"] + (" (baseline)" if row["contender"] == case["baseline"] else "")
            rows.append(f"| {case['mode']} | {case['dtype']} | {_shape_text(case['shape'])} | {name} "
                        f"| {row['median_s'] * 1e3:.3f} ms | {ratio} | {limit} |")
    if len(rows) == 2:
        return ""
    floors = []  # what each case costs at the machine's measured limit: the time no backend beats
    for case in results["cases"]:
        if case["op"] != op:
            continue
        what = f"{case['mode']} {case['dtype']} ({_shape_text(case['shape'])})"
        if case.get("flops"):
            peak = results.get("gemm_peak_TFLOPs", {}).get(case["dtype"])
            if peak:
                floors.append(f"- {what}: {case['flops'] / 1e9:.3g} GFLOP, {case['flops'] / (peak * 1e12) * 1e3:.3f} ms "
                              f"at the GEMM peak")
        elif case.get("bytes"):
            bw = results["copy_bandwidth_GBps"]
            floors.append(f"- {what}: {case['bytes'] / 1e6:.3g} MB of minimum traffic, "
                          f"{case['bytes'] / (bw * 1e9) * 1e3:.3f} ms at the copy bandwidth")
    limits = ("\n\nThe floor of each case (its work at the machine's limit measured in the same run):\n\n"
              + "\n".join(floors)) if floors else ""
    command = f"python -m benchmarks --ops {op} --device {results['device'].split(':')[0]}"
    return head + "\n".join(rows) + limits + f"\n\nReproduce: `{command}`.\n"


def _marked_blocks(text: str):
    """(start, end, op) of every `<!-- bench:op -->` ... `<!-- /bench -->` block's inside."""
    pos = 0
    while True:
        start = text.find("<!-- bench:", pos)
        if start < 0:
            return
        op_end = text.index(" -->", start)
        op = text[start + len("<!-- bench:"):op_end]
        inner = op_end + len(" -->")
        end = text.index("<!-- /bench -->", inner)
        yield inner, end, op
        pos = end


def render_pages(bench_dir: Path = BENCH, kernels_dir: Path = DOCS / "kernels") -> dict[Path, str]:
    """Every kernel page with its bench blocks filled from the recorded JSON files."""
    recorded = [json.loads(p.read_text()) for p in sorted(bench_dir.glob("*.json"))]
    pages = {}
    for page in sorted(set(PAGES.values())):
        path = kernels_dir / page
        text = path.read_text()
        out, last = [], 0
        for start, end, op in _marked_blocks(text):
            if op not in PAGES:
                raise ValueError(f"{path}: unknown op {op!r} in a bench block (known: {sorted(PAGES)})")
            tables = [t for t in (render_table(r, op) for r in recorded) if t]
            out.append(text[last:start])
            out.append("\n" + ("\n".join(tables) if tables else "No benchmark run recorded yet.\n"))
            last = end
        out.append(text[last:])
        pages[path] = "".join(out)
    return pages


def make_tables(check: bool = False) -> int:
    stale = []
    for path, text in render_pages().items():
        if path.read_text() != text:
            stale.append(path)
            if not check:
                path.write_text(text)
    if check and stale:
        print("out of date with docs/bench/*.json (run `make docs`):", *map(str, stale), file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/make_docs.py", description=__doc__.split("\n\n")[0])
    p.add_argument("what", nargs="?", choices=["all", "tables", "figures"], default="all")
    p.add_argument("--check", action="store_true", help="tables: fail if a page differs from the recorded JSON")
    p.add_argument("--models", default=",".join(RUNS), help=f"figures: runs to draw, of {list(RUNS)}")
    p.add_argument("--runs", default=str(ROOT / "runs"), help="where recorded runs are looked for")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = set(names) - set(RUNS)
    if unknown:
        p.error(f"--models: unknown {sorted(unknown)}; choose from {list(RUNS)}")
    if args.what in ("all", "tables"):
        if make_tables(args.check):
            return 1
    if args.what in ("all", "figures"):
        for path in make_figures(names, Path(args.runs)):
            print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
