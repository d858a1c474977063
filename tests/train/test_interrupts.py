"""Crash-proof training: a run stopped at a random moment, by a signal or by kill -9, and resumed
ends with weights and eval.json bit-identical to a run that was never stopped (same seed).

Each property runs in one subprocess (tests/train/interrupt_harness.py) on a tiny model and a tiny
fake data set, so that many random moments fit in a few seconds."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).with_name("interrupt_harness.py")
TRIALS = 10


def _run_harness(mode: str, tmp_path: Path, seed: int) -> dict:
    proc = subprocess.run([sys.executable, str(HARNESS), mode, str(tmp_path), str(TRIALS), str(seed)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check(report: dict, stopped_word: str) -> list[dict]:
    assert report["repeatable"], "two uninterrupted runs with the same seed differ"
    trials = report["trials"]
    differing = [t for t in trials if not t["identical"]]
    assert not differing, f"resumed runs differ from the uninterrupted one: {differing}"
    stopped = [t for t in trials if t["outcome"].startswith(stopped_word)]
    assert len(stopped) >= TRIALS, f"only {len(stopped)} of {len(trials)} trials were stopped: {trials}"
    return stopped


def test_sigint_and_sigterm_at_random_moments_resume_bit_identically(tmp_path):
    stopped = _check(_run_harness("signals", tmp_path, seed=1), "interrupted")
    # The signals landed at different places of the run, not all at one boundary.
    assert len({t["outcome"] for t in stopped}) >= 3, stopped


@pytest.mark.slow
def test_kill_9_at_random_moments_resumes_bit_identically(tmp_path):
    stopped = _check(_run_harness("kill", tmp_path, seed=2), "killed")
    # Most kills land after a checkpoint (periodic ones every 3 steps), so resume is exercised.
    assert sum("resumed" in t["outcome"] for t in stopped) >= 3, stopped
