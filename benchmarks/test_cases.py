"""pyneuro.bench.cases: each case's contenders run on that case's own tensors.

benchmarks/test_bench.py lists every case before it runs any (pytest parametrisation), where the
runner runs each case as it is made. A contender that closed over a loop variable (x, q, the
mode's leaves, ...) therefore ran on the *last* case's tensors under pytest: the LSTM's first
case was fed the second's input (an input_size error), the scan's fp32 rows timed the bf16
tensors. Here every case of the full CPU table is listed first, then each forward contender must
return the output of its own case's shape, and each forward+backward contender must run."""
from __future__ import annotations

import pytest
import torch

from pyneuro.bench.cases import CASES

# The output shape each op's forward gives for a case's "shape" entry.
OUTPUT_SHAPE = {
    "selective_scan": lambda s: (s["batch"], s["dim"], s["L"]),
    "attention": lambda s: (s["B"], s["H"], s["L"], s["Dh"]),
    "attention_qkvpacked": lambda s: (s["B"], s["L"], s["H"] * s["Dh"]),
    **{cell: (lambda s: (s["T"], s["B"], s["H"])) for cell in ("lstm", "gru", "rnn", "leaky")},
    "batch_norm_relu": lambda s: (s["N"], s["C"], s["H"] // s["pool"], s["W"] // s["pool"]),
    "add_layer_norm": lambda s: (s["B"], s["L"], s["N"]),
    "bias_gelu": lambda s: (s["B"], s["L"], s["N"]),
}


def _first_tensor(out):
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


@pytest.mark.parametrize("op", sorted(OUTPUT_SHAPE))
def test_every_contender_runs_on_its_own_case_when_all_cases_are_listed_first(op):
    cases = list(CASES[op](torch.device("cpu"), False))
    assert len({str(c["shape"]) for c in cases}) == len(cases) // 2, "a shape per fwd / fwd+bwd pair"
    for case in cases:
        for label, fn in case["contenders"].items():
            if label == "reference" and case["mode"] == "fwd+bwd":
                continue  # a Python loop's backward at full size: slow, and bound like the rest
            out = fn()
            if case["mode"] == "fwd":
                got = tuple(_first_tensor(out).shape)
                assert got == OUTPUT_SHAPE[op](case["shape"]), f"{op} {case['shape']} {label}: output {got}"


def test_every_op_with_cases_is_covered():
    assert set(OUTPUT_SHAPE) == set(CASES) - {"call_overhead"}  # one tiny case per op there: nothing to mix up


def test_the_runner_hands_over_its_results_after_every_case(tmp_path):
    """So that `--json` is rewritten per case and a run cut off by a time limit keeps its figures."""
    import io
    import json

    from pyneuro.bench.runner import run, write_json

    seen = []
    path = tmp_path / "bench.json"

    def save(results):
        seen.append(len(results["cases"]))
        write_json(results, str(path))
        assert json.loads(path.read_text())["cases"][-1]["mode"] == results["cases"][-1]["mode"]

    results = run(["bias_gelu"], torch.device("cpu"), quick=True, repeats=1, stream=io.StringIO(), on_case=save)
    assert seen == [1, 2] and len(results["cases"]) == 2
    assert not (tmp_path / "bench.json.tmp").exists()
