"""Fixtures of the bias_gelu conformance suite (shared definitions in bias_gelu_cases.py).

What `make test` leaves to the slow run (CI runs both): the CPU ISA variants other than the one in
use, except for the tests decorated ``every_isa`` (the oracle comparisons: what the vectorised
loops compute).
"""
from __future__ import annotations

from pathlib import Path

import pytest

import op_targets
from bias_gelu_cases import TARGETS

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item, target, _params in op_targets.suite_items(items, HERE):
        if op_targets.slow_isa_variant(item, target):
            item.add_marker(pytest.mark.slow)


target, cxx_target, any_target = op_targets.target_fixtures(TARGETS)
