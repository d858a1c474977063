"""`make docs` (scripts/make_docs.py): every figure in docs/ is one it regenerates, the kernel pages'
measured tables are what the recorded benchmark JSON gives, and a figure run works end to end."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load_make_docs():
    spec = importlib.util.spec_from_file_location("make_docs", REPO / "scripts" / "make_docs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_docs"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


make_docs = _load_make_docs()


def test_every_figure_in_docs_is_regenerated_by_make_docs():
    made = {f"{name}-{picture}" for name, run in make_docs.RUNS.items() for picture in run.pictures}
    present = {p.relative_to(REPO / "docs" / "figures").as_posix() for p in (REPO / "docs").rglob("*.png")
               if p.parent == REPO / "docs" / "figures"}
    elsewhere = [p for p in (REPO / "docs").rglob("*.png") if p.parent != REPO / "docs" / "figures"]
    assert not elsewhere, f"figures outside docs/figures are not made by make docs: {elsewhere}"
    assert not present - made, f"in docs/figures but not made by make docs: {sorted(present - made)}"
    assert not made - present, f"make docs makes these but they are missing (run `make docs`): {sorted(made - present)}"


def test_sources_name_every_run():
    text = (REPO / "docs" / "figures" / "SOURCES.md").read_text()
    for name in make_docs.RUNS:
        assert f"| `{name}` |" in text, f"docs/figures/SOURCES.md has no line for run {name!r} (run `make docs`)"


def test_kernel_tables_are_what_the_recorded_benchmarks_give():
    for path, text in make_docs.render_pages().items():
        assert path.read_text() == text, f"{path} differs from docs/bench/*.json: run `python scripts/make_docs.py tables`"


def _recorded(cases):
    return {"machine": {"date": "2026-12-02", "torch": "2.13.0", "threads": 2, "cpu": "Some CPU, AVX2"},
            "device": "cpu", "quick": False, "copy_bandwidth_GBps": 10.0,
            "gemm_peak_TFLOPs": {"float32": 0.4}, "cases": cases}


def test_render_table_rows_ratios_and_limits():
    case = {"op": "lstm", "mode": "fwd+bwd", "dtype": "float32", "shape": {"T": 28, "B": 128},
            "baseline": "torch.nn", "flops": 2e6, "results": [
                {"contender": "torch.nn", "median_s": 0.010, "speedup_vs_baseline": 1.0, "fraction_of_gemm_peak": 0.4},
                {"contender": "cpu", "median_s": 0.005, "speedup_vs_baseline": 2.0, "fraction_of_gemm_peak": 0.8},
                {"contender": "triton", "error": "RuntimeError: no GPU"}]}
    other = {**case, "op": "gru"}
    table = make_docs.render_table(_recorded([case, other]), "lstm")
    lines = [l for l in table.splitlines() if l.startswith("| fwd+bwd")]
    assert len(lines) == 3  # the gru case is not in the lstm table
    assert "torch.nn (baseline) | 10.000 ms | 1.00× | 40% GEMM" in lines[0]
    assert "| cpu | 5.000 ms | 2.00× | 80% GEMM |" in lines[1]
    assert "| triton | error |" in lines[2]
    assert "Some CPU, AVX2" in table and "python -m benchmarks --ops lstm --device cpu" in table
    assert "- fwd+bwd float32 (T=28, B=128): 0.002 GFLOP, 0.005 ms at the GEMM peak" in table
    assert make_docs.render_table(_recorded([other]), "lstm") == ""


def test_render_pages_fills_only_the_marked_blocks(tmp_path):
    bench, kernels = tmp_path / "bench", tmp_path / "kernels"
    bench.mkdir()
    kernels.mkdir()
    case = {"op": "gru", "mode": "fwd", "dtype": "float32", "shape": {"T": 2}, "baseline": "torch.nn",
            "results": [{"contender": "torch.nn", "median_s": 0.001}]}
    (bench / "cpu.json").write_text(json.dumps(_recorded([case])))
    for page in set(make_docs.PAGES.values()):
        (kernels / page).write_text("# page\n")
    (kernels / "rnn.md").write_text("before\n<!-- bench:gru -->\nstale\n<!-- /bench -->\nafter\n"
                                    "<!-- bench:leaky -->\n<!-- /bench -->\n")
    pages = make_docs.render_pages(bench, kernels)
    text = pages[kernels / "rnn.md"]
    assert text.startswith("before\n<!-- bench:gru -->\n") and text.endswith("<!-- /bench -->\n")
    assert "stale" not in text and "| fwd | float32 | T=2 | torch.nn (baseline) | 1.000 ms |" in text
    assert "No benchmark run recorded yet." in text  # leaky has no case in the JSON
    assert "after\n<!-- bench:leaky -->" in text
    (kernels / "rnn.md").write_text("<!-- bench:nosuchop -->\n<!-- /bench -->\n")
    with pytest.raises(ValueError, match="nosuchop"):
        make_docs.render_pages(bench, kernels)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    sys.path.insert(0, str(REPO / "tests" / "train"))
    from tiny_mnist import write_tiny_mnist

    return write_tiny_mnist(tmp_path_factory.mktemp("tiny-mnist"))


@pytest.mark.slow
def test_make_figures_trains_a_small_run_and_copies_its_pictures(tmp_path, tiny_data, monkeypatch):
    run = make_docs.Run("ann", ["--epochs", "1", "--set", "model.hidden=[16]"],
                        ["curves.png", "architecture.png", "embedding.png", "weights.png"])
    monkeypatch.setitem(make_docs.RUNS, "ann", run)
    figures = tmp_path / "figures"
    written = make_docs.make_figures(["ann"], runs=tmp_path / "runs", figures=figures,
                                     extra_args=("--set", f"train.data_dir={tiny_data}", "--set", "train.threads=1"))
    assert sorted(p.name for p in written) == sorted(f"ann-{p}" for p in run.pictures)
    assert all(p.stat().st_size > 1000 for p in written)
    assert (tmp_path / "runs" / "docs" / "ann" / "report.html").exists()
    sources = (figures / "SOURCES.md").read_text()
    assert "| `ann` | " in sources and "small run made by make docs" in sources and "1 epochs" in sources
