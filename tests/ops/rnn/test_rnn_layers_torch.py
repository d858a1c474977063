"""pyneuro.nn.LSTM/GRU/RNN against torch.nn.LSTM/GRU/RNN with the same weights, on every backend:
outputs, final states and the gradients of the input, of every initial state and of every
parameter; 1 to 3 layers, bidirectional, batch_first, proj_size, unbatched input, T = 1 and batch 1,
odd sizes, and dropout between layers.

The reference runs in fp64 against torch.nn in fp64 (1e-10). A compiled backend runs in its dtypes
against torch.nn in fp64 on fp64 copies of the very weights, inputs and cotangents it saw, with the
op's tolerance (pyneuro.ops.rnn.TOLERANCE); bf16/fp16 on one layer, whose every output is one op
call (stacked layers would feed layer 2 the rounded output of layer 1, which the fp64 torch.nn run
does not round).

Dropout: torch.nn.LSTM/GRU/RNN apply it inside one fused call that exposes no masks. The honest
comparison records the masks our layer drew (each an output/input ratio, checked to be 0 or
1/(1-p)), then runs torch.nn one layer at a time in fp64 with those very masks between the layers;
so outputs and gradients are compared through identical masks without relying on how either side
consumes the random stream. A second test checks that, on the CPU, one seed also gives torch.nn's
own masks (both draw one bernoulli tensor per layer boundary in the same order).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pyneuro.nn as pn
import pyneuro.nn.rnn as pn_rnn
from rnn_cases import HAS_GPU, Target, activated, all_targets, assert_matches, interpreter_slow

TIGHT = dict(atol=1e-12, rtol=1e-10)
KINDS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


def pair(kind, input_size, hidden, dtype, backend, device="cpu", **kwargs):
    """(torch layer in fp64 on the CPU, our layer in ``dtype`` on ``backend``) with the same weights:
    torch's init, rounded to ``dtype`` and loaded into ours by load_state_dict; torch's then holds
    the rounded values in fp64."""
    torch_cls, our_cls = {"lstm": (nn.LSTM, pn.LSTM), "gru": (nn.GRU, pn.GRU),
                          "rnn_tanh": (nn.RNN, pn.RNN), "rnn_relu": (nn.RNN, pn.RNN)}[kind]
    if kind.startswith("rnn"):
        kwargs["nonlinearity"] = kind.split("_")[1]
    torch.manual_seed(0)
    theirs = torch_cls(input_size, hidden, dtype=torch.float64, **kwargs)
    with torch.no_grad():
        for p in theirs.parameters():
            p.mul_(1.5)  # a little past torch's init, so the gates leave their linear range
            p.copy_(p.to(dtype).double())
    ours = our_cls(input_size, hidden, dtype=dtype, device=device, backend=backend, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def flat(out):
    """(output, h_n) or (output, (h_n, c_n)) -> list of tensors."""
    y, hx = out
    return [y, *(hx if isinstance(hx, tuple) else (hx,))]


def initial_state(kind, layer, batch_shape, dtype, device, gen):
    rows = layer.num_layers * (2 if layer.bidirectional else 1)
    h = torch.randn(rows, *batch_shape, layer.proj_size or layer.hidden_size, generator=gen).to(dtype).to(device)
    if kind != "lstm":
        return (h,)
    return h, torch.randn(rows, *batch_shape, layer.hidden_size, generator=gen).to(dtype).to(device)


def run(layer, x, hx, cot, names):
    """Outputs and gradients of <outputs, cot> for x, each hx tensor and each parameter (by torch's names)."""
    x = x.detach().clone().requires_grad_()
    hx = None if hx is None else tuple(h.detach().clone().requires_grad_() for h in hx)
    arg = None if hx is None else (hx if len(hx) == 2 else hx[0])
    outs = flat(layer(x, arg))
    params = [layer.get_parameter(n) for n in names]
    grads = torch.autograd.grad(outs, [x, *(hx or ()), *params], [c.to(o.device, o.dtype) for c, o in zip(cot, outs)])
    return [o.detach() for o in outs], grads


def compare(target, kind, config, dtype, with_hx=None):
    c = dict(CONFIGS[config], **({} if with_hx is None else {"hx": with_hx}))
    kwargs = {k: v for k, v in c.items() if k not in ("seq", "batch", "input", "hidden", "hx", "unbatched")}
    assert kind == "lstm" or "proj_size" not in kwargs, "proj_size exists only for the LSTM (torch.nn too)"
    theirs, ours = pair(kind, c["input"], c["hidden"], dtype, target.backend, target.device, **kwargs)
    gen = torch.Generator().manual_seed(1)
    batch_shape = () if c.get("unbatched") else (c["batch"],)
    shape = ((c["seq"], c["input"]) if c.get("unbatched") else
             (c["batch"], c["seq"], c["input"]) if c.get("batch_first") else (c["seq"], c["batch"], c["input"]))
    x = torch.randn(shape, generator=gen).to(dtype).to(target.device)
    hx = initial_state(kind, ours, batch_shape, dtype, target.device, gen) if c.get("hx") else None
    names = [n for n, _ in theirs.named_parameters()]
    probe = flat(ours(x, None if hx is None else (hx if len(hx) == 2 else hx[0])))
    cot = [torch.randn(o.shape, generator=gen).to(dtype) for o in probe]
    got_outs, got_grads = run(ours, x, hx, cot, names)
    want_outs, want_grads = run(theirs, x.double().cpu(), None if hx is None else tuple(h.double().cpu() for h in hx),
                                [t.double() for t in cot], names)
    labels = ["input", *(f"hx[{i}]" for i in range(len(hx or ()))), *names]
    for name, a, b in zip(("output", "h_n", "c_n"), got_outs, want_outs):
        assert a.dtype == dtype and a.device.type == target.device, name
        check(target, dtype, a, b, name)
    for name, a, b in zip(labels, got_grads, want_grads):
        assert a.dtype == dtype, f"grad of {name}: {a.dtype}"
        check(target, dtype, a, b, f"grad of {name}")


def check(target, dtype, got, want, what):
    if dtype == torch.float64:
        torch.testing.assert_close(got, want, **TIGHT, msg=lambda m: f"{what}: {m}")
    else:
        assert_matches(got, want, target.tolerance(dtype), what)


CONFIGS = {
    "tiny": dict(seq=3, batch=2, input=3, hidden=5, hx=True),
    "T1-B1-I1": dict(seq=1, batch=1, input=1, hidden=5, hx=True),
    "1layer": dict(seq=5, batch=3, input=4, hidden=6),
    "2layer-bidir-batchfirst": dict(seq=5, batch=3, input=4, hidden=7, num_layers=2, bidirectional=True,
                                    batch_first=True, hx=True),
    "3layer-nobias": dict(seq=4, batch=2, input=3, hidden=5, num_layers=3, bias=False, hx=True),
    "3layer-bidir": dict(seq=4, batch=1, input=2, hidden=9, num_layers=3, bidirectional=True),
    "2layer-bidir-nobias": dict(seq=5, batch=3, input=4, hidden=6, num_layers=2, bidirectional=True, bias=False),
    "unbatched-2layer-bidir": dict(seq=5, batch=None, input=4, hidden=6, num_layers=2, bidirectional=True,
                                   batch_first=True, unbatched=True, hx=True),
    "unbatched-nohx": dict(seq=4, batch=None, input=3, hidden=5, unbatched=True),
    "proj-1layer": dict(seq=6, batch=3, input=4, hidden=7, proj_size=3, hx=True),
    "proj-2layer-bidir-batchfirst": dict(seq=5, batch=2, input=4, hidden=6, proj_size=2, num_layers=2,
                                         bidirectional=True, batch_first=True, hx=True),
    "proj-3layer-nohx": dict(seq=3, batch=2, input=3, hidden=5, proj_size=4, num_layers=3),
}
CASES = [(k, c) for k in KINDS for c in CONFIGS if k == "lstm" or not c.startswith("proj")]


@pytest.mark.parametrize("with_hx", [False, True], ids=["no-hx", "hx"])
@pytest.mark.parametrize("kind,config", CASES, ids=[f"{k}-{c}" for k, c in CASES])
def test_reference_fp64_matches_torch(kind, config, with_hx):
    compare(Target("reference", "cpu"), kind, config, torch.float64, with_hx)


@pytest.mark.parametrize("kind,size", [(k, c) for k, c in CASES], ids=[f"{k}-{c}" for k, c in CASES])
def test_fp32_matches_torch(any_target, kind, size):
    """Every backend in fp32 against torch.nn in fp64 on the same values (``size`` names the
    layer configuration; the Triton interpreter runs the tiny ones in `make test`)."""
    compare(any_target, kind, size, torch.float32)


LOW_CASES = [(k, c) for k in KINDS for c in ("tiny", "T1-B1-I1", "1layer", "proj-1layer")
             if k == "lstm" or not c.startswith("proj")]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("kind,size", LOW_CASES, ids=[f"{k}-{c}" for k, c in LOW_CASES])
def test_low_precision_one_layer_matches_torch(any_target, kind, size, dtype):
    compare(any_target, kind, size, dtype)


# ----------------------------------------------------------------------------------------------
# Dropout between layers
# ----------------------------------------------------------------------------------------------
class _RecordingF:
    """Stands in for torch.nn.functional inside pyneuro.nn.rnn: records each dropout's mask."""

    def __init__(self):
        self.masks = []

    def __getattr__(self, name):
        return getattr(F, name)

    def dropout(self, input, p=0.5, training=True, inplace=False):
        out = F.dropout(input, p=p, training=training, inplace=inplace)
        # Where a ReLU output is exactly 0 the mask cannot be read back, and does not matter: the
        # value is 0 whatever it is multiplied by, and so is the ReLU's derivative there.
        nonzero = input.detach() != 0
        mask = torch.where(nonzero, out.detach() / torch.where(nonzero, input.detach(), 1), 0)
        self.masks.append((mask, nonzero, p))
        return out


def _single_layers(theirs, kind, kwargs):
    """One fp64 torch.nn layer per layer of ``theirs``, holding its weights."""
    cls = type(theirs)
    layers = []
    for layer in range(theirs.num_layers):
        in_size = theirs.input_size if layer == 0 else (theirs.proj_size or theirs.hidden_size) * (
            2 if theirs.bidirectional else 1)
        extra = {"nonlinearity": kind.split("_")[1]} if kind.startswith("rnn") else {}
        if theirs.proj_size:
            extra["proj_size"] = theirs.proj_size
        single = cls(in_size, theirs.hidden_size, bidirectional=theirs.bidirectional, bias=theirs.bias,
                     dtype=torch.float64, **extra)
        with torch.no_grad():
            for name, p in single.named_parameters():
                p.copy_(theirs.get_parameter(name.replace("_l0", f"_l{layer}")))
        layers.append(single)
    return layers


DROPOUT_CASES = [("lstm", dict(num_layers=3, bidirectional=True, proj_size=3)), ("gru", dict(num_layers=2)),
                 ("rnn_relu", dict(num_layers=3, bidirectional=True))]


def _dtype_for(target):
    return torch.float64 if target.backend == "reference" else torch.float32


@pytest.mark.parametrize("kind,kwargs", DROPOUT_CASES, ids=[k for k, _ in DROPOUT_CASES])
@interpreter_slow
def test_dropout_masks_replayed_through_torch(any_target, kind, kwargs, monkeypatch):
    p, seq, batch, input_size, hidden = 0.4, 4, 3, 3, 5
    dtype = _dtype_for(any_target)
    theirs, ours = pair(kind, input_size, hidden, dtype, any_target.backend, any_target.device, dropout=p, **kwargs)
    recorder = _RecordingF()
    monkeypatch.setattr(pn_rnn, "F", recorder)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(seq, batch, input_size, generator=gen).to(dtype).to(any_target.device)
    hx = initial_state(kind, ours, (batch,), dtype, any_target.device, gen)
    names = [n for n, _ in theirs.named_parameters()]
    ours.train()
    torch.manual_seed(3)
    probe = flat(ours(x, hx if len(hx) == 2 else hx[0]))
    cot = [torch.randn(o.shape, generator=gen).to(dtype) for o in probe]
    recorder.masks.clear()
    torch.manual_seed(3)
    got_outs, got_grads = run(ours, x, hx, cot, names)

    # The masks: one per layer boundary, p as configured, values 0 or 1/(1-p), some of each.
    assert len(recorder.masks) == ours.num_layers - 1, "dropout sits between layers, not after the last"
    width = (ours.proj_size or hidden) * (2 if ours.bidirectional else 1)
    for mask, nonzero, p_used in recorder.masks:
        assert p_used == p and mask.shape == (seq, batch, width)
        assert nonzero.float().mean() > 0.3, "too few non-zero layer outputs to read the mask from"
        mask = mask[nonzero]
        kept = mask != 0
        torch.testing.assert_close(mask[kept], torch.full_like(mask[kept], 1 / (1 - p)), rtol=1e-6, atol=0)
        assert 0 < kept.sum() < kept.numel()

    # torch.nn one layer at a time, fp64, the same masks in between.
    singles = _single_layers(theirs, kind, kwargs)
    xs = x.double().cpu().requires_grad_()
    hxs = tuple(h.double().cpu().requires_grad_() for h in hx)
    D = 2 if ours.bidirectional else 1
    inp, finals = xs, [[] for _ in hxs]
    for layer, single in enumerate(singles):
        state = tuple(h[layer * D:(layer + 1) * D] for h in hxs)
        y, last = single(inp, state if len(state) == 2 else state[0])
        for collected, s in zip(finals, last if isinstance(last, tuple) else (last,)):
            collected.append(s)
        inp = y * recorder.masks[layer][0].double().cpu() if layer < len(singles) - 1 else y
    want_outs = [inp, *(torch.cat(c) for c in finals)]
    params = [(layer, name) for layer, single in enumerate(singles) for name, _ in single.named_parameters()]
    want_grads = torch.autograd.grad(want_outs, [xs, *hxs, *(singles[l].get_parameter(n) for l, n in params)],
                                     [c.double() for c in cot])
    by_name = {n.replace("_l0", f"_l{l}"): g for (l, n), g in zip(params, want_grads[1 + len(hxs):])}
    for name, a, b in zip(("output", "h_n", "c_n"), got_outs, want_outs):
        check(any_target, dtype, a, b.detach(), name)
    for name, a, b in zip(["input", *(f"hx[{i}]" for i in range(len(hxs)))], got_grads, want_grads):
        check(any_target, dtype, a, b, f"grad of {name}")
    for name, a in zip(names, got_grads[1 + len(hxs):]):
        check(any_target, dtype, a, by_name[name], f"grad of {name}")

    ours.eval()
    recorder.masks.clear()
    ours(x, hx if len(hx) == 2 else hx[0])
    assert not recorder.masks, "no dropout in eval mode"


# On a GPU torch.nn draws its masks in cuDNN (its own dropout state), not from the seed alone:
# the targets on CPU tensors only (the reference on the CPU included on a GPU machine).
CPU_TARGETS = ([p for p in all_targets() if p.values[0].device == "cpu"]
               + ([pytest.param(Target("reference", "cpu"), id="reference-cpu")] if HAS_GPU else []))


@pytest.mark.parametrize("cpu_target", CPU_TARGETS)
@pytest.mark.parametrize("kind,kwargs", DROPOUT_CASES, ids=[k for k, _ in DROPOUT_CASES])
@interpreter_slow
def test_dropout_same_seed_gives_torch_nn_masks_on_cpu(cpu_target, kind, kwargs):
    """On the CPU, torch.manual_seed(s) before each call gives our layer torch.nn's own dropout
    masks: the same results as torch.nn.LSTM/GRU/RNN in training mode, seed for seed."""
    any_target = cpu_target
    dtype = _dtype_for(any_target)
    with activated(any_target):
        same_seed_check(any_target, kind, kwargs, dtype)


def same_seed_check(any_target, kind, kwargs, dtype):
    theirs, ours = pair(kind, 3, 5, dtype, any_target.backend, any_target.device, dropout=0.4, **kwargs)
    theirs.train(), ours.train()
    x = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(4)).to(dtype)
    for seed in (0, 1):
        torch.manual_seed(seed)
        want = flat(theirs(x.double()))
        torch.manual_seed(seed)
        got = flat(ours(x))
        for name, a, b in zip(("output", "h_n", "c_n"), got, want):
            check(any_target, dtype, a.detach(), b.detach(), f"{name} (seed {seed})")
