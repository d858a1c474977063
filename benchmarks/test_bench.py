"""The runner's cases under pytest-benchmark: `pytest benchmarks/ [--benchmark-json out.json]`.

Set PYNEURO_BENCH_FULL=1 for the full shapes (default: the quick ones)."""
from __future__ import annotations

import os

import pytest
import torch

from benchmarks.cases import CASES

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
