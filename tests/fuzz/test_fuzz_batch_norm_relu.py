"""Fuzz pyneuro.ops.batch_norm_relu on every backend the registry reports (see fuzz_support).

The running statistics are compared too: the call returns them after its in-place update, next to
out. They are buffers, never parameters: passed detached (torch's batch_norm refuses running
statistics that require grad)."""
from __future__ import annotations

import math

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz suite needs hypothesis (`make setup` installs it)")

import torch  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fuzz_support import (SEEDS, Call, Mutation, TensorArg, check_call, fuzz_settings, mutations,  # noqa: E402
                          tensor_arg)
from pyneuro.ops import batch_norm_relu  # noqa: E402

FUZZ_OPS = ("batch_norm_relu",)
# One op of about the recurrent cells' cost per call: their share each (1000 per backend).
EXAMPLES = {"triton": 60, "reference": 500, "default": 1000}  # reference: half, as in test_fuzz_selective_scan
DTYPES = st.sampled_from((torch.float32, torch.float16, torch.bfloat16, torch.float64))
SIXTEEN_BIT = (torch.float16, torch.bfloat16)
# pool, momentum and eps: a valid value, or (one draw in ten) a hostile one with its documented
# ValueError; likewise one call in ten has a zero-size dimension.
POOLS, BAD_POOLS = st.sampled_from((1, 2, 2)), st.sampled_from((3, 0))
MOMENTA, BAD_MOMENTA = st.sampled_from((0.1, 0.1, 0.0, 0.3, 1.0)), st.sampled_from((-0.1, 1.5, math.nan))
EPSILONS, BAD_EPSILONS = st.sampled_from((1e-5, 1e-5, 1e-3, 0.1)), st.sampled_from((0.0, -1e-5))
RUNNING = st.sampled_from(("both", "both", "both", "none"))
BAD_RUNNING = st.sampled_from(("mean only", "var only"))
# The compiled kernels' channel block (csrc/cpu/isa/batch_norm_kernels.cpp): now and then across it.
CHANNEL_BLOCK_EDGES = (63, 64, 65, 70)


class ChannelsLast(TensorArg):
    """x in channels_last memory (NHWC): the layout the compiled kernels vectorise over channels."""

    def make(self, leaf: torch.Tensor) -> torch.Tensor:
        return leaf.contiguous(memory_format=torch.channels_last)


def _batch_norm_relu(x, running_mean, running_var, weight, bias, **options):
    stats = [t.detach() if isinstance(t, torch.Tensor) else t for t in (running_mean, running_var)]
    out = batch_norm_relu(x, stats[0], stats[1], weight, bias, **options)
    return (out, *(s for s in stats if isinstance(s, torch.Tensor)))


def _as_built(arg: TensorArg) -> torch.Tensor:
    """The argument's values as the op sees them (expanded where the layout expands), in its dtype."""
    return arg.make(arg.values.to(arg.dtype).double())


