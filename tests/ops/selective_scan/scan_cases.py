"""What the selective-scan conformance suite shares: the backends it runs on, the inputs, the one
fp64 oracle, and the error measure. (pytest puts this folder on sys.path; the module has a name
no other op's suite uses.)

Targets: every backend the op declares, in every variant this machine can execute: ``cpu`` once
per CPU ISA the machine runs (baseline, avx2, avx512), ``triton`` on a GPU or under the
interpreter, ``cuda`` on a GPU. A target that cannot run here is still generated and skipped with
its reason, so nothing disappears silently.

The oracle: naive.py's forward in fp64 and, for gradients, ``adjoint_fp64`` (an explicit fp64
reverse recurrence: naive's autograd builds a graph node per step, slow at L = 2049), which test_oracle.py checks against
naive's autograd and finite differences. Both run on the very inputs the backend saw (already
rounded to fp16/bf16), so tolerances measure the backend, not the input rounding. Tolerances are
the op's own table (pyneuro.ops.scan.TOLERANCE), which the first-use self-check uses too.
"""
from __future__ import annotations

import torch

import pyneuro.ops.scan as scan
from pyneuro.ops.scan import selective_scan, selective_scan_naive
from pyneuro.ops.scan.naive import selective_scan_adjoint
from scan_inputs import make_inputs, on  # noqa: F401  (tests/scan_inputs.py; re-exported)

import op_targets
from op_targets import HAS_GPU, activated, assert_matches, normwise_error  # noqa: F401  (re-exported for the suite)

GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------------------------
# Targets (tests/op_targets.py)
# ----------------------------------------------------------------------------------------------
class Target(op_targets.Target):
    TOLERANCE = scan.TOLERANCE


TARGETS = op_targets.TargetSet(Target, [scan.OP])
compiled_targets = TARGETS.compiled
all_targets = TARGETS.all


def interpreted(target: Target) -> bool:
    return target.backend == "triton" and target.device == "cpu"


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
def contract_args(inputs, softplus, chunk_size):
    """Public inputs -> the contract's normalised forward arguments (docs/selective_scan_contract.md)."""
    bc = lambda M: (M.unsqueeze(1) if M.dim() == 3 else M).contiguous()  # noqa: E731
    i = inputs
    return (i["u"], i["delta"], i["A"], bc(i["B"]), bc(i["C"]), i["D"], i["z"], i["delta_bias"],
            i["initial_state"], softplus, chunk_size)


def run(target: Target, inputs, softplus, dout, dlast):
    """The public function on ``target``: out, last_state and the gradients of
    <out, dout> + <last, dlast> w.r.t. every input present."""
    leaves = {k: (v.detach().to(target.device).clone().requires_grad_() if v is not None else None)
              for k, v in inputs.items()}
    out, last = selective_scan(**leaves, delta_softplus=softplus, return_last_state=True, backend=target.backend)
    loss = (out.float() * dout.to(out.device)).sum() + (last * dlast.to(out.device)).sum()
    names = [k for k in GRAD_NAMES if leaves[k] is not None]
    grads = torch.autograd.grad(loss, [leaves[k] for k in names])
    return out.detach(), last.detach(), dict(zip(names, grads))


# ----------------------------------------------------------------------------------------------
# The fp64 oracle
# ----------------------------------------------------------------------------------------------
def naive_autograd_fp64(inputs, softplus, dout, dlast):
    """naive.py in fp64, differentiated by autograd: the definition (slow for long L)."""
    leaves = {k: (v.detach().double().cpu().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    out, last = selective_scan_naive(**leaves, delta_softplus=softplus, return_last_state=True)
    loss = (out * dout.double().cpu()).sum() + (last * dlast.double().cpu()).sum()
    names = [k for k in GRAD_NAMES if leaves[k] is not None]
    grads = torch.autograd.grad(loss, [leaves[k] for k in names])
    return out.detach(), last.detach(), dict(zip(names, grads))


def adjoint_fp64(inputs, softplus, dout, dlast):
    """naive.py's explicit recurrence and its adjoint (selective_scan_adjoint) in fp64, written
    independently of selective_scan_naive: (out, last_state, gradients of <out, dout> + <last, dlast>)."""
    i = {k: (v.double().cpu() if v is not None else None) for k, v in inputs.items()}
    out, states, grads = selective_scan_adjoint(**i, delta_softplus=softplus, dout=dout.double().cpu(),
                                                dlast_state=dlast.double().cpu())
    return out, states[:, :, -1], grads


def oracle(inputs, softplus, dout, dlast):
    """(out, last_state, gradients) in fp64: naive.py's forward, adjoint_fp64's gradients."""
    with torch.no_grad():
        out, last = selective_scan_naive(**{k: (v.double().cpu() if v is not None else None)
                                            for k, v in inputs.items()},
                                         delta_softplus=softplus, return_last_state=True)
    return out, last, adjoint_fp64(inputs, softplus, dout, dlast)[2]
