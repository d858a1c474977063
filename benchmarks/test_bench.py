"""The runner's cases (pyneuro.bench.cases, the table `pyneuro bench` times) under pytest-benchmark.

    pytest benchmarks/test_bench.py [--benchmark-json out.json]   # time every contender
    pytest benchmarks/test_bench.py --benchmark-disable           # run each once: a CI smoke test

Quick shapes by default; PYNEURO_BENCH_FULL=1 selects the runner's full shapes."""
from __future__ import annotations

import os

import pytest
import torch

from pyneuro.bench.cases import CASES

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
QUICK = os.environ.get("PYNEURO_BENCH_FULL", "0") in ("", "0")


def _params():
    for op, make in CASES.items():
        for case in make(DEVICE, QUICK):
            shape = "-".join(f"{k}{v}" for k, v in case["shape"].items())
            for label, fn in case["contenders"].items():
                yield pytest.param(fn, id=f"{case['op']}-{case['mode']}-{case['dtype']}-{shape}-{label}")


@pytest.mark.parametrize("fn", list(_params()))
def test_bench(benchmark, fn):
    benchmark.group = "pyneuro"
    if DEVICE.type == "cuda":
        benchmark(lambda: (fn(), torch.cuda.synchronize()))
    else:
        benchmark(fn)
