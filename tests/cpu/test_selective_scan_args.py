"""The CPU selective-scan ops, called directly (no Python validation in front), refuse bad
arguments with the error contract of csrc/common/checks.h: TypeError for a dtype, ValueError for
a shape, rank, layout, N out of range or chunk_size < 1, each naming the op and the argument."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("pyneuro._C", reason="the compiled extension is not built")

FWD = torch.ops.pyneuro.selective_scan_fwd
BWD = torch.ops.pyneuro.selective_scan_bwd
ORDER = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def _good(batch=2, dim=4, L=9, N=3):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(u=r(batch, dim, L), delta=r(batch, dim, L), A=-torch.rand(dim, N, generator=g), B=r(batch, 2, N, L),
                C=r(dim, N), D=r(dim), z=r(batch, dim, L), delta_bias=r(dim), initial_state=r(batch, dim, N))


def _fwd(args, chunk_size=4):
    return FWD(*(args[k] for k in ORDER), True, chunk_size)


CASES = {
    # dtype -> TypeError
    "u must be float32, float16 or bfloat16, got Double": (TypeError, dict(u=torch.randn(2, 4, 9).double())),
    "delta must be Float, got Half": (TypeError, dict(delta=torch.randn(2, 4, 9).half())),
    "A must be Float, got Half": (TypeError, dict(A=-torch.rand(4, 3).half())),
    "variable B must have u's dtype Float, got BFloat16": (TypeError, dict(B=torch.randn(2, 2, 3, 9).bfloat16())),
    "C must be Float, got Half": (TypeError, dict(C=torch.randn(4, 3).half())),
    "initial_state must be Float, got Double": (TypeError, dict(initial_state=torch.randn(2, 4, 3).double())),
    # everything else -> ValueError
    "u must be 3-D": (ValueError, dict(u=torch.randn(2, 4))),
    "delta must have shape": (ValueError, dict(delta=torch.randn(2, 4, 8))),
    "z must be contiguous": (ValueError, dict(z=torch.randn(2, 9, 4).transpose(1, 2))),
    r"N = A.shape\[1\] must be in \[1, 256\], got 0": (ValueError, dict(A=torch.zeros(4, 0), B=torch.zeros(2, 1, 0, 9),
                                                                        C=torch.zeros(4, 0), initial_state=None)),
    "B has 3 groups, which must divide dim = 4": (ValueError, dict(B=torch.randn(2, 3, 3, 9))),
    "C must be \\(dim, N\\) \\(constant\\) or \\(batch, G, N, L\\)": (ValueError, dict(C=torch.randn(2, 3, 9))),
    "D must have shape": (ValueError, dict(D=torch.randn(5))),
    "A must be \\(dim, N\\) with dim = 4": (ValueError, dict(A=-torch.rand(5, 3))),
}


@pytest.mark.parametrize("message", list(CASES))
def test_forward_refuses(message):
    exc, change = CASES[message]
    with pytest.raises(exc, match=f"selective_scan_fwd \\(cpu\\): .*{message}"):
        _fwd({**_good(), **change})


def test_n_above_the_limit_and_chunk_size():
    big = _good(N=300)
    with pytest.raises(ValueError, match=r"N = A.shape\[1\] must be in \[1, 256\], got 300"):
        _fwd(big)
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        _fwd(_good(), chunk_size=0)


def test_backward_checks_its_own_arguments():
    args = _good()
    out, last, states = _fwd(args)
    rest = [args[k] for k in ORDER]
    with pytest.raises(ValueError, match=r"selective_scan_bwd \(cpu\): chunk_states must have shape"):
        BWD(torch.randn_like(out), None, *rest, states[..., :2], True, 4)
    with pytest.raises(TypeError, match=r"selective_scan_bwd \(cpu\): dout must be Float, got Half"):
        BWD(out.half(), None, *rest, states, True, 4)
    with pytest.raises(ValueError, match=r"selective_scan_bwd \(cpu\): dlast_state must have shape"):
        BWD(out, torch.randn(2, 4), *rest, states, True, 4)
    with pytest.raises(ValueError, match=r"selective_scan_bwd \(cpu\): chunk_size must be >= 1"):
        BWD(out, None, *rest, states, True, 0)
    grads = BWD(torch.randn_like(out), last, *rest, states, True, 4)  # the good call still works
    assert grads[0].shape == out.shape
