"""Fixtures for the cuda_emu tests: the emulated libraries, built once per session (and cached in
build/cuda_emu/ across sessions, keyed on a hash of their sources)."""
from __future__ import annotations

import pytest

from emu_scan import EmulatedScan, build_or_fail


@pytest.fixture(scope="session")
def emu_scan() -> EmulatedScan:
    return EmulatedScan(build_or_fail("selective_scan"))
