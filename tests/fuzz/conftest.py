"""Fuzz-suite plumbing: which (op, backend, device) triples to fuzz, and the call counter.

The suite must make at least MIN_CALLS calls of the ops under test per full run; the count is
printed in the terminal summary and asserted by test_fuzz_total.py. Nothing here imports
hypothesis, so that collection still works (and skips) where it is not installed.
"""
from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch

MIN_CALLS = 10_000

# (op registry name, backend) -> calls of the op under test; the fp64 reference calls the
# properties compare against are counted apart, under backend "oracle".
CALLS: collections.Counter = collections.Counter()
# Whether every fuzz test was selected, ran in this process and none failed: only then must the
# floor hold. "ran_here": the fuzz tests this process ran (the counter is per process).
SUITE = {"deselected": 0, "not_passed": [], "ran_here": set()}


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
        metafunc.parametrize(("op_name", "backend", "device"), triples,
                             ids=[f"{op}-{b}-{d}" for op, b, d in triples])


@pytest.fixture(scope="session")
def backends_of():
    return fuzz_backends


@pytest.fixture(scope="session")
def fuzz_calls() -> collections.Counter:
    return CALLS


@pytest.fixture(scope="session")
def fuzz_suite(request) -> dict:
    """What test_fuzz_total needs to judge the count: the floor, and whether the whole suite ran
    (modules not collected, tests deselected, tests that failed)."""
    here = Path(__file__).parent
    fuzz_items = [item for item in request.session.items if _is_fuzz_test(item.nodeid)]
    collected = {item.path.name for item in fuzz_items}
    missing = sorted(p.name for p in here.glob("test_fuzz_*.py") if p.name not in collected | {"test_fuzz_total.py"})
    # Under pytest-xdist every process collects every test but runs its share: which fuzz tests
    # did not run in this one (so their calls are not in this process's counter)? make test and
    # make sanitize run the suite in a process of its own.
    elsewhere = sorted(item.nodeid for item in fuzz_items if item.nodeid not in SUITE["ran_here"])
    return {"min_calls": MIN_CALLS, "missing": missing, "elsewhere": elsewhere, **SUITE}


def _is_fuzz_test(nodeid: str) -> bool:
    return nodeid.startswith("tests/fuzz/") and "test_fuzz_total" not in nodeid


def pytest_deselected(items):
    SUITE["deselected"] += sum(_is_fuzz_test(item.nodeid) for item in items)


def pytest_runtest_logreport(report):
    if _is_fuzz_test(report.nodeid):
        if report.when == "setup":  # every test run in this process reports its setup here
            SUITE["ran_here"].add(report.nodeid)
        if report.failed:
            SUITE["not_passed"].append(report.nodeid)


def pytest_terminal_summary(terminalreporter):
    if not CALLS:
        return
    under_test = {k: v for k, v in CALLS.items() if k[1] != "oracle"}
    total = sum(under_test.values())
    detail = ", ".join(f"{op}/{b}: {n}" for (op, b), n in sorted(under_test.items()))
    oracle = sum(v for k, v in CALLS.items() if k[1] == "oracle")
    terminalreporter.write_line(f"fuzz: {total} calls of the ops under test ({detail}); "
                                f"{oracle} reference calls to compare against")
