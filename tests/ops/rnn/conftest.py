"""Fixtures of the recurrent cells' conformance suite (the shared definitions are in rnn_cases.py).

What `make test` leaves to the slow run (CI runs both), to stay within its time budget on 2 cores:
* the Triton interpreter runs a kernel's every tile operation in Python: under it, a test on a
  size other than the tiny ones (INTERPRETER_FAST), or a test decorated with ``@interpreter_slow``,
  is slow. On a GPU the triton target runs everything in `make test`;
* the CPU ISA variants other than the one in use differ only in the vectorised cell updates:
  in `make test` they run the tests decorated with ``@every_isa`` (the oracle comparisons of the
  public functions and of the raw pairs), everything in the slow run;
* the reference's repeats: in bf16/fp16 against the oracle (it computes in fp32 whatever the
  dtype, which test_rnn_oracle.py checks exactly, and its fp32 runs stay in `make test`), and the
  layers in fp32 beyond the tiny configurations (test_reference_fp64_matches_torch runs every
  configuration on it in fp64, to 1e-10).
"""
from __future__ import annotations

from pathlib import Path

import pytest

import torch

import op_targets
from rnn_cases import INTERPRETER_FAST, TARGETS, backend_targets, interpreted

HERE = Path(__file__).resolve().parent
# Reference-target tests that are repeats in `make test`, by test name: params -> slow?
REFERENCE_REPEATS = {
    "test_matches_oracle": lambda p: p["dtype"] != torch.float32,
    "test_gradient_from_one_output_only": lambda p: p["dtype"] != torch.float32,
    "test_fp32_matches_torch": lambda p: p["size"] not in INTERPRETER_FAST,
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item, target, params in op_targets.suite_items(items, HERE):
        size = params.get("size")
        if interpreted(target):
            slow = getattr(item.function, "interpreter_slow", False) or (size is not None and size not in INTERPRETER_FAST)
        else:
            repeat = REFERENCE_REPEATS.get(item.function.__name__)
            slow = op_targets.slow_isa_variant(item, target) or (
                target.backend == "reference" and repeat is not None and repeat(params))
        if slow:
            item.add_marker(pytest.mark.slow)


# target: every compiled variant; cxx_target: cpu per ISA and cuda; any_target: the reference too;
# cpu_target: cpu per ISA.
target, cxx_target, any_target = op_targets.target_fixtures(TARGETS)
cpu_target = op_targets.cpu_target_fixture(TARGETS)


@pytest.fixture(params=backend_targets())
def backend_target(request):
    """One target per compiled backend (cpu in its default ISA, triton, cuda)."""
    yield request.param
