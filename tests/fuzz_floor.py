"""The fuzz suite's floor: a full run of tests/fuzz makes at least MIN_CALLS calls of the ops under
test, counted across every process of the run.

Each process counts the calls it makes (CALLS) and which fuzz tests it collected, ran and failed
(SUITE). In one process, test_fuzz_total.py judges the count. Under pytest-xdist each worker
sends its count to the controller when it finishes (``workeroutput``); the controller adds them
up and judges the floor when the session ends, failing the run if it is not met. The floor holds
for the whole suite only: a run that leaves out, deselects or fails some fuzz test is not judged.

The hooks here are imported into tests/conftest.py: the controller of an xdist run collects
nothing, so it never loads tests/fuzz/conftest.py.
"""
from __future__ import annotations

import collections
from pathlib import Path
from typing import Optional

import pytest

MIN_CALLS = 10_000
FUZZ_DIR = Path(__file__).parent / "fuzz"

# (op registry name, backend) -> calls of the op under test; the fp64 reference calls the
# properties compare against are counted apart, under backend "oracle".
CALLS: collections.Counter = collections.Counter()
# collected: the fuzz tests collected; missing: fuzz modules not collected although others were;
# ran: the fuzz tests run (setup reported); not_passed: those that failed. On an xdist controller:
# controller, merged_workers (how many workers' counts were added), failed_floor.
SUITE = {"collected": set(), "missing": [], "deselected": 0, "ran": set(), "not_passed": [],
         "controller": False, "merged_workers": 0, "failed_floor": False}
_WORKER_KEY = "pyneuro_fuzz"


def is_fuzz_test(nodeid: str) -> bool:
    return nodeid.startswith("tests/fuzz/") and "test_fuzz_total" not in nodeid


def total_calls() -> int:
    return sum(n for (_, backend), n in CALLS.items() if backend != "oracle")


def not_judged() -> Optional[str]:
    """Why this run's count says nothing about the floor (None: the whole suite ran and passed)."""
    if not SUITE["collected"]:
        return "no fuzz test collected"
    if SUITE["missing"]:
        return f"fuzz modules not collected ({SUITE['missing']}): the floor holds for the whole suite only"
    if SUITE["deselected"]:
        return f"{SUITE['deselected']} fuzz tests deselected: the floor holds for the whole suite only"
    if SUITE["not_passed"]:
        return f"fuzz tests failed ({sorted(SUITE['not_passed'])[:3]}): the count is incomplete"
    unrun = sorted(SUITE["collected"] - SUITE["ran"])
    if unrun:
        return f"{len(unrun)} fuzz tests did not run here (e.g. {unrun[0]}): the count is incomplete"
    return None


def pytest_collection_finish(session):
    fuzz = [item for item in session.items if is_fuzz_test(item.nodeid)]
    SUITE["collected"] = {item.nodeid for item in fuzz}
    if fuzz:
        modules = {item.path.name for item in fuzz} | {"test_fuzz_total.py"}
        SUITE["missing"] = sorted(p.name for p in FUZZ_DIR.glob("test_fuzz_*.py") if p.name not in modules)


def pytest_deselected(items):
    SUITE["deselected"] += sum(is_fuzz_test(item.nodeid) for item in items)


def pytest_sessionstart(session):
    # The controller of an xdist run (its DSession plugin) runs no test; its workers' reports are
    # replayed to it, but their counts arrive at pytest_testnodedown.
    SUITE["controller"] = session.config.pluginmanager.has_plugin("dsession")


def pytest_runtest_logreport(report):
    if is_fuzz_test(report.nodeid) and not SUITE["controller"]:
        if report.when == "setup":
            SUITE["ran"].add(report.nodeid)
        if report.failed:
            SUITE["not_passed"].append(report.nodeid)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    config = session.config
    if hasattr(config, "workeroutput"):  # an xdist worker: hand the count to the controller
        config.workeroutput[_WORKER_KEY] = {
            "calls": [[op, backend, n] for (op, backend), n in CALLS.items()],
            "collected": sorted(SUITE["collected"]), "missing": SUITE["missing"],
            "deselected": SUITE["deselected"], "ran": sorted(SUITE["ran"]), "not_passed": SUITE["not_passed"]}
        return
    if not SUITE["controller"]:
        return  # one process: test_fuzz_total.py judged it
    if not_judged() is None and total_calls() < MIN_CALLS:
        SUITE["failed_floor"] = True
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist, on the controller: a worker finished; add its count to the run's."""
    out = getattr(node, "workeroutput", {}).get(_WORKER_KEY)
    if out is None:
        return
    SUITE["merged_workers"] += 1
    for op, backend, n in out["calls"]:
        CALLS[(op, backend)] += n
    SUITE["collected"] |= set(out["collected"])  # every worker collects the same tests
    SUITE["missing"] = out["missing"]
    SUITE["deselected"] = out["deselected"]
    SUITE["ran"] |= set(out["ran"])
    SUITE["not_passed"] += out["not_passed"]


def pytest_terminal_summary(terminalreporter):
    if not CALLS:
        return
    under_test = {k: v for k, v in CALLS.items() if k[1] != "oracle"}
    detail = ", ".join(f"{op}/{b}: {n}" for (op, b), n in sorted(under_test.items()))
    oracle = sum(v for k, v in CALLS.items() if k[1] == "oracle")
    where = f" in {SUITE['merged_workers']} processes" if SUITE["merged_workers"] else ""
    terminalreporter.write_line(f"fuzz: {total_calls()} calls of the ops under test{where} ({detail}); "
                                f"{oracle} reference calls to compare against")
    if SUITE["failed_floor"]:
        terminalreporter.write_line(f"fuzz: FAILED: the suite made {total_calls()} calls of the ops under "
                                    f"test, fewer than its floor of {MIN_CALLS}", red=True, bold=True)
    elif SUITE["controller"]:
        reason = not_judged()
        terminalreporter.write_line(f"fuzz: floor of {MIN_CALLS} calls " +
                                    ("met" if reason is None else f"not judged: {reason}"))
