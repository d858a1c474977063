"""Fixtures for the cuda_emu tests: the emulated libraries, built once per session (and cached in
build/cuda_emu/ across sessions, keyed on a hash of their sources)."""
from __future__ import annotations

import pytest

from emu_scan import EmulatedScan, emu_build, gxx_missing


def build_or_fail(target: str):
    """The target's path. A build failure is a test failure, not a skip: the .cu or the emulator
    changed in a way the other no longer handles."""
    if (why := gxx_missing()) is not None:
        pytest.skip(why)
    try:
        return emu_build.build(target)
    except emu_build.BuildError as e:
        pytest.fail(f"building the emulated {target} failed:\n{e}", pytrace=False)


@pytest.fixture(scope="session")
def emu_scan() -> EmulatedScan:
    return EmulatedScan(build_or_fail("selective_scan"))
