"""The emulated kernels under AddressSanitizer + UndefinedBehaviorSanitizer or ThreadSanitizer.

Opt-in, since a sanitized build of selective_scan.cu takes minutes:

    PYNEURO_EMU_SANITIZE=address,undefined .venv/bin/python -m pytest -q tests/cuda_emu/test_emulated_sanitizers.py
    PYNEURO_EMU_SANITIZE=thread            .venv/bin/python -m pytest -q tests/cuda_emu/test_emulated_sanitizers.py

Each mode first shows that it catches the bugs planted in small kernels (a write past the dynamic
shared memory and a misaligned float4 load for ASan+UBSan; a shared-memory read with no barrier
after the write, and two blocks writing one word, for TSan), then runs
the selective-scan self-check (tools/cuda_emu/drivers/selective_scan_selfcheck.cpp) and requires
it clean.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from emu_scan import emu_build, gxx_missing

MODES = [m for m in [os.environ.get("PYNEURO_EMU_SANITIZE", "")] if m]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not MODES, reason="opt-in: set PYNEURO_EMU_SANITIZE=address,undefined or thread "
                                         "(each sanitized build takes minutes)"),
    pytest.mark.skipif(gxx_missing() is not None, reason=str(gxx_missing())),
]
ENV = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0", TSAN_OPTIONS="halt_on_error=0")


def _build(target, mode):
    try:
        return emu_build.build(target, sanitize=mode)
    except emu_build.BuildError as e:
        pytest.fail(f"sanitized build of {target} failed:\n{e}", pytrace=False)


def _run(exe, *args, timeout=900):
    r = subprocess.run([str(exe), *args], capture_output=True, text=True, env=ENV, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


@pytest.mark.parametrize("mode", MODES or ["none"])
def test_sanitizer_sees_planted_bug(mode):
    exe = _build("emu_selftest_main", mode)
    rc, log = _run(exe, "reverse-ok")
    assert rc == 0 and "Sanitizer" not in log, log[-3000:]
    if mode == "thread":
        for bug in ("reverse-race", "block-race"):
            rc, log = _run(exe, bug)
            assert "WARNING: ThreadSanitizer: data race" in log and "emu_selftest.cu" in log, f"{bug}: {log[-3000:]}"
            assert rc != 0
    else:
        rc, log = _run(exe, "smem-overflow")
        assert "AddressSanitizer: heap-buffer-overflow" in log and "emu_selftest.cu" in log, log[-3000:]
        assert rc != 0
        rc, log = _run(exe, "misaligned")
        assert "misaligned address" in log and "float4" in log and "emu_selftest.cu" in log, log[-3000:]
        assert rc != 0


@pytest.mark.parametrize("mode", MODES or ["none"])
def test_selective_scan_is_clean(mode):
    exe = _build("selective_scan_selfcheck", mode)
    rc, log = _run(exe)
    assert rc == 0 and "Sanitizer" not in log, log[-6000:]
    assert log.count("ok ") == 4, log
