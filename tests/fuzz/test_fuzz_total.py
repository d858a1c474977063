"""The fuzz suite's floor: a full run makes at least MIN_CALLS calls of the ops under test.

Runs last in tests/fuzz (file order), in a run of one process. Under pytest-xdist the calls are
made in several processes: the controller adds them up and judges the floor when the session ends
(tests/fuzz_floor.py), and this test skips. The count is printed in the terminal summary.
"""
from __future__ import annotations

import pytest

import fuzz_floor

pytest.importorskip("hypothesis", reason="the fuzz suite needs hypothesis (`make setup` installs it)")


def test_fuzz_suite_made_enough_calls(request):
    if hasattr(request.config, "workerinput"):
        pytest.skip("under pytest-xdist: the controller adds up the workers' calls and judges the floor "
                    "when the session ends (tests/fuzz_floor.py)")
    reason = fuzz_floor.not_judged()
    if reason is not None:
        pytest.skip(reason)
    total = fuzz_floor.total_calls()
    assert total >= fuzz_floor.MIN_CALLS, \
        f"the fuzz suite made {total} calls of the ops under test, fewer than {fuzz_floor.MIN_CALLS}"
