"""Fixtures of the recurrent cells' conformance suite (the shared definitions are in rnn_cases.py).

The Triton interpreter runs a kernel's every tile operation in Python: under it, a test on a
size other than the tiny ones (INTERPRETER_FAST), or a test decorated with
``@interpreter_slow``, is marked ``slow`` (CI runs it; `make test` leaves it out). On a GPU the
triton target runs everything in the fast set.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from rnn_cases import INTERPRETER_FAST, activated, all_targets, backend_targets, compiled_targets, interpreted

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE not in Path(str(item.path)).resolve().parents or not hasattr(item, "callspec"):
            continue
        params = item.callspec.params
        target = next((v for k, v in params.items() if k.endswith("target")), None)
        if target is None or not hasattr(target, "backend") or not interpreted(target):
            continue
        size = params.get("size")
        if getattr(item.function, "interpreter_slow", False) or (size is not None and size not in INTERPRETER_FAST):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(params=compiled_targets())
def target(request):
    """Each compiled backend in each variant this machine runs (cpu per ISA, triton, cuda)."""
    with activated(request.param) as t:
        yield t


@pytest.fixture(params=[p for p in compiled_targets() if p.values[0].backend in ("cpu", "cuda")])
def cxx_target(request):
    """The backends that are C++ dispatcher ops with their own argument checks (cpu per ISA, cuda)."""
    with activated(request.param) as t:
        yield t


@pytest.fixture(params=backend_targets())
def backend_target(request):
    """One target per compiled backend (cpu in its default ISA, triton, cuda)."""
    yield request.param


@pytest.fixture(params=all_targets())
def any_target(request):
    """The reference and every compiled target."""
    with activated(request.param) as t:
        yield t
