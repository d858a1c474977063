"""Timing helpers: median of repeated runs, synchronised on the GPU."""
from __future__ import annotations

import statistics
import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn, device: torch.device, warmup: int = 2, repeats: int = 5, min_time: float = 0.0) -> dict:
    """Median / min wall time of ``fn()`` in seconds after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    start_all = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start_all) < min_time:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if len(times) >= 1000:
            break
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": len(times)}


def copy_bandwidth(device: torch.device, n_bytes: int = 1 << 28) -> float:
    """Achieved device-to-device copy bandwidth in bytes/s (read + write), the memory roofline."""
    n = n_bytes // 4
    src = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, warmup=2, repeats=10)
    return 2 * n * 4 / t["median_s"]
