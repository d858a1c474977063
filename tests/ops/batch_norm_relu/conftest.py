"""Fixtures of the batch_norm_relu conformance suite (the shared definitions are in
batch_norm_relu_cases.py).

What `make test` leaves to the slow run (CI runs both): the CPU ISA variants other than the one in
use, except for the tests decorated ``every_isa`` (the oracle comparisons, ties and NaN, and the raw
ops' gradients: what the vectorised loops compute); the rest (argument checks in Python, opcheck,
torch.compile tracing) does not depend on the ISA variant.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import op_targets
from batch_norm_relu_cases import TARGETS, backend_targets

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item, target, _params in op_targets.suite_items(items, HERE):
        if op_targets.slow_isa_variant(item, target):
            item.add_marker(pytest.mark.slow)


# target: every compiled variant (cpu per ISA); cxx_target: the C++ ops' (the same); any_target: the
# reference too.
target, cxx_target, any_target = op_targets.target_fixtures(TARGETS)


@pytest.fixture(params=backend_targets())
def backend_target(request):
    """One target per compiled backend the op declares (cpu, in its default ISA)."""
    yield request.param
