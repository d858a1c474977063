"""Run in a subprocess by test_interrupts.py: interrupt tiny training runs at random moments, resume
them, and report whether each ended bit-identical to an uninterrupted run.

    python interrupt_harness.py signals|kill WORKDIR TRIALS SEED

``signals``: SIGINT or SIGTERM, sent to this process from a timer thread at a random moment of the
run (data loading, a step, a checkpoint write, the final evaluation), then an in-process resume.
``kill``: the run goes on in a forked child, killed with SIGKILL at a random moment; this process
then resumes from whatever checkpoint the child left (or starts again when it left none).

Prints one JSON object: per trial what happened and whether the weights and eval.json match.
Everything runs on one thread, so the runs are deterministic and fork is safe (no OpenMP pool).
"""
from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

from pyneuro.train import loop  # noqa: E402
from pyneuro.train.config import resolve  # noqa: E402
from tiny_mnist import write_tiny_mnist  # noqa: E402  (this folder is sys.path[0])

def _settings(data_dir: Path) -> dict:
    return resolve("cnn", None, [
        "model.channels=[4,8]", "model.convs_per_block=1", "model.hidden=16", "model.dropout=0.25",
        "train.batch_size=32", "train.epochs=2", "train.threads=1", "train.device=\"cpu\"",
        "train.augment_shift=1", "train.augment_rotate=10", "train.augment_scale=0.1",
        "train.checkpoint_every=3", "train.eval_batch_size=64",
        f"train.data_dir={json.dumps(str(data_dir))}"])


def _result(run: Path) -> tuple[dict, bytes]:
    state = torch.load(run / "last.pt", weights_only=True)
    return state["model_state"], (run / "eval.json").read_bytes()


def _same(run: Path, reference) -> bool:
    weights, evaluation = _result(run)
    ref_weights, ref_eval = reference
    return evaluation == ref_eval and weights.keys() == ref_weights.keys() and all(
        torch.equal(weights[k], ref_weights[k]) for k in weights)


def _quiet():
    import io
    return io.StringIO()


def _signal_trial(settings, run: Path, delay: float, signum: int) -> str:
    timer = threading.Timer(delay, os.kill, (os.getpid(), signum))
    timer.start()
    try:
        loop.train(settings, run, stream=_quiet())
        outcome = "finished"
    except loop.Interrupted as exc:
        assert exc.signum == signum
        outcome = "interrupted"
    finally:
        timer.cancel()
        timer.join()
    if outcome == "interrupted":
        stopped_at = torch.load(run / "last.pt", weights_only=True)["step"]
        loop.train(None, run, resume=True, stream=_quiet())
        return f"interrupted at step {stopped_at}"
    return outcome


def _kill_trial(settings, run: Path, delay: float) -> str:
    pid = os.fork()
    if pid == 0:  # the victim
        try:
            loop.train(settings, run, stream=_quiet())
        finally:
            os._exit(0)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    finished = os.WIFEXITED(status)
    if (run / "eval.json").exists() and finished:
        return "finished"
    if (run / "last.pt").exists():
        saved = torch.load(run / "last.pt", weights_only=True)["step"]
        loop.train(None, run, resume=True, stream=_quiet())
        return f"killed, resumed from step {saved}"
    loop.train(settings, run, stream=_quiet())  # killed before the first checkpoint
    return "killed, restarted"


def main() -> int:
    mode, work, wanted, seed = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    import pyneuro.viz.plots as plots
    plots.run_plots = lambda *args, **kwargs: []  # not part of the claim; matplotlib would dominate
    loop.model_pictures = lambda *args, **kwargs: []  # (the same for the model's pictures and report)
    loop.write_report = lambda out_dir: None
    # Stray signals after a trial (a timer that fired late) must not end the harness.
    signal.signal(signal.SIGINT, lambda *a: None)
    signal.signal(signal.SIGTERM, lambda *a: None)
    data = work / "data"
    write_tiny_mnist(data)  # 250 train (7 steps of 32 per epoch), 50 val, 60 test
    settings = _settings(data)
    loop.train(settings, work / "straight", stream=_quiet())
    reference = _result(work / "straight")
    # A second, warm run (in a forked child for `kill`, as the victims run): its duration is the
    # window the random moments are drawn from.
    t0 = time.perf_counter()
    if mode == "kill":
        pid = os.fork()
        if pid == 0:
            try:
                loop.train(settings, work / "straight-again", stream=_quiet())
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
    else:
        loop.train(settings, work / "straight-again", stream=_quiet())
    duration = time.perf_counter() - t0
    report = {"duration_s": duration, "repeatable": _same(work / "straight-again", reference), "trials": []}
    rng = random.Random(seed)
    # Trials until `wanted` of them were stopped (a signal may land after the end), at most 3x.
    for k in range(3 * wanted):
        if sum(t["outcome"] not in ("finished",) for t in report["trials"]) >= wanted:
            break
        run = work / f"trial{k}"
        # Mostly inside the training window; the first 10% is set-up (data, model) in the child.
        delay = rng.uniform(0.0, duration) if mode == "signals" else rng.uniform(0.1 * duration, duration)
        if mode == "signals":
            signum = rng.choice([signal.SIGINT, signal.SIGTERM])
            outcome = _signal_trial(settings, run, delay, signum)
        else:
            outcome = _kill_trial(settings, run, delay)
        state = torch.load(run / "last.pt", weights_only=True)
        report["trials"].append({"delay_s": delay, "outcome": outcome, "identical": _same(run, reference),
                                 "step": state["step"]})
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
