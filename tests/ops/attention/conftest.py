"""Fixtures of the attention conformance suite (the shared definitions are in attention_cases.py).

What `make test` leaves to the slow run (CI runs both): under the Triton interpreter, which runs
every tile operation in Python, the shapes outside INTERPRETER_FAST; the CPU ISA variants other
than the one in use, except for the tests decorated ``every_isa``.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import op_targets
from attention_cases import TARGETS, backend_targets, interpreted

HERE = Path(__file__).resolve().parent
INTERPRETER_FAST = {"tiny", "L1", "gqa-causal", "dropout"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item, target, params in op_targets.suite_items(items, HERE):
        shape = params.get("shape")
        if (interpreted(target) and shape is not None and shape not in INTERPRETER_FAST) \
                or op_targets.slow_isa_variant(item, target):
            item.add_marker(pytest.mark.slow)


target, cxx_target, any_target = op_targets.target_fixtures(TARGETS)


@pytest.fixture(params=backend_targets())
def backend_target(request):
    """One target per compiled backend (cpu in its default ISA, triton, cuda)."""
    yield request.param
