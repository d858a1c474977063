"""Fuzz-suite plumbing: which (op, backend, device) triples to fuzz, and the call counter.

The suite must make at least MIN_CALLS calls of the ops under test per full run; tests/fuzz_floor.py
counts them (across pytest-xdist's processes too), test_fuzz_total.py asserts the floor in one
process and the xdist controller at the end of the session. Nothing here imports hypothesis, so
that collection still works (and skips) where it is not installed.
"""
from __future__ import annotations

import collections

import pytest
import torch

import fuzz_floor


def fuzz_backends(op_name: str) -> list[tuple[str, str]]:
    """(backend, device type) pairs on which ``op_name`` can run here, as the registry reports them.

    The only place the fuzz suite reads pyneuro's backend registry."""
    import pyneuro.ops  # noqa: F401  (importing the ops registers them)
    from pyneuro import _backends

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [(backend, device) for device in devices
            for backend in _backends.OPS[op_name].available(torch.device(device))]


def pytest_generate_tests(metafunc):
    """Parametrize a test taking (op_name, backend, device) over its module's FUZZ_OPS x backends."""
    if {"op_name", "backend", "device"} <= set(metafunc.fixturenames):
        triples = [(op, b, d) for op in metafunc.module.FUZZ_OPS for b, d in fuzz_backends(op)]
        metafunc.parametrize(("op_name", "backend", "device"),
                             [pytest.param(op, b, d, marks=_marks(b, d), id=f"{op}-{b}-{d}") for op, b, d in triples])


def _marks(backend: str, device: str) -> list:
    """What runs none of pyneuro's compiled code is marked, for make sanitize to leave out: the
    reference, and Triton in the interpreter (device cpu). The GPU cases stay unmarked, so make
    gpu-check's `-m "cuda or triton"` selects no fuzz test (its time on a lent GPU is not sized for
    the suite; scripts/gpu_check.sh)."""
    if backend == "reference":
        return [pytest.mark.reference]
    if backend == "triton" and device == "cpu":
        return [pytest.mark.triton]
    return []


@pytest.fixture(scope="session")
def backends_of():
    return fuzz_backends


@pytest.fixture(scope="session")
def fuzz_calls() -> collections.Counter:
    return fuzz_floor.CALLS
