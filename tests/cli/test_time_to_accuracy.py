"""benchmarks/time_to_accuracy.py: its arithmetic and refusals (the real runs take minutes: the
runners are replaced by stand-ins here; docs/PERFORMANCE.md has a real run)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "time_to_accuracy.py"


@pytest.fixture
def tta():
    spec = importlib.util.spec_from_file_location("time_to_accuracy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_medians_and_ratios_and_a_run_that_missed(tta, monkeypatch, tmp_path, capsys):
    plain = {0: 20.0, 1: 22.0, 2: 30.0}
    ours = {0: 12.0, 1: None, 2: 10.0}  # seed 1 did not reach the target: not a time
    monkeypatch.setattr(tta, "run_plain", lambda seed, epochs, lr, target: {
        "accuracy": 0.991, "train_s": plain[seed], "wall_s": plain[seed] + 4, "process_s": plain[seed] + 5})
    monkeypatch.setattr(tta, "run_pyneuro", lambda seed, target, extra: {
        "accuracy": 0.992 if ours[seed] else 0.989, "train_s": ours[seed],
        "wall_s": ours[seed] + 5 if ours[seed] else None, "process_s": 20.0})
    out = tmp_path / "tta.json"
    assert tta.main(["--seeds", "0,1,2", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())["summary"]
    assert summary["train_s"] == {"plain": 22.0, "pyneuro": 11.0, "ratio": 0.5}  # medians of 3 and of the 2 reached
    assert summary["wall_s"]["ratio"] == pytest.approx(16.0 / 26.0)
    printed = capsys.readouterr().out
    assert "not reached" in printed and "= 0.50x" in printed


def test_nothing_reached_gives_no_ratio(tta, monkeypatch, capsys):
    missed = {"accuracy": 0.98, "train_s": None, "wall_s": None, "process_s": 1.0}
    monkeypatch.setattr(tta, "run_plain", lambda *a: missed)
    monkeypatch.setattr(tta, "run_pyneuro", lambda *a: missed)
    assert tta.main(["--seeds", "0"]) == 0
    assert "not reached by every contender" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--seeds", "a,b"], ["--seeds", ""], ["--target", "1.5"], ["--plain-lr", "0"]])
def test_bad_arguments_exit_2_naming_them(tta, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        tta.main(argv)
    assert exc.value.code == 2
    assert "--" in capsys.readouterr().err
