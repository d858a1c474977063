"""pyneuro.retain_freed_memory: large blocks come from malloc's heap and stay there when freed.

Read through glibc's own accounting (mallinfo2) in a fresh subprocess per case: the setting is
process-wide and cannot be undone."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

import pyneuro

# A 20 MB tensor, as a training step makes many of: where glibc put it (mapped on its own, or in
# the heap) and, after it is freed, how much free memory the heap keeps.
_SCRIPT = textwrap.dedent("""
    import ctypes, json, sys, torch
    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    retained = False
    if sys.argv[1] == "retain":
        import pyneuro
        retained = pyneuro.retain_freed_memory() and pyneuro.retain_freed_memory()  # idempotent
    before = libc.mallinfo2()
    t = torch.empty(5_000_000)
    t.fill_(1.0)
    held = libc.mallinfo2()
    del t
    freed = libc.mallinfo2()
    print(json.dumps({"retained": retained, "mapped": held.hblkhd - before.hblkhd,
                      "heap_free_after": freed.fordblks}))
""")

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc"
                                or tuple(int(v) for v in platform.libc_ver()[1].split(".")[:2]) < (2, 33),
                                reason="mallopt is glibc's (mallinfo2, which the test reads, from 2.33); "
                                       "elsewhere retain_freed_memory does nothing")


def _where(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, timeout=300,
                         check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.splitlines()[-1])


@glibc_only
def test_large_blocks_come_from_the_heap_and_stay_there_when_freed():
    block = 5_000_000 * 4
    default, retain = _where("default"), _where("retain")
    # glibc's defaults map a fresh 20 MB block on its own (its threshold starts at 128 KiB) and
    # unmap it on free: the next one faults in fresh pages again.
    assert not default["retained"] and default["mapped"] >= block, default
    # Retained: served from the heap, and still there, free for the next step, after the free.
    assert retain["retained"] and retain["mapped"] == 0 and retain["heap_free_after"] >= block, retain


def test_off_glibc_it_reports_that_it_did_nothing(monkeypatch):
    import pyneuro.runtime as runtime

    monkeypatch.setattr(runtime, "_applied", False)
    monkeypatch.setattr(runtime.platform, "libc_ver", lambda: ("", ""))
    assert runtime.retain_freed_memory() is False
    assert pyneuro.retain_freed_memory is runtime.retain_freed_memory
