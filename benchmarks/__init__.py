"""The benchmark runner ships inside the package as ``pyneuro.bench``; ``python -m benchmarks``
stays as an alias of ``python -m pyneuro.bench`` for checkouts and scripts that use it.

    pytest benchmarks/test_bench.py                        # the runner's cases under pytest-benchmark
    pytest benchmarks/test_bench.py --benchmark-disable    # each case once: a quick smoke test
"""
