"""pyneuro.nn.BatchNormReLU2d as a drop-in for nn.Sequential(nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d(2))
(or without the pool for pool=1): the same state_dict both ways, and on every backend the same
outputs, input and parameter gradients, running statistics and num_batches_tracked over training
steps, in eval mode, with momentum=None (a cumulative average), track_running_stats=False and
affine=False. torch's layers run in fp64 on the same values: the oracle; ours in fp32 within the
op's tolerance (pyneuro.ops.norm.TOLERANCE)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import pyneuro.nn as pnn
from pyneuro.ops import norm

C = 5


def _backends():
    reason = norm.OP.status("cpu", torch.device("cpu"))
    return ["reference", pytest.param("cpu", marks=pytest.mark.skipif(reason is not None, reason=f"cpu: {reason}"))]


def torch_block(bn: nn.BatchNorm2d, pool: int) -> nn.Sequential:
    return nn.Sequential(bn, nn.ReLU(), nn.MaxPool2d(2)) if pool == 2 else nn.Sequential(bn, nn.ReLU())


def pair(backend: str, pool: int, **kwargs):
    """(torch's fp64 block, ours in fp32) holding the same parameters and buffers (ours loaded from
    torch's state_dict), parameters moved off their init so that weight and bias matter."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(C, dtype=torch.float64, **kwargs)
    with torch.no_grad():
        if bn.affine:
            bn.weight.copy_(torch.linspace(0.5, 1.5, C) * torch.tensor([1, -1, 1, 1, -1]))
            bn.bias.copy_(torch.linspace(-0.3, 0.4, C))
        if bn.track_running_stats:
            bn.running_mean.copy_(torch.linspace(-0.2, 0.3, C))
            bn.running_var.copy_(torch.linspace(0.8, 1.6, C))
    ours = pnn.BatchNormReLU2d(C, pool=pool, backend=backend, **kwargs)
    ours.load_state_dict(bn.state_dict())
    return torch_block(bn, pool), ours


def batch(step: int, layout: str, H=7, W=6, N=4):
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(N, C, H, W, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2, C).view(1, C, 1, 1) \
        + torch.linspace(-1, 1, C).view(1, C, 1, 1)
    x = x.float()  # the values both sides see
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def close(got, want, backend, what):
    tol = norm.TOLERANCE[backend][torch.float32]
    want = want.detach().double()
    err = (got.detach().double() - want).abs().max().item() / max(want.abs().max().item(), 1e-30)
    assert err <= tol, f"{what}: normwise error {err:.3g} > {tol:.0e}"


def step_both(theirs, ours, x, backend, what, lr=0.1):
    """One forward + backward of both blocks on x, comparing outputs and every gradient, then the
    same SGD step on both."""
    xt = x.double().requires_grad_()
    xo = x.clone().requires_grad_()
    want, got = theirs(xt), ours(xo)
    assert got.dtype == torch.float32 and got.shape == want.shape
    if x.dim() == 4 and not x.is_contiguous() and x.shape[1] > 1:
        assert got.is_contiguous(memory_format=torch.channels_last), f"{what}: out is not channels_last like x"
    close(got, want, backend, f"{what}: out")
    dout = torch.randn(want.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    want.backward(dout)
    got.backward(dout.float())
    close(xo.grad, xt.grad, backend, f"{what}: dx")
    bn = theirs[0]
    for name, p in ours.named_parameters():
        close(p.grad, getattr(bn, name).grad, backend, f"{what}: d{name}")
    with torch.no_grad():
        for name, p in ours.named_parameters():
            q = getattr(bn, name)
            p -= lr * p.grad
            q -= lr * q.grad
            p.grad = q.grad = None


def compare_buffers(theirs, ours, backend, what):
    bn = theirs[0]
    for name in ("running_mean", "running_var"):
        mine, want = getattr(ours, name), getattr(bn, name)
        assert (mine is None) == (want is None), f"{what}: {name} {mine} vs torch's {want}"
        if mine is not None:
            assert mine.dtype == torch.float32
            close(mine, want, backend, f"{what}: {name}")
    if bn.num_batches_tracked is None:
        assert ours.num_batches_tracked is None
    else:
        assert torch.equal(ours.num_batches_tracked, bn.num_batches_tracked), f"{what}: num_batches_tracked"


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("pool", [1, 2])
@pytest.mark.parametrize("backend", _backends())
def test_training_steps_then_eval_match_torch(backend, pool, layout):
    theirs, ours = pair(backend, pool)
    ours.train(), theirs.train()
    for step in range(3):
        step_both(theirs, ours, batch(step, layout), backend, f"train step {step}")
        compare_buffers(theirs, ours, backend, f"train step {step}")
    assert int(ours.num_batches_tracked) == 3
    ours.eval(), theirs.eval()
    running = ours.running_mean.clone(), ours.running_var.clone()
    step_both(theirs, ours, batch(9, layout), backend, "eval")
    assert torch.equal(ours.running_mean, running[0]) and torch.equal(ours.running_var, running[1]), \
        "eval mode changed the running statistics"
    compare_buffers(theirs, ours, backend, "eval")


@pytest.mark.parametrize("pool", [1, 2])
@pytest.mark.parametrize("backend", _backends())
def test_momentum_none_is_a_cumulative_average(backend, pool):
    theirs, ours = pair(backend, pool, momentum=None)
    for step in range(4):
        step_both(theirs, ours, batch(step, "channels_last", H=5, W=9), backend, f"step {step}")
        compare_buffers(theirs, ours, backend, f"step {step}")
    # The average of the four batches' statistics, with equal weights (factor 1 / num_batches_tracked).
    xs = [batch(s, "channels_last", H=5, W=9).double() for s in range(4)]
    n = xs[0].numel() // C
    mean = torch.stack([x.mean((0, 2, 3)) for x in xs]).mean(0)
    var = torch.stack([x.var((0, 2, 3), unbiased=False) * n / (n - 1) for x in xs]).mean(0)
    close(ours.running_mean, mean, backend, "cumulative running_mean")
    close(ours.running_var, var, backend, "cumulative running_var")


@pytest.mark.parametrize("pool", [1, 2])
@pytest.mark.parametrize("backend", _backends())
def test_without_running_statistics_batch_statistics_in_eval_too(backend, pool):
    theirs, ours = pair(backend, pool, track_running_stats=False)
    assert ours.running_mean is None and ours.running_var is None and ours.num_batches_tracked is None
    step_both(theirs, ours, batch(0, "nchw"), backend, "train")
    ours.eval(), theirs.eval()
    step_both(theirs, ours, batch(1, "channels_last"), backend, "eval (batch statistics)")
    compare_buffers(theirs, ours, backend, "eval")


@pytest.mark.parametrize("pool", [1, 2])
@pytest.mark.parametrize("backend", _backends())
def test_affine_false(backend, pool):
    theirs, ours = pair(backend, pool, affine=False)
    assert ours.weight is None and ours.bias is None and not list(ours.parameters())
    for step in range(2):
        step_both(theirs, ours, batch(step, "channels_last"), backend, f"train step {step}")
        compare_buffers(theirs, ours, backend, f"train step {step}")
    ours.eval(), theirs.eval()
    step_both(theirs, ours, batch(5, "nchw"), backend, "eval")


@pytest.mark.parametrize("backend", _backends())
def test_momentum_zero_and_one(backend):
    for momentum in (0.0, 1.0):
        theirs, ours = pair(backend, 2, momentum=momentum)
        step_both(theirs, ours, batch(0, "nchw"), backend, f"momentum {momentum}")
        compare_buffers(theirs, ours, backend, f"momentum {momentum}")


@pytest.mark.parametrize("backend", _backends())
def test_load_state_dict_from_a_torch_batchnorm(backend):
    """A trained nn.BatchNorm2d's state_dict loads strictly; the fused layer then computes what the
    torch block computes, in eval and (from there) in training; and back the other way."""
    torch.manual_seed(1)
    bn = nn.BatchNorm2d(C)
    bn.train()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
        for step in range(3):
            bn(batch(step, "nchw"))
    ours = pnn.BatchNormReLU2d(C, pool=2, backend=backend)
    assert set(ours.state_dict()) == set(bn.state_dict())
    ours.load_state_dict(bn.state_dict())
    assert int(ours.num_batches_tracked) == 3
    theirs = torch_block(bn.double(), 2)
    ours.eval(), theirs.eval()
    step_both(theirs, ours, batch(4, "channels_last"), backend, "eval after loading", lr=0.0)
    ours.train(), theirs.train()
    step_both(theirs, ours, batch(5, "channels_last"), backend, "train after loading", lr=0.0)
    compare_buffers(theirs, ours, backend, "train after loading")
    back = nn.BatchNorm2d(C)
    back.load_state_dict(ours.state_dict())
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in back.state_dict().items())


def test_is_a_batchnorm2d_with_its_arguments_and_repr():
    layer = pnn.BatchNormReLU2d(C, eps=1e-3, momentum=0.2, pool=2)
    assert isinstance(layer, nn.BatchNorm2d)
    assert (layer.eps, layer.momentum, layer.pool) == (1e-3, 0.2, 2)
    assert "pool=2" in repr(layer) and "eps=0.001" in repr(layer)
    assert pnn.BatchNormReLU2d(C).pool == 1


@pytest.mark.parametrize("pool", [3, 0, True, "2"])
def test_bad_pool_raises(pool):
    with pytest.raises(ValueError, match=rf"BatchNormReLU2d: pool must be 1 or 2, got {pool!r}"):
        pnn.BatchNormReLU2d(C, pool=pool)


def test_input_must_be_4d():
    with pytest.raises(ValueError, match="expected 4D input"):
        pnn.BatchNormReLU2d(C)(torch.randn(2, C, 6))
