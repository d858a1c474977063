"""What every fuzz module shares: a generated call, its hostile mutations, and the properties checked.

A :class:`Call` holds recipes, not tensors: each tensor argument is fp64 leaf values plus a
dtype and a layout (how the argument is made from its leaf: transposed, strided, expanded).
Building the same call twice, once in the dtypes under test and once in fp64 for the reference,
gives arguments with the same values, so gradients of the leaves can be compared directly.

Properties of one call on one backend (:func:`check_call`):
* it returns, or raises one of DOCUMENTED_ERRORS; anything else (RuntimeError from a kernel,
  AssertionError, ZeroDivisionError, ...) propagates and fails the test;
* a call made invalid on purpose (wrong type, rank, dtype class, device) raises, and with a
  single such mutation it raises the documented class;
* a call the backend accepts agrees with the reference backend on the fp64 version of the same
  call: same shapes, same non-finite positions, finite values within TOLERANCE; and, for the
  calls drawn with ``backward``, the same gradients for every leaf.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from pyneuro._backends import BackendUnavailableError

DOCUMENTED_ERRORS = (ValueError, TypeError, BackendUnavailableError)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
NON_FLOAT_DTYPES = (torch.int32, torch.int64, torch.bool, torch.complex64)

# Normwise tolerance, max |got - want| / max(max |want|, 1), against the fp64 reference on the
# same input values. bf16 / fp16: the output and the input gradients are each rounded once to the
# dtype (unit roundoff 2^-8 and 2^-11) and the compiled kernels may round an intermediate once more:
# two roundings. fp32: the compiled kernels' polynomial exp/log (~2 ulp) accumulated over the short
# sequences drawn here stays far below 1e-5. fp64 only ever runs on the reference.
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}

SPECIAL_VALUES = (math.nan, math.inf, -math.inf)


# ----------------------------------------------------------------------------------------------
# Tensor recipes
# ----------------------------------------------------------------------------------------------
@dataclass
class TensorArg:
    values: torch.Tensor  # fp64, CPU: the leaf's values (a size-1 axis where the layout expands)
    dtype: torch.dtype
    layout: str  # contiguous | transposed | strided | expanded
    shape: tuple  # the argument's shape (differs from values.shape only when expanded)

    def make(self, leaf: torch.Tensor) -> torch.Tensor:
        """The argument as the op sees it, made from ``leaf`` by differentiable ops."""
        if self.layout == "expanded":
            return leaf.expand(self.shape)
        if self.layout == "transposed":  # same values, the two last axes swapped in memory
            return leaf.transpose(-1, -2).contiguous().transpose(-1, -2)
        if self.layout == "strided":  # every other element of a twice-longer last axis
            return torch.stack([leaf, torch.zeros_like(leaf)], dim=-1).select(-1, 0)
        return leaf

    def __repr__(self):
        special = int((~torch.isfinite(self.values)).sum())
        return (f"<{tuple(self.shape)} {str(self.dtype).replace('torch.', '')} {self.layout}"
                f"{f' {special} non-finite' if special else ''}>")


LAYOUTS = ("contiguous", "transposed", "strided", "expanded")


LAYOUT_CHOICES = st.sampled_from(LAYOUTS)
SPECIAL_CHOICES = st.sampled_from(SPECIAL_VALUES)
SEEDS = st.integers(0, 2**31 - 1)


def tensor_arg(draw, gen: torch.Generator, shape, dtype, low=-1.0, high=1.0, specials=SPECIAL_VALUES) -> TensorArg:
    """A TensorArg of ``shape`` in a drawn layout: uniform values in [low, high) from ``gen`` (one
    generator per call, seeded by a draw, keeps Hypothesis's draws few), sometimes with some of
    ``specials`` (NaN/Inf) at drawn positions. A plain function taking ``draw``, not a strategy:
    it is called a dozen times per call, and nested strategies cost more than the op calls."""
    shape = tuple(shape)
    layout = draw(LAYOUT_CHOICES)
    if layout == "transposed" and len(shape) < 2:
        layout = "strided"
    leaf_shape = shape
    if layout == "expanded" and shape:
        axis = draw(st.integers(0, len(shape) - 1))
        leaf_shape = shape[:axis] + (1,) + shape[axis + 1:]
    values = torch.empty(leaf_shape, dtype=torch.float64).uniform_(low, high, generator=gen)
    if specials and values.numel() and draw(st.integers(0, 9)) == 0:  # one tensor in ten
        flat = values.view(-1)
        for _ in range(draw(st.integers(1, 2))):
            flat[draw(st.integers(0, flat.numel() - 1))] = draw(
                SPECIAL_CHOICES if specials == SPECIAL_VALUES else st.sampled_from(tuple(specials)))
    return TensorArg(values, dtype, layout, shape)


# ----------------------------------------------------------------------------------------------
# Mutations: hostile changes applied to the built keyword arguments
# ----------------------------------------------------------------------------------------------
@dataclass
class Mutation:
    kind: str
    target: str
    detail: Any = None
    # The documented error the mutation must cause, or None when the call may stay valid.
    must_raise: Optional[type] = None

    def apply(self, kwargs: dict, rank_flatten: frozenset) -> None:
        t = kwargs.get(self.target)
        if self.kind == "none":
            kwargs[self.target] = None
        elif self.kind == "type":
            kwargs[self.target] = _non_tensor(t, self.detail)
        elif t is None:
            return  # the remaining kinds change a tensor; the target is an absent optional
        elif self.kind == "rank":
            # One axis more is wrong for every argument except those whose several accepted
            # ranks could absorb it (selective_scan's B/C); those become 1-D, accepted by none.
            kwargs[self.target] = t.reshape(-1) if self.target in rank_flatten else t.unsqueeze(0)
        elif self.kind == "dtype":
            kwargs[self.target] = t.detach().to(self.detail)
        elif self.kind == "device":
            kwargs[self.target] = t.detach().to(self.detail)
        elif self.kind == "shape":  # one axis one longer
            axis = self.detail % t.dim() if t.dim() else None
            if axis is not None:
                kwargs[self.target] = torch.cat([t, t.narrow(axis, 0, 1) if t.shape[axis] else
                                                 t.new_zeros(t.shape[:axis] + (1,) + t.shape[axis + 1:])], axis)

    def __repr__(self):
        detail = str(self.detail).replace("torch.", "") if self.detail is not None else ""
        return f"{self.kind}({self.target}{', ' + detail if detail else ''})"


def _non_tensor(t, kind):
    if kind == "list":
        return t.detach().cpu().double().tolist() if isinstance(t, torch.Tensor) else [1.0]
    if kind == "float":
        return 0.5
    if kind == "int":
        return 3
    if kind == "str":
        return "tensor"
    if kind == "ndarray":
        return t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else torch.ones(2).numpy()
    raise AssertionError(kind)


def other_devices(device: str) -> list[str]:
    """Devices a stray argument can sit on: meta (stands in for another device anywhere), and the
    other real device when there is a GPU."""
    out = ["meta"]
    if torch.cuda.is_available():
        out.append("cpu" if device == "cuda" else "cuda")
    return out


@st.composite
def mutations(draw, tensors: dict, required: list[str], device: str, max_count: int = 2):
    """0..max_count hostile mutations on distinct arguments of ``tensors`` ({name: TensorArg or
    None}), none in about half of the calls."""
    present = [n for n, t in tensors.items() if t is not None]
    absent = [n for n, t in tensors.items() if t is None]
    count = draw(st.sampled_from([0, 0, 0, 1, 1, 2][: 4 + max_count]))
    names = present + absent
    if not count or not names:
        return []
    targets = draw(st.lists(st.sampled_from(names), min_size=count, max_size=count, unique=True))
    out = []
    for target in targets:
        kinds = ["type"] if target in absent else ["type", "rank", "dtype", "device", "shape"]
        if target in required:
            kinds.append("none")
        kind = draw(st.sampled_from(kinds))
        if kind == "type":
            out.append(Mutation(kind, target, draw(st.sampled_from(["list", "float", "int", "str", "ndarray"])),
                                TypeError))
        elif kind == "none":
            out.append(Mutation(kind, target, None, TypeError))
        elif kind == "rank":
            out.append(Mutation(kind, target, None, ValueError))
        elif kind == "device":
            out.append(Mutation(kind, target, draw(st.sampled_from(other_devices(device))), ValueError))
        elif kind == "dtype":
            # Never the argument's own dtype: that would be no change to the call under test but
            # one to its fp64 version.
            dtype = draw(st.sampled_from([d for d in NON_FLOAT_DTYPES + FLOAT_DTYPES if d != tensors[target].dtype]))
            # Another float dtype may be accepted (fp32 weights next to fp64 inputs); the others never.
            out.append(Mutation(kind, target, dtype, None if dtype.is_floating_point else TypeError))
        else:  # shape: usually a ValueError, but e.g. a grouped B with one more group can be valid
            out.append(Mutation(kind, target, draw(st.integers(0, 3)), None))
    return out


# ----------------------------------------------------------------------------------------------
# A call and its checks
# ----------------------------------------------------------------------------------------------
@dataclass
class Call:
    op: str  # registry name, for the call count
    fn: Callable
    tensors: dict[str, Optional[TensorArg]]
    options: dict[str, Any] = field(default_factory=dict)
    mutations: list = field(default_factory=list)
    # Raised without any mutation: the documented error a value in the call itself must cause
    # (e.g. a zero-length sequence for the recurrent ops; Exception: any documented one), else None.
    invalid: Optional[type] = None
    # Whether a documented refusal of the unmutated call is acceptable on this backend (dtypes or
    # sizes outside its documented range); when False the call must succeed.
    refusable: bool = False
    backward: bool = False
    grad_seed: int = 0
    rank_flatten: frozenset = frozenset()

    @property
    def must_raise(self) -> Optional[type]:
        """The error class the call must raise; Exception (any documented one) when several apply."""
        # A mutation that may keep a call valid may also undo what made it invalid (one more
        # time step for a zero-length sequence): then only the other mutations are certain.
        undoable = any(m.must_raise is None for m in self.mutations)
        sources = [m.must_raise for m in self.mutations] + ([self.invalid] if self.invalid and not undoable else [])
        expected = [e for e in sources if e is not None]
        if not expected:
            return None
        # With several changes, which check fires first is the op's business: any documented error.
        return expected[0] if len(sources) == 1 else Exception

    @property
    def finite(self) -> bool:
        return all(bool(torch.isfinite(t.values).all()) for t in self.tensors.values() if t is not None)

    def build(self, device: str, fp64: bool = False, grad: bool = False):
        """(keyword arguments, {name: leaf}) with the mutations applied; fp64 turns every floating
        argument into fp64 (the reference's oracle precision)."""
        kwargs, leaves = dict(self.options), {}
        for name, arg in self.tensors.items():
            if arg is None:
                kwargs[name] = None
                continue
            leaf = arg.values.to(arg.dtype)  # the fp64 version holds the very same values
            leaf = leaf.to(device=device, dtype=torch.float64 if fp64 else arg.dtype)
            if grad:
                leaf.requires_grad_()
            leaves[name] = leaf
            kwargs[name] = arg.make(leaf)
        for m in self.mutations:
            m.apply(kwargs, self.rank_flatten)
        return kwargs, leaves

    def _repr_pretty_(self, printer, cycle):  # Hypothesis prints failing calls with this
        printer.text(repr(self))

    def __repr__(self):
        parts = [f"{k}={v!r}" for k, v in self.tensors.items()] + [f"{k}={v!r}" for k, v in self.options.items()]
        extra = f" mutations={self.mutations}" if self.mutations else ""
        return f"{self.op}({', '.join(parts)}){extra}{' +backward' if self.backward else ''}"


def _outputs(result) -> list[torch.Tensor]:
    return list(result) if isinstance(result, (tuple, list)) else [result]


def assert_agrees(got: torch.Tensor, want: torch.Tensor, what: str, tol: float) -> None:
    assert isinstance(got, torch.Tensor), f"{what}: got a {type(got).__name__}, not a tensor"
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, reference {tuple(want.shape)}"
    got = got.detach().cpu()
    want = want.detach().cpu()
    # Non-finite where the reference is, once the reference is rounded to the output dtype (a
    # finite fp64 value can overflow fp16).
    finite = torch.isfinite(got)
    want_finite = torch.isfinite(want.to(got.dtype))
    assert torch.equal(finite, want_finite), (
        f"{what}: non-finite at {(~finite).nonzero().tolist()[:8]} but the reference at "
        f"{(~want_finite).nonzero().tolist()[:8]}")
    if finite.any():
        g, w = got[finite].double(), want[finite].double()
        err = ((g - w).abs().max() / w.abs().max().clamp_min(1.0)).item()
        assert err <= tol, f"{what}: normwise error {err:.3g} > tolerance {tol:.0e} ({got.dtype})"


def _grad_weights(outputs, grad_seed) -> list[torch.Tensor]:
    """Fixed random w_i (fp64) per output: the gradients compared are those of sum(out_i * w_i)."""
    gen = torch.Generator().manual_seed(grad_seed)
    return [torch.empty(o.shape, dtype=torch.float64).uniform_(-1, 1, generator=gen) for o in outputs]


def _grads(outputs, leaves: dict, weights) -> dict:
    """Gradients of every leaf (zeros where unused) from the outputs that require grad."""
    pairs = [(o, w.to(device=o.device, dtype=o.dtype)) for o, w in zip(outputs, weights) if o.requires_grad]
    if not pairs:
        return {name: torch.zeros_like(leaf) for name, leaf in leaves.items()}
    grads = torch.autograd.grad([o for o, _ in pairs], list(leaves.values()), [w for _, w in pairs],
                                allow_unused=True, materialize_grads=True)
    return dict(zip(leaves, grads))


def check_call(call: Call, backend: str, device: str, counter) -> None:
    """Run ``call`` on ``backend`` and check the properties in this module's docstring."""
    backward = call.backward and call.must_raise is None and call.finite
    kwargs, leaves = call.build(device, grad=backward)
    counter[(call.op, backend)] += 1
    expected = call.must_raise
    try:
        result = call.fn(**kwargs, backend=backend)
    except DOCUMENTED_ERRORS as exc:
        if expected is None:
            # Mutations that may keep the call valid may also make it invalid.
            assert call.refusable or call.mutations, (
                f"{backend} refused a call it must take: {type(exc).__name__}: {exc}")
        else:
            assert isinstance(exc, expected), f"expected {expected.__name__}, got {type(exc).__name__}: {exc}"
        return
    assert expected is None, f"{backend} accepted an invalid call (expected {expected.__name__})"

    outputs = _outputs(result)
    ref_kwargs, ref_leaves = call.build(device, fp64=True, grad=backward)
    counter[(call.op, "oracle")] += 1
    try:
        reference = _outputs(call.fn(**ref_kwargs, backend="reference"))
    except DOCUMENTED_ERRORS as exc:
        raise AssertionError(f"{backend} accepted a call whose fp64 version the reference refuses: "
                             f"{type(exc).__name__}: {exc}") from exc
    assert len(outputs) == len(reference), f"{len(outputs)} outputs, the reference {len(reference)}"
    tol = TOLERANCE[_call_dtype(call)]
    for i, (got, want) in enumerate(zip(outputs, reference)):
        assert got.device.type == device, f"output {i} on {got.device}, inputs on {device}"
        assert_agrees(got, want, f"output {i}", tol)

    if backward and all(bool(torch.isfinite(o).all()) for o in outputs):
        # Rounded to the outputs' dtypes, so that the reference differentiates the same sum.
        weights = [w.to(o.dtype) for w, o in zip(_grad_weights(outputs, call.grad_seed), outputs)]
        got_grads = _grads(outputs, leaves, weights)
        want_grads = _grads(reference, ref_leaves, weights)
        for name in leaves:
            assert_agrees(got_grads[name], want_grads[name], f"d{name}", tol)


def _call_dtype(call: Call) -> torch.dtype:
    """The lowest precision among the floating arguments: it bounds the agreement."""
    dtypes = [t.dtype for t in call.tensors.values() if t is not None]
    return max(dtypes, key=lambda d: TOLERANCE.get(d, 0.0))


def fuzz_settings(backend: str, examples: dict):
    """Hypothesis settings for one backend: deterministic (derandomize, no database) and bounded.
    Shrinking re-runs a failing call hundreds of times: on the Triton interpreter (~0.3 s a call)
    that takes many minutes, so there a failure is reported unshrunk."""
    slow = backend == "triton" and torch.cuda.is_available() is False
    phases = [p for p in Phase if p is not Phase.shrink] if slow else list(Phase)
    return settings(max_examples=examples.get(backend, examples["default"]), deadline=None, derandomize=True,
                    database=None, phases=phases,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
