"""pyneuro.retain_freed_memory: a training-like mix of allocations stops faulting in fresh pages.

Each variant runs in a subprocess: the setting is process-wide and cannot be undone."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

import pyneuro

# Tensors of 200 kB to 20 MB in a random order, a few alive at a time, every page touched: the kind
# of traffic a training step makes. Prints the minor page faults of 20 such steps after 5 of warm-up.
_SCRIPT = textwrap.dedent("""
    import resource, sys, torch
    if sys.argv[1] == "retain":
        import pyneuro
        assert pyneuro.retain_freed_memory() and pyneuro.retain_freed_memory()  # idempotent
    def step(gen):
        live = []
        for _ in range(40):
            t = torch.empty(int(torch.randint(50_000, 5_000_000, (1,), generator=gen)))
            t[::1024] = 1.0
            live.append(t)
            if len(live) > 6:
                live.pop(int(torch.randint(0, len(live), (1,), generator=gen)))
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        step(gen)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step(gen)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="mallopt is glibc's; elsewhere retain_freed_memory does nothing")


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, timeout=300,
                         check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return int(out.stdout.split()[-1])


@glibc_only
def test_retained_memory_is_reused_instead_of_faulted_in_again():
    default, retained = _faults("default"), _faults("retain")
    # 20 steps of ~40 tensors of ~2.5 MB on average: glibc's defaults fault in ~10^4 or more pages;
    # with freed memory kept, the warm-up has already touched everything the steps reuse.
    assert default > 5_000, default
    assert retained < default / 20, (retained, default)


def test_off_glibc_it_reports_that_it_did_nothing(monkeypatch):
    import pyneuro.runtime as runtime

    monkeypatch.setattr(runtime, "_applied", False)
    monkeypatch.setattr(runtime.platform, "libc_ver", lambda: ("", ""))
    assert runtime.retain_freed_memory() is False
    assert pyneuro.retain_freed_memory is runtime.retain_freed_memory
