"""torchrun data parallelism: 2 gloo processes train to the same weights as 1 process with the same
global batch, only rank 0 writes the run folder, and the run resumes with another process count."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import torch

from pyneuro.train import loop
from pyneuro.train.config import resolve
from tiny_mnist import write_tiny_mnist

# No BatchNorm (SyncBatchNorm runs only on GPUs, so on the CPU each rank would normalise with its own
# half-batch statistics), no dropout (masks are per rank); augmentation is on: each rank must
# take its share of the global batch's shifts.
ARGS = ["--model", "lstm", "--set", "model.hidden_size=16", "--device", "cpu", "--epochs", "2",
        "--set", "train.batch_size=32", "--set", "train.augment_shift=1", "--set", "train.threads=1",
        "--set", "train.eval_batch_size=64"]


def test_two_processes_match_one_process_and_resume_with_one(tmp_path):
    data = write_tiny_mnist(tmp_path / "data")
    args = [*ARGS, "--set", f"train.data_dir={json.dumps(str(data))}"]  # cwd: no config.json
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp_run = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "pyneuro", "train", *args, "--out", str(ddp_run)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "2 processes (16 images each per step)" in proc.stderr
    assert proc.stderr.count("test accuracy") == 1, "only rank 0 evaluates"
    assert proc.stdout.count('"test_acc"') == 1, "only rank 0 prints the summary"

    # The same global batch in one process (in this process: the settings the CLI resolved).
    settings = json.loads((ddp_run / "settings.json").read_text())
    assert settings["world_size"] == 2
    assert json.loads((ddp_run / "eval.json").read_text())["world_size"] == 2
    single = tmp_path / "single"
    threads = torch.get_num_threads()
    try:
        loop.train(resolve("lstm", None, [f"{k}={json.dumps(v)}" for k, v in
                                          [("train." + k, v) for k, v in settings["train"].items()]
                                          + [("model." + k, v) for k, v in settings["hyper"].items()]]),
                   single, stream=io.StringIO())
    finally:
        torch.set_num_threads(threads)
    a = torch.load(ddp_run / "last.pt", weights_only=True)
    b = torch.load(single / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 2 * (250 // 32)
    for key, value in b["model_state"].items():
        torch.testing.assert_close(a["model_state"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    # And they moved: the comparison is not between two untrained models.
    first = torch.load(single / "last.pt", weights_only=True)["model_state"]
    assert any((first[k] - v).abs().max() > 1e-3 for k, v in
               loop.registry.get("lstm").build(**settings["hyper"]).state_dict().items() if v.is_floating_point())

    # A 2-process run resumes in 1 process (here: to train one epoch longer).
    try:
        summary = loop.train({"train": {"epochs": 3}}, ddp_run, resume=True, stream=io.StringIO())
    finally:
        torch.set_num_threads(threads)
    assert summary["world_size"] == 1 and json.loads((ddp_run / "settings.json").read_text())["world_size"] == 1
    assert torch.load(ddp_run / "last.pt", weights_only=True)["step"] == 3 * (250 // 32)
