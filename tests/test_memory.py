"""Long runs: resident memory stays flat over many forward+backward calls of every op and backend.

Each case warms up (first-call caches, autograd and dispatcher state, Triton's kernel cache),
then makes CALLS more calls and asserts that the resident set grew by less than 1%.

Allocator caveats: glibc's malloc keeps freed blocks in its arenas, so RSS measures what the
process holds, not what is live; a steady state of reuse is flat, a leak keeps growing. To take
readings of live memory as nearly as possible, each reading follows gc.collect() (frees Python
cycles, autograd graphs among them) and malloc_trim(0) (returns free arena memory to the OS).
PyTorch's CPU allocator does not cache, so there is no tensor cache to account for. The 1% bound
is a few MB of a process holding torch: it catches leaks of a few kB per call, not single bytes.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc

import pytest
import torch

import pyneuro.ops  # noqa: F401  (registers the ops)
from pyneuro import _backends
from pyneuro.ops import (attention, batch_norm_relu, gru_sequence, leaky_sequence, lstm_sequence, rnn_sequence,
                         selective_scan)

WARMUP, CALLS = 100, 1000
# The Triton interpreter takes 0.2-1 s of CPU per forward+backward here (the scan's the most): 1,000
# calls would take many minutes, so it gets 5 + 30, which still catches a leak of ~200 kB per call
# (1% of the resident set over 30 calls). The Python wrappers around the kernels (registry, autograd
# wiring) are the ones the compiled backends run, 1,000 times each above; on a GPU the triton backend
# is not the interpreter, and gets 1,000 too. Interpreted, these cases are `slow` (7-40 s each).
FEWER_CALLS = {"triton": (5, 30)} if not torch.cuda.is_available() else {}
MAX_GROWTH = 0.01

_libc = ctypes.CDLL(ctypes.util.find_library("c"))


def resident_bytes() -> int:
    """VmRSS of this process after freeing what can be freed (see the module docstring)."""
    gc.collect()
    if hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line in /proc/self/status")


def _leaf(*shape, scale=1.0, gen):
    return (torch.rand(*shape, generator=gen) * 2 - 1).mul(scale).requires_grad_()


def _scan_inputs(gen):
    batch, dim, L, N = 2, 4, 16, 4
    args = dict(u=_leaf(batch, dim, L, gen=gen), delta=_leaf(batch, dim, L, scale=0.5, gen=gen),
                A=(-torch.rand(dim, N, generator=gen) - 0.1).requires_grad_(), B=_leaf(batch, N, L, gen=gen),
                C=_leaf(batch, N, L, gen=gen), D=_leaf(dim, gen=gen), z=_leaf(batch, dim, L, gen=gen),
                delta_bias=_leaf(dim, gen=gen), initial_state=_leaf(batch, dim, N, gen=gen))
    return selective_scan, args, dict(delta_softplus=True, return_last_state=True)


def _attention_inputs(gen):
    q, k, v = (_leaf(2, 2, 8, 8, gen=gen) for _ in range(3))
    return attention, dict(q=q, k=k, v=v), dict(causal=True)


def _recurrent_inputs(fn, gates, lstm=False):
    def make(gen):
        T, batch, inputs, hidden = 6, 2, 4, 5
        args = dict(x=_leaf(T, batch, inputs, gen=gen), h0=_leaf(batch, hidden, gen=gen),
                    w_ih=_leaf(gates * hidden, inputs, gen=gen), w_hh=_leaf(gates * hidden, hidden, gen=gen),
                    b_ih=_leaf(gates * hidden, gen=gen), b_hh=_leaf(gates * hidden, gen=gen))
        if lstm:
            args["c0"] = _leaf(batch, hidden, gen=gen)
        return fn, args, {}

    return make


def _leaky_inputs(gen):
    T, batch, inputs, hidden = 6, 2, 4, 5
    tau = (1 + 3 * torch.rand(hidden, generator=gen)).requires_grad_()
    args = dict(x=_leaf(T, batch, inputs, gen=gen), u0=_leaf(batch, hidden, gen=gen), w_ih=_leaf(hidden, inputs, gen=gen),
                w_hh=_leaf(hidden, hidden, gen=gen), bias=_leaf(hidden, gen=gen), tau=tau)
    return leaky_sequence, args, {}


def _batch_norm_inputs(gen):
    C = 6
    x = _leaf(2, 7, 5, C, gen=gen).detach().permute(0, 3, 1, 2).requires_grad_()  # channels_last, odd H and W
    args = dict(x=x, running_mean=torch.zeros(C), running_var=torch.ones(C), weight=_leaf(C, gen=gen),
                bias=_leaf(C, gen=gen))
    return batch_norm_relu, args, dict(training=True, pool=2)


INPUTS = {"selective_scan": _scan_inputs, "attention": _attention_inputs, "batch_norm_relu": _batch_norm_inputs,
          "lstm": _recurrent_inputs(lstm_sequence, 4, lstm=True), "gru": _recurrent_inputs(gru_sequence, 3),
          "rnn": _recurrent_inputs(rnn_sequence, 1), "leaky": _leaky_inputs}


def _cases():
    """(op, backend) for every backend the registry reports runnable on CPU tensors here."""
    return [pytest.param(op, backend, id=f"{op}-{backend}", marks=[pytest.mark.slow] if backend in FEWER_CALLS else [])
            for op in INPUTS for backend in _backends.OPS[op].available(torch.device("cpu"))]


@pytest.mark.parametrize("op, backend", _cases())
def test_resident_memory_is_flat(op, backend):
    fn, args, options = INPUTS[op](torch.Generator().manual_seed(0))
    leaves = [t for t in args.values() if isinstance(t, torch.Tensor) and t.requires_grad]

    def call():
        outputs = fn(**args, **options, backend=backend)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        sum(o.float().sum() for o in outputs).backward()
        for leaf in leaves:
            leaf.grad = None

    warmup, calls = FEWER_CALLS.get(backend, (WARMUP, CALLS))
    growth, grown = growth_over(call, warmup, calls)
    assert growth < MAX_GROWTH, (
        f"{op}/{backend}: resident memory grew {growth:.2%} ({grown / 2**20:.1f} MiB, "
        f"{grown / calls:.0f} B per call) over {calls} forward+backward calls")


def test_a_leak_of_a_few_kb_per_call_is_caught():
    """The measurement itself: 1,000 calls that each keep 32 kB alive must exceed the bound."""
    kept = []

    def leaky_call():
        kept.append(torch.ones(8 * 1024))  # 32 kB, touched so that it is resident

    growth, grown = growth_over(leaky_call, WARMUP, CALLS)
    assert grown >= 0.9 * CALLS * 32 * 1024, f"only {grown / 2**20:.1f} MiB of the ~31 MiB kept showed in VmRSS"
    assert growth >= MAX_GROWTH, f"a 31 MiB leak grew the resident set only {growth:.2%}"


def growth_over(call, warmup: int, calls: int) -> tuple[float, int]:
    """(relative, absolute) growth of the resident set over ``calls`` calls after ``warmup``."""
    for _ in range(warmup):
        call()
    before = resident_bytes()
    for _ in range(calls):
        call()
    after = resident_bytes()
    return (after - before) / before, after - before
