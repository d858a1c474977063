"""Benchmarks: every available backend of each op against what a user would otherwise run
(torch SDPA, torch.nn.LSTM/GRU/RNN incl. cuDNN, the naive scan), timed in the same run.

    python -m benchmarks                      # all ops, on the GPU if there is one, else the CPU
    python -m benchmarks --ops selective_scan --device cpu --json out.json
    pytest benchmarks/                        # the same cases under pytest-benchmark
"""
