"""Fixtures of the attention conformance suite (the shared definitions are in attention_cases.py).

What `make test` leaves to the slow run (CI runs both): under the Triton interpreter, which runs
every tile operation in Python, the shapes outside INTERPRETER_FAST; the CPU ISA variants other
than the one in use, except for the tests decorated ``every_isa``.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from pyneuro import _backends
import op_targets
from attention_cases import TARGETS, backend_targets, interpreted

HERE = Path(__file__).resolve().parent
DEFAULT_ISA = _backends.extension()[0].cpu_isa() if _backends.extension()[0] is not None else None
INTERPRETER_FAST = {"tiny", "L1", "gqa-causal", "dropout"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE not in Path(str(item.path)).resolve().parents or not hasattr(item, "callspec"):
            continue
        params = item.callspec.params
        target = next((v for k, v in params.items() if k.endswith("target")), None)
        if target is None or not hasattr(target, "backend"):
            continue
        shape = params.get("shape")
        if interpreted(target):
            slow = shape is not None and shape not in INTERPRETER_FAST
        elif target.backend == "cpu" and target.isa is not None:
            slow = target.isa != DEFAULT_ISA and not getattr(item.function, "every_isa", False)
        else:
            slow = False
        if slow:
            item.add_marker(pytest.mark.slow)


target, cxx_target, any_target = op_targets.target_fixtures(TARGETS)


@pytest.fixture(params=backend_targets())
def backend_target(request):
    """One target per compiled backend (cpu in its default ISA, triton, cuda)."""
    yield request.param
