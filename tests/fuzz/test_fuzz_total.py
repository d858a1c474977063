"""The fuzz suite's floor: a full run makes at least MIN_CALLS calls of the ops under test.

Runs last in tests/fuzz (file order). The count is also printed in the terminal summary.
"""
from __future__ import annotations

import pytest

pytest.importorskip("hypothesis", reason="the fuzz suite needs hypothesis (`make setup` installs it)")


def test_fuzz_suite_made_enough_calls(fuzz_calls, fuzz_suite):
    if fuzz_suite["missing"]:
        pytest.skip(f"fuzz modules not collected ({fuzz_suite['missing']}): the floor holds for the whole suite only")
    if fuzz_suite["deselected"]:
        pytest.skip(f"{fuzz_suite['deselected']} fuzz tests deselected: the floor holds for the whole suite only")
    if fuzz_suite["elsewhere"]:
        # Only under pytest-xdist (make test and make sanitize run this folder in a process of its
        # own): this process's counter misses the calls made in the other workers.
        pytest.skip(f"{len(fuzz_suite['elsewhere'])} fuzz tests ran in another process (e.g. "
                    f"{fuzz_suite['elsewhere'][0]}): this process's count is not the suite's")
    if fuzz_suite["not_passed"]:
        pytest.skip(f"fuzz tests failed ({fuzz_suite['not_passed'][:3]}): the count is incomplete")
    total = sum(n for (_, backend), n in fuzz_calls.items() if backend != "oracle")
    floor = fuzz_suite["min_calls"]
    assert total >= floor, f"the fuzz suite made {total} calls of the ops under test, fewer than {floor}"
