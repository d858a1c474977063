"""pyneuro.bench.timing: the clock each device uses, and that it measures the work, not the launch."""
from __future__ import annotations

import time

import pytest
import torch

from pyneuro.bench.timing import copy_bandwidth, gemm_peak, time_fn, time_interleaved


def test_cpu_timing_is_wall_time_of_the_call():
    t = time_fn(lambda: time.sleep(0.02), torch.device("cpu"), warmup=0, repeats=3)
    assert t["clock"] == "wall" and t["runs"] == 3
    assert 0.02 <= t["min_s"] <= t["median_s"]


def test_limits_are_positive_and_finite_on_cpu():
    cpu = torch.device("cpu")
    for value in (copy_bandwidth(cpu, 1 << 22), gemm_peak(cpu, torch.float32, n=256)):
        assert 0 < value < float("inf")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_timing_uses_events_and_sees_queued_work():
    # _sleep queues a kernel that spins ~cycles; the call returns at once, so only a device clock
    # (CUDA events, synchronised) sees the time it takes.
    device = torch.device("cuda")
    cycles = 50_000_000
    t = time_fn(lambda: torch.cuda._sleep(cycles), device, warmup=1, repeats=3)
    assert t["clock"] == "cuda-events"
    assert t["median_s"] > cycles / 3e9  # no GPU clocks at 3 GHz: at least ~17 ms


def _sleeper(calls: list):
    """make(label, seconds) -> a contender that logs its label into ``calls`` and sleeps."""
    def make(label, seconds):
        def fn():
            calls.append(label)
            time.sleep(seconds)
        return fn
    return make


def test_interleaved_timing_takes_turns_and_isolates_a_broken_contender():
    calls = []
    make = _sleeper(calls)

    def broken():
        calls.append("broken")
        if calls.count("broken") > 2:  # survives its warm-up, fails in the timed rounds
            raise RuntimeError("kernel fault")

    fns = {"a": make("a", 0.002), "b": make("b", 0.004), "broken": broken}
    t = time_interleaved(fns, torch.device("cpu"), warmup=2, repeats=4, min_time=0.03)
    assert t["broken"] == {"error": "RuntimeError: kernel fault"}
    assert t["a"]["runs"] == t["b"]["runs"] >= 4  # on the CPU the contenders stay together
    # rounds go on until each contender has min_time of timed calls, and stop once "a", the fastest,
    # has: one call fewer would have been short of it. Counted from the measured times, since
    # time.sleep(0.002) takes longer than 2 ms on a busy machine.
    assert t["a"]["total_s"] >= 0.03 and t["b"]["total_s"] >= 0.03
    assert t["a"]["total_s"] - t["a"]["max_s"] < 0.03 or t["a"]["runs"] == 4
    rounds = [c for c in calls[6:] if c != "broken"]  # after the warm-up calls
    assert rounds[:8] == ["a", "a", "b", "b"] * 2  # per round and contender: one settling call, one timed
    assert 0.002 <= t["a"]["min_s"] <= t["a"]["median_s"] < t["b"]["median_s"]


def test_on_a_gpu_a_contender_with_its_share_leaves_the_rotation():
    """leave_when_done (the default for CUDA devices): the slow contender stops at its share (here
    its `repeats`), the fast one goes on alone to its min_time, instead of the slow one making as
    many calls as the fast one needs."""
    calls = []
    make = _sleeper(calls)

    t = time_interleaved({"fast": make("fast", 0.001), "slow": make("slow", 0.05)}, torch.device("cpu"),
                         warmup=1, repeats=4, min_time=0.05, leave_when_done=True)
    assert t["slow"]["runs"] == 4 and calls.count("slow") == 1 + 2 * 4
    assert t["fast"]["runs"] > 4 and t["fast"]["total_s"] >= 0.05
    assert t["fast"]["total_s"] - t["fast"]["max_s"] < 0.05  # and it stopped once it had it
    assert calls[-2:] == ["fast", "fast"]
