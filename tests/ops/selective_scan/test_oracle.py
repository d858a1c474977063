"""The oracle itself: naive.py against finite differences, and the explicit fp64 adjoint (used for
every gradient in the suite) against naive's autograd on every B/C layout and option."""
from __future__ import annotations

import pytest
import torch

from pyneuro.ops.scan import selective_scan
from scan_cases import GRAD_NAMES, adjoint_fp64, assert_matches, make_inputs, naive_autograd_fp64


def test_reference_gradcheck_fp64():
    """The reference in fp64 against finite differences (every input, both outputs)."""
    inputs, _ = make_inputs(1, 2, 5, 3, B_kind="var", C_kind=2, dtype=torch.float64)
    names = [k for k in GRAD_NAMES if inputs[k] is not None]
    leaves = [inputs[k].double().requires_grad_() for k in names]

    def f(*ts):
        return selective_scan(**dict(zip(names, ts)), delta_softplus=True, return_last_state=True,
                              backend="reference")

    assert torch.autograd.gradcheck(f, leaves)


@pytest.mark.parametrize("B_kind,C_kind,options", [
    ("var", 2, dict()),
    ("const", "var", dict(D=False, z=False, bias=False, softplus=False, x0=False)),
    (1, "const", dict(z=False)),
    ("const", 3, dict(x0=False)),
    (3, "const", dict(softplus=False, bias=False, D=False)),
])
def test_adjoint_matches_naive_autograd(B_kind, C_kind, options):
    inputs, cot = make_inputs(2, 6, 12, 5, B_kind=B_kind, C_kind=C_kind, **options)
    softplus = options.get("softplus", True)
    out_ref, last_ref, ref = naive_autograd_fp64(inputs, softplus, cot["dout"], cot["dlast"])
    out, last, mine = adjoint_fp64(inputs, softplus, cot["dout"], cot["dlast"])
    assert_matches(out, out_ref, 1e-12, "out")
    assert_matches(last, last_ref, 1e-12, "last_state")
    assert set(mine) == set(ref)
    for name, r in ref.items():
        assert_matches(mine[name], r, 1e-12, f"d{name}")
