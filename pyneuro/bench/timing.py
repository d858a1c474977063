"""Timing helpers and the machine's measured limits.

On a GPU each run is timed with CUDA events recorded on the current stream, so the time is the
device's and excludes Python launch gaps before the first kernel; on the CPU, wall time."""
from __future__ import annotations

import statistics
import time

import torch


def _time_once_cpu(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _time_once_cuda(fn) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3  # elapsed_time is in milliseconds


def time_fn(fn, device: torch.device, warmup: int = 2, repeats: int = 5, min_time: float = 0.0) -> dict:
    """Median / min time of ``fn()`` in seconds after ``warmup`` calls (CUDA events on a GPU)."""
    once = _time_once_cuda if device.type == "cuda" else _time_once_cpu
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times = []
    start_all = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start_all) < min_time:
        times.append(once(fn))
        if len(times) >= 1000:
            break
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": len(times),
            "clock": "cuda-events" if device.type == "cuda" else "wall"}


def time_interleaved(fns: dict, device: torch.device, warmup: int = 2, repeats: int = 5,
                     min_time: float = 0.0, leave_when_done: bool | None = None) -> dict:
    """time_fn for several contenders at once, in rounds (round-robin), so that a slow spell of a
    shared machine (another process, frequency changes) lands on every contender alike instead of
    on whichever was being timed; the ratios between them are what the suite reports. In each
    round a contender makes one untimed call and then one timed one: the untimed call absorbs what
    the previous contender left behind (its freed memory handed back to the OS, so fresh pages to
    fault in; cold caches), so the timed call sees the contender's own steady state, as when it
    runs alone. Rounds go on until every contender has ``repeats`` timed calls and ``min_time``
    seconds of them (at most 1000 calls each). With ``leave_when_done`` (the default on a GPU) a
    contender that has its share leaves the rotation while the others go on: there a Python-loop
    reference at ~45 ms a call beside a ~1 ms kernel would otherwise make hundreds of calls per
    case, and CUDA-event times do not drift with the host's load as wall times on a shared CPU do
    (where the contenders stay together, so that every ratio compares the same stretch of time).
    A contender that raises gets {"error": ...} and leaves the rotation. -> {label: time_fn's dict
    plus max_s and total_s (the timed calls' sum), or {"error": message}}."""
    once = _time_once_cuda if device.type == "cuda" else _time_once_cpu
    times: dict[str, list[float]] = {}
    errors: dict[str, str] = {}
    for label, fn in fns.items():
        try:
            for _ in range(warmup):
                fn()
            times[label] = []
        except Exception as exc:  # one broken contender must not hide the others
            errors[label] = f"{type(exc).__name__}: {exc}"
    if device.type == "cuda":
        torch.cuda.synchronize(device)

    if leave_when_done is None:
        leave_when_done = device.type == "cuda"

    def done(t: list[float]) -> bool:
        return len(t) >= 1000 or (len(t) >= repeats and sum(t) >= min_time)

    while active := [label for label, t in times.items() if not done(t)]:
        for label in (active if leave_when_done else list(times)):
            try:
                fns[label]()  # settle (see above)
                times[label].append(once(fns[label]))
            except Exception as exc:
                errors[label] = f"{type(exc).__name__}: {exc}"
                del times[label]
    clock = "cuda-events" if device.type == "cuda" else "wall"
    out = {}
    for label in fns:
        if label in errors:
            out[label] = {"error": errors[label]}
        else:
            t = times[label]
            out[label] = {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "total_s": sum(t),
                          "runs": len(t), "clock": clock}
    return out


def copy_bandwidth(device: torch.device, n_bytes: int = 1 << 28) -> float:
    """Best achieved device-to-device copy bandwidth in bytes/s (read + write), the memory roofline.
    The fastest run, not the median: a limit should not include the noise of a busy machine."""
    n = n_bytes // 4
    src = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, warmup=2, repeats=10)
    return 2 * n * 4 / t["min_s"]


def gemm_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int | None = None) -> float:
    """Best achieved FLOP/s of a square n x n matmul in ``dtype``: the compute roofline for that dtype."""
    if n is None:
        n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = time_fn(lambda: torch.mm(a, b), device, warmup=2, repeats=5)["min_s"]
    if device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available():
        # torch.mm runs on MKL, which does not use its fastest kernels on AMD CPUs; oneDNN (what
        # torch.nn's RNNs and the recurrent kernels here use) can be twice as fast there. The
        # limit is the faster of the two.
        am, bm = a.to_mkldnn(), b.t().contiguous().to_mkldnn()
        best = min(best, time_fn(lambda: torch._C._nn.mkldnn_linear(am, bm), device, warmup=2, repeats=5)["min_s"])
    return 2 * n**3 / best
