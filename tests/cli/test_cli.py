"""The `pyneuro` command end to end on a small MNIST subset: train, resume, eval, errors, info."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from pyneuro import cli
from pyneuro.data import load_mnist, to_view
from pyneuro.models import registry
from pyneuro.train import progress

REPO = Path(__file__).resolve().parents[2]
TINY = ["--model", "cnn", "--set", "model.channels=[8,16]", "--set", "model.convs_per_block=1",
        "--set", "train.train_subset=512", "--set", "train.val_subset=200", "--device", "cpu"]


def _state(run: Path) -> dict:
    return torch.load(run / "last.pt", weights_only=True)


def _fresh_test_predictions(checkpoint: Path):
    """Test-set predictions of a checkpoint, computed here without pyneuro.train."""
    state = torch.load(checkpoint, weights_only=True)
    spec = registry.get(state["settings"]["model"])
    model = spec.build(**state["settings"]["hyper"])
    model.load_state_dict(state["model_state"])
    model.eval()
    images, labels = load_mnist(split="test")
    with torch.no_grad():
        preds = torch.cat([model(to_view(chunk, spec.view)).argmax(-1) for chunk in images.split(2000)])
    return preds, labels


@pytest.mark.slow
def test_train_writes_run_folder_and_eval_reproduces_it(real_mnist, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", *TINY, "--epochs", "1", "--out", str(run)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for name in ("last.pt", "metrics.jsonl", "settings.json"):
        assert (run / name).stat().st_size > 0, name
    for name in ("curves.png", "confusion.png", "predictions.png"):  # decodable, not one colour
        assert len(np.unique(mpimg.imread(run / name)[..., :3].reshape(-1, 3), axis=0)) > 50, name

    # The reported accuracy and confusion matrix against a fresh evaluation of the checkpoint.
    preds, labels = _fresh_test_predictions(run / "last.pt")
    fresh_acc = (preds == labels).double().mean().item()
    assert abs(printed["test_acc"] - fresh_acc) <= 1 / len(labels)  # one argmax tie of slack
    evaluation = json.loads((run / "eval.json").read_text())
    expected_cm = torch.zeros(10, 10, dtype=torch.long)
    expected_cm.index_put_((labels, preds), torch.ones_like(labels), accumulate=True)
    assert (torch.tensor(evaluation["confusion_matrix"]) - expected_cm).abs().sum() <= 2
    recall = {c: r["recall"] for c, r in evaluation["report"]["per_class"].items()}
    for c in range(10):
        assert recall[str(c)] == pytest.approx(((preds == c) & (labels == c)).sum().item()
                                               / (labels == c).sum().item(), abs=1e-3)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1]

    # eval of the saved checkpoint elsewhere gives the same accuracy.
    other = tmp_path / "eval"
    assert cli.main(["eval", "--checkpoint", str(run / "last.pt"), "--out", str(other)]) == 0
    assert abs(json.loads((other / "eval.json").read_text())["test_acc"] - fresh_acc) <= 1 / len(labels)

    # The same folder again without --resume is refused, and says how to go on.
    assert cli.main(["train", *TINY, "--epochs", "1", "--out", str(run)]) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_after_interrupt_matches_uninterrupted_run(real_mnist, tmp_path, monkeypatch):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert cli.main(["train", *TINY, "--epochs", "2", "--out", str(straight)]) == 0

    # A real Ctrl-C (SIGINT to this process) during the 6th batch (epoch 2 of 2, 4 batches per
    # epoch at batch 128 on 512 images): the batch completes, then the run saves and stops.
    real_update, calls = progress.Progress.update, {"n": 0}

    def interrupting_update(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            os.kill(os.getpid(), signal.SIGINT)
        real_update(self, *args, **kwargs)

    monkeypatch.setattr(progress.Progress, "update", interrupting_update)
    assert cli.main(["train", *TINY, "--epochs", "2", "--out", str(interrupted)]) == 130
    saved = _state(interrupted)
    assert (saved["epoch"], saved["batch_in_epoch"], saved["step"]) == (1, 2, 6)
    assert not (interrupted / "eval.json").exists()
    monkeypatch.setattr(progress.Progress, "update", real_update)

    assert cli.main(["train", "--resume", str(interrupted)]) == 0
    a, b = _state(straight)["model_state"], _state(interrupted)["model_state"]
    for key in a:
        assert torch.equal(a[key], b[key]), f"resumed run differs in {key}"
    metrics = lambda run: [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r["val_acc"] for r in metrics(straight)] == [r["val_acc"] for r in metrics(interrupted)]


@pytest.mark.slow
def test_resume_with_more_epochs_continues(real_mnist, tmp_path):
    run = tmp_path / "run"
    assert cli.main(["train", *TINY, "--epochs", "1", "--out", str(run)]) == 0
    assert cli.main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert _state(run)["epoch"] == 2
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_errors_are_reported_not_raised(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"train": {"lr": }}')
    assert cli.main(["train", "--model", "cnn", "--config", str(bad)]) == 2
    assert "bad.json:1:18: malformed JSON" in capsys.readouterr().err
    assert cli.main(["train", "--model", "cnn", "--set", "train.batch_size=big"]) == 2
    assert "'batch_size' must be an integer" in capsys.readouterr().err
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 truncated")
    assert cli.main(["eval", "--checkpoint", str(corrupt)]) == 2
    assert "unreadable or corrupt" in capsys.readouterr().err


def test_info_reports_build_and_backends(capsys):
    assert cli.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backends"]["cpu"]["attention"]["reference"] == "available"
    assert "built" in info["extension"]
    assert cli.main(["info"]) == 0
    text = capsys.readouterr().out
    assert "extension pyneuro._C" in text and "attention" in text


def test_python_dash_m_and_console_script_agree():
    out = subprocess.run([sys.executable, "-m", "pyneuro", "models"], capture_output=True, text=True, check=True)
    assert "cnn" in out.stdout and "transformer" in out.stdout


@pytest.mark.slow
def test_main_py_menu_reasks_then_trains(real_mnist, tmp_path):
    """`python main.py` driven through stdin: two invalid answers, then model 1 (cnn)."""
    run = tmp_path / "menu-run"
    proc = subprocess.run(
        [sys.executable, str(REPO / "main.py"), "--epochs", "1", "--set", "train.train_subset=256",
         "--set", "train.val_subset=100", "--set", "model.channels=[8,16]", "--out", str(run)],
        input="0\nnot-a-model\n1\n", capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("is not on the list") == 2
    assert json.loads((run / "eval.json").read_text())["model"] == "cnn"


def test_main_py_ask_model_accepts_names_and_numbers():
    sys.path.insert(0, str(REPO))
    try:
        import main
    finally:
        sys.path.pop(0)
    answers = iter(["", "7", "gru"])
    shown = []
    assert main.ask_model(["cnn", "gru"], ["a", "b"], read=lambda _: next(answers), write=shown.append) == "gru"
    assert sum("not on the list" in s for s in shown) == 2
    answers = iter(["2"])
    assert main.ask_model(["cnn", "gru"], ["a", "b"], read=lambda _: next(answers), write=shown.append) == "gru"


def test_bench_runs_from_the_package_and_reports_fractions_of_the_machine(tmp_path, monkeypatch, capsys):
    # From anywhere but the checkout: the runner ships in the package (pyneuro.bench).
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--quick", "--ops", "selective_scan,attention", "--device", "cpu", "--repeats", "1",
                     "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    bandwidth, peak = results["copy_bandwidth_GBps"], results["gemm_peak_TFLOPs"]["float32"]
    assert bandwidth > 0 and peak > 0
    assert f"copy bandwidth {bandwidth:.1f} GB/s" in printed
    timed = [(case, r) for case in results["cases"] for r in case["results"] if "median_s" in r]
    contenders = {r["contender"] for _, r in timed}
    assert {"reference", "cpu", "torch-sdpa"} <= contenders
    for case, r in timed:
        base = next(b for b in case["results"] if b["contender"] == case["baseline"])
        assert r["speedup_vs_baseline"] == pytest.approx(base["median_s"] / r["median_s"])
        # Every result is set against the machine's limit for its bound, recomputed here.
        if case["op"] == "selective_scan":
            assert r["fraction_of_copy_bw"] == pytest.approx(case["bytes"] / r["median_s"] / (bandwidth * 1e9))
        else:
            assert r["fraction_of_gemm_peak"] == pytest.approx(case["flops"] / r["median_s"] / (peak * 1e12))
    assert printed.count("% of copy") + printed.count("% of GEMM") == len(timed)


def test_python_dash_m_benchmarks_is_an_alias_of_the_packaged_runner():
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], capture_output=True, text=True,
                         check=True, cwd=REPO)
    assert out.stdout.startswith("usage: python -m benchmarks") and "--ops" in out.stdout


def test_explain_says_which_backend_auto_picks_and_why(capsys):
    from pyneuro import _backends

    assert cli.main(["explain", "selective_scan", "--shape", "batch=2,dim=8,L=16,N=4096"]) == 0
    out = capsys.readouterr().out
    assert "auto picks: reference" in out
    if _backends.OPS["selective_scan"].status("cpu", torch.device("cpu")) is None:
        assert "N = 4096 (A.shape[1]) exceeds the 'cpu' backend's limit" in out
        assert cli.main(["explain", "selective_scan", "--shape", "N=16", "--dtype", "bf16"]) == 0
        assert "auto picks: cpu" in capsys.readouterr().out
    assert "does not run on cpu tensors" in out  # the cuda backend, with its reason


@pytest.mark.parametrize("args,message", [
    (["explain", "nope"], "unknown op 'nope'"),
    (["explain", "selective_scan", "--shape", "N=x"], "--shape takes KEY=INT items"),
    (["explain", "selective_scan", "--shape", "width=3"], "selective_scan --shape"),
    (["explain", "selective_scan", "--dtype", "int8"], "--dtype must be one of"),
])
def test_explain_bad_arguments_are_reported(capsys, args, message):
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err
