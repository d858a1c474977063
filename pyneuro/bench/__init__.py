"""Benchmarks: every available backend of each op against what a user would otherwise run
(torch SDPA, torch.nn.LSTM/GRU/RNN incl. cuDNN, the naive scan), timed in the same run, each
result also given as a fraction of this machine's measured limits (copy bandwidth, GEMM peak).

    pyneuro bench                               # all ops, on the GPU if there is one, else the CPU
    python -m pyneuro.bench --ops selective_scan --device cpu --json out.json
    pytest benchmarks/test_bench.py             # the same cases under pytest-benchmark (from a checkout)

``python -m benchmarks`` in a checkout is an alias of ``python -m pyneuro.bench``.
"""
from .runner import main, run

__all__ = ["main", "run"]