@st.composite
def batch_norm_calls(draw, backend: str, device: str):
    def sometimes_bad(good, bad):
        return draw(bad) if draw(st.integers(0, 9)) == 0 else draw(good)

    sizes = [draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 7)), draw(st.integers(1, 7))]
    if draw(st.integers(0, 9)) == 0:
        sizes[draw(st.integers(0, 3))] = 0
    N, C, H, W = sizes
    if backend == "cpu" and draw(st.integers(0, 19)) == 0:
        C, N, H, W = draw(st.sampled_from(CHANNEL_BLOCK_EDGES)), 1, draw(st.integers(1, 4)), draw(st.integers(2, 4))
    pool, training = sometimes_bad(POOLS, BAD_POOLS), draw(st.booleans())
    momentum, eps = sometimes_bad(MOMENTA, BAD_MOMENTA), sometimes_bad(EPSILONS, BAD_EPSILONS)
    dtype = draw(DTYPES)
    # The (C,) tensors share one dtype: x's, or float32 next to a 16-bit x (nn.BatchNorm2d's under
    # autocast); now and then one of them in another float dtype: a documented TypeError. 16-bit x
    # with 16-bit (C,) tensors is valid too, but torch's batch_norm (the reference) then rounds its
    # statistics and coefficients in that dtype, beyond this suite's two roundings: the
    # conformance suite checks that form against the op's own tolerance (pyneuro.ops.norm.TOLERANCE).
    param_dtype = torch.float32 if dtype in SIXTEEN_BIT else dtype
    gen = torch.Generator().manual_seed(draw(SEEDS))

    x = tensor_arg(draw, gen, (N, C, H, W), dtype, -1.0, 1.0)
    if x.layout == "contiguous" and draw(st.booleans()):
        x = ChannelsLast(x.values, x.dtype, "channels_last", x.shape)

    def stat(low, high):
        arg = tensor_arg(draw, gen, (C,), param_dtype, low, high)
        if training and arg.layout == "expanded":
            # Updated in place in training: a stride-0 tensor has one element for all channels,
            # which torch's in-place ops refuse (RuntimeError) and its batch_norm overwrites.
            arg = TensorArg(arg.values.expand(C).clone(), arg.dtype, "contiguous", arg.shape)
        return arg

    running = sometimes_bad(RUNNING, BAD_RUNNING)
    tensors = {
        "x": x,
        "running_mean": stat(-1.0, 1.0) if running in ("both", "mean only") else None,
        "running_var": stat(0.25, 2.0) if running in ("both", "var only") else None,
        "weight": tensor_arg(draw, gen, (C,), param_dtype, -1.5, 1.5) if draw(st.booleans()) else None,
        "bias": tensor_arg(draw, gen, (C,), param_dtype, -1.0, 1.0) if draw(st.booleans()) else None,
    }
    mixed = None
    present = [n for n in ("running_mean", "running_var", "weight", "bias") if tensors[n] is not None]
    if present and draw(st.integers(0, 9)) == 0:
        name = draw(st.sampled_from(present))
        other = draw(st.sampled_from([d for d in (torch.float32, torch.float64) + SIXTEEN_BIT
                                      if d not in (dtype, param_dtype)]))
        tensors[name] = TensorArg(tensors[name].values, other, tensors[name].layout, tensors[name].shape)
        dtypes = {tensors[n].dtype for n in present}
        allowed = {dtype, torch.float32} if dtype in SIXTEEN_BIT else {dtype}
        mixed = TypeError if len(dtypes) > 1 or not dtypes <= allowed else None

    # Documented: pool 1 or 2; x not empty; H, W >= pool; both running statistics or neither, and
    # both in eval; more than one value per channel in training; momentum in [0, 1]; eps > 0.
    errors = [mixed]
    errors.append(ValueError if pool not in (1, 2) else None)
    errors.append(ValueError if 0 in (N, C, H, W) else None)
    errors.append(ValueError if pool in (1, 2) and min(H, W) < pool else None)
    errors.append(ValueError if running in ("mean only", "var only") or (running == "none" and not training)
                  else None)
    errors.append(ValueError if training and N * H * W == 1 else None)
    errors.append(ValueError if not 0.0 <= momentum <= 1.0 else None)
    errors.append(ValueError if not eps > 0 else None)
    errors = [e for e in errors if e is not None]
    invalid = None if not errors else errors[0] if len(set(errors)) == 1 else Exception

    if training and not errors and x.values.numel():
        # Batch norm divides by sqrt(var + eps): a channel whose values (nearly) coincide, which an
        # expanded x or a couple of values can draw, turns the fp32 rounding of x - mean into noise
        # 1 / sqrt(eps) times larger, beyond any fp32 tolerance. There eps keeps it bounded.
        spread = _as_built(x).var((0, 2, 3), unbiased=False).min().item()
        if not spread >= 1e-2:  # NaN (a special value) included: the whole channel is NaN anyway
            eps = max(eps, 0.1)

    drawn = draw(mutations(tensors, ["x"], device))
    kept = []
    for m in drawn:
        if m.kind == "dtype" and m.detail.is_floating_point:
            # Another float dtype is drawn above as the call's own dtypes, with its documented
            # outcome; as a mutation, the fp64 twin the reference checks would hold another mix.
            continue
        if m.kind == "device" and m.target == "x" and not present:
            # x alone on another device is no mismatch: the backend does not run there
            # (BackendUnavailableError), which is documented too.
            m = Mutation(m.kind, m.target, m.detail, Exception)
        kept.append(m)

    sizes = (N, C, H, W)  # after the channel-block draw
    return Call(
        "batch_norm_relu", _batch_norm_relu, tensors,
        options={"training": training, "momentum": momentum, "eps": eps, "pool": pool},
        mutations=kept, invalid=invalid,
        # The compiled backend documents float32 only (TypeError otherwise).
        refusable=backend != "reference" and any(t.dtype != torch.float32 for t in tensors.values() if t is not None),
        # Gradients in fp32/fp64 only: a 16-bit backend rounds z, which makes near-equal z of a
        # window equal and sends their gradient to the first, not where the fp64 reference does.
        backward=draw(st.integers(0, 3)) == 0 and dtype in (torch.float32, torch.float64) and 0 not in sizes,
        grad_seed=draw(SEEDS))


def test_fuzz_batch_norm_relu(op_name, backend, device, fuzz_calls):
    @fuzz_settings(backend, EXAMPLES)
    @given(call=batch_norm_calls(backend, device))
    def fuzz(call):
        check_call(call, backend, device, fuzz_calls)

    fuzz()
