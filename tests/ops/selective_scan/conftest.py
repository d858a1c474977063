"""Fixtures of the selective-scan conformance suite (the shared definitions are in scan_cases.py)."""
from __future__ import annotations

import pytest

from scan_cases import activated, all_targets, compiled_targets


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


@pytest.fixture(params=all_targets())
def any_target(request):
    """The reference and every compiled target."""
    with activated(request.param) as t:
        yield t
