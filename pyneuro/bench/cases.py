"""Benchmark cases: for each op and shape, the contenders (pyneuro backends) and the baseline.

A case is a dict with ``op``, ``shape`` (for the report), ``baseline`` (a label) and
``contenders``: {label: callable}; ``bytes`` / ``flops`` (minimum traffic / work) when they are
meaningful, so the runner can report GB/s and TFLOP/s.
"""
from __future__ import annotations

import math

import torch

from pyneuro import _backends

_ELT = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}


def _backends_for(op: str, device: torch.device) -> list[str]:
    # Triton's CPU interpreter is a correctness tool, never a contender.
    return [b for b in _backends.OPS[op].available(device) if not (b == "triton" and device.type == "cpu")]


def _fwd_bwd(fn, inputs):
    """fn -> a closure doing forward + backward with a fixed upstream gradient."""
    def run():
        for t in inputs:
            t.grad = None
        out = fn()
        out = out[0] if isinstance(out, tuple) else out
        out.backward(torch.ones_like(out))
    return run


# ----------------------------------------------------------------------------- selective scan
def scan_cases(device: torch.device, quick: bool):
    from pyneuro.ops import selective_scan

    if device.type == "cuda":
        shapes = [(8, 1536, 2048, 16, torch.float32), (8, 1536, 2048, 16, torch.bfloat16)]
    else:
        shapes = [(4, 32, 256, 16, torch.float32)] if quick else [(32, 128, 784, 16, torch.float32)]
    for batch, dim, L, N, dtype in shapes:
        g = torch.Generator(device="cpu").manual_seed(0)

        def rand(*s, dt=dtype, scale=1.0):
            return (torch.randn(*s, generator=g) * scale).to(device=device, dtype=dt)

        u, delta, z = rand(batch, dim, L), rand(batch, dim, L, scale=0.5), rand(batch, dim, L)
        A = -torch.rand(dim, N, generator=g).add(0.5).to(device)
        Bm, Cm = rand(batch, N, L), rand(batch, N, L)
        D, bias = rand(dim, dt=torch.float32), rand(dim, dt=torch.float32, scale=0.1)
        elt = _ELT[dtype]
        # Minimum traffic. Forward: read u, delta, z, B, C; write out. Backward adds: read u, delta,
        # z, B, C and dout; write du, ddelta, dz, dB, dC (A, D and the bias are negligible).
        traffic = {"fwd": (4 * batch * dim * L + 2 * batch * N * L) * elt,
                   "fwd+bwd": (11 * batch * dim * L + 6 * batch * N * L) * elt}
        for mode in ("fwd", "fwd+bwd"):
            contenders = {}
            for backend in _backends_for("selective_scan", device):
                if backend == "reference" and mode == "fwd+bwd" and L * dim * batch > 50_000_000:
                    continue
                if mode == "fwd":
                    contenders[backend] = (lambda b=backend, a=(u, delta, A, Bm, Cm, D, z, bias): torch.no_grad()(
                        selective_scan)(*a, True, backend=b))
                else:
                    leaves = [t.detach().clone().requires_grad_() for t in (u, delta, A, Bm, Cm, D, z, bias)]
                    contenders[backend] = _fwd_bwd(
                        lambda b=backend, lv=leaves: selective_scan(*lv[:8], True, backend=b), leaves)
            yield {"op": "selective_scan", "mode": mode, "dtype": str(dtype).replace("torch.", ""),
                   "shape": {"batch": batch, "dim": dim, "L": L, "N": N}, "baseline": "reference",
                   "contenders": contenders, "bytes": traffic[mode]}


# ----------------------------------------------------------------------------- attention
def _attention_shapes(device: torch.device, quick: bool) -> list[tuple]:
    """(B, H, L, D, dtype, causal, modes): issue 8's table. On the CPU, MNIST-sized heads (17 and 50
    tokens of 24 dims: per-call overhead dominates) and a long one (1024 x 64: GEMM-bound); on a GPU,
    a long bf16 head dim 128, and the small heads again in fp32 and bf16."""
    both, fb = ("fwd", "fwd+bwd"), ("fwd+bwd",)
    if device.type == "cuda":
        if quick:
            return [(2, 4, 256, 64, torch.bfloat16, True, both)]
        return [(2, 16, 8192, 128, torch.bfloat16, False, both), (2, 16, 8192, 128, torch.bfloat16, True, both)] + \
               [(256, 4, L, 24, dt, False, fb) for dt in (torch.float32, torch.bfloat16) for L in (17, 50)]
    if quick:
        return [(2, 4, 50, 24, torch.float32, False, both)]
    return [(128, 4, 17, 24, torch.float32, False, both), (128, 4, 50, 24, torch.float32, False, both),
            (4, 8, 1024, 64, torch.float32, False, both)]


def attention_cases(device: torch.device, quick: bool):
    import torch.nn.functional as F

    from pyneuro.ops import attention
    from pyneuro.ops.attn import CUDA_SHORT_MAX_KEYS

    for B, H, L, Dh, dtype, causal, modes in _attention_shapes(device, quick):
        g = torch.Generator(device="cpu").manual_seed(0)
        q, k, v = (torch.randn(B, H, L, Dh, generator=g).to(device=device, dtype=dtype) for _ in range(3))
        # Multiply-adds of the two forward GEMMs (Q Kᵀ, P V), half of them under a causal mask; the
        # backward does five (Q Kᵀ and dO Vᵀ again, dQ, dK, dV): 3.5x the forward in all.
        flops = 4 * B * H * L * L * Dh * (0.5 if causal else 1.0)
        for mode in modes:
            leaves = [t.clone().requires_grad_() for t in (q, k, v)]
            contenders = {}

            def call(fn, mode=mode, qkv=(q, k, v), leaves=leaves):
                if mode == "fwd":
                    return lambda: torch.no_grad()(fn)(*qkv)
                return _fwd_bwd(lambda: fn(*leaves), leaves)

            contenders["torch-sdpa"] = call(lambda a, b, c, causal=causal: F.scaled_dot_product_attention(
                a, b, c, is_causal=causal))
            if device.type == "cuda":  # each of SDPA's kernels on its own ("torch-sdpa" is its own choice)
                from torch.nn.attention import SDPBackend, sdpa_kernel

                kinds = [("sdpa-efficient", SDPBackend.EFFICIENT_ATTENTION)]  # any dtype
                if dtype != torch.float32:  # flash and cuDNN take fp16/bf16 only
                    kinds += [("sdpa-flash", SDPBackend.FLASH_ATTENTION), ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION)]
                for name, kind in kinds:
                    def with_kernel(a, b, c, kind=kind, causal=causal):
                        with sdpa_kernel([kind]):
                            return F.scaled_dot_product_attention(a, b, c, is_causal=causal)
                    contenders[name] = call(with_kernel)
            for backend in _backends_for("attention", device):
                if backend == "reference" and B * H * L * L > (1 << 28):
                    continue  # the (B, H, L, L) fp32 scores of 2 x 16 x 8192^2 alone are 8.6 GB
                if backend == "cuda" and L > CUDA_SHORT_MAX_KEYS and "triton" in contenders:
                    continue  # the cuda backend runs the Triton kernel there: the triton row again
                contenders[backend] = call(lambda a, b, c, bk=backend, causal=causal: attention(
                    a, b, c, causal=causal, backend=bk))
            yield {"op": "attention", "mode": mode, "dtype": str(dtype).replace("torch.", ""),
                   "shape": {"B": B, "H": H, "L": L, "Dh": Dh, "causal": causal}, "baseline": "torch-sdpa",
                   "contenders": contenders, "flops": flops * (1 if mode == "fwd" else 3.5)}


def attention_qkvpacked_cases(device: torch.device, quick: bool):
    """A self-attention layer's core: its input projection (B, L, 3 E) through attention to (B, L, E)
    and the gradient back into the projection. Baseline: SDPA on the projection's chunks split per
    head, as torch.nn.MultiheadAttention does; contenders: attention_qkvpacked on the projection
    viewed (B, L, 3, H, Dh), and the unpacked op on the same chunks as the baseline."""
    shapes = [(2, 4, 50, 24)] if quick else [(128, 4, 17, 24), (128, 4, 50, 24)]
    if device.type == "cuda" and not quick:
        shapes = [(256, 4, 17, 24), (256, 4, 50, 24)]
    for shape in shapes:
        yield from _qkvpacked_shape_cases(device, *shape)


def _qkvpacked_shape_cases(device: torch.device, B: int, H: int, L: int, Dh: int):
    """attention_qkvpacked_cases at one shape. A function per shape, so that the closures see this
    call's B, L, ... (a loop would rebind them before a caller that lists every case first, as
    benchmarks/test_bench.py does, runs them)."""
    import torch.nn.functional as F

    from pyneuro.ops import attention, attention_qkvpacked

    E = H * Dh
    proj = torch.randn(B, L, 3 * E, generator=torch.Generator().manual_seed(0)).to(device)
    flops = 4 * B * H * L * L * Dh

    def heads(t):
        return t.view(B, L, H, Dh).transpose(1, 2)

    def sdpa(p):
        q, k, v = (heads(t) for t in p.chunk(3, dim=-1))
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, E)

    def unpacked(p, backend):
        q, k, v = (heads(t) for t in p.chunk(3, dim=-1))
        return attention(q, k, v, backend=backend).transpose(1, 2).reshape(B, L, E)

    def packed(p, backend):
        return attention_qkvpacked(p.view(B, L, 3, H, Dh), backend=backend).reshape(B, L, E)

    for mode in ("fwd", "fwd+bwd"):
        leaf = proj.clone().requires_grad_()

        def call(fn, mode=mode, leaf=leaf):
            if mode == "fwd":
                return lambda: torch.no_grad()(fn)(proj)
            return _fwd_bwd(lambda: fn(leaf), [leaf])

        contenders = {"torch-sdpa": call(sdpa)}
        for backend in _backends_for("attention", device):
            contenders[backend] = call(lambda p, bk=backend: packed(p, bk))
            contenders[f"{backend}-unpacked"] = call(lambda p, bk=backend: unpacked(p, bk))
        yield {"op": "attention_qkvpacked", "mode": mode, "dtype": "float32",
               "shape": {"B": B, "H": H, "L": L, "Dh": Dh}, "baseline": "torch-sdpa",
               "contenders": contenders, "flops": flops * (1 if mode == "fwd" else 3.5)}


# ----------------------------------------------------------------------------- recurrent layers
def _recurrent_shapes(device: torch.device, quick: bool) -> list[tuple]:
    """(T, B, I, H, dtype): MNIST rows, a mid-size layer, and on the GPU issue 7's targets."""
    if quick:
        return [(16, 32, 16, 32, torch.float32)]
    if device.type == "cuda":
        return [(28, 128, 28, 128, torch.float32), (512, 32, 256, 256, torch.float32),
                (784, 128, 1, 128, torch.bfloat16), (512, 64, 1024, 1024, torch.float32)]
    return [(28, 128, 28, 128, torch.float32), (128, 32, 256, 256, torch.float32)]


def _with_env(name: str, value: str, run):
    """The timed closure ``run`` with the environment variable ``name`` = ``value`` while it runs
    (forward and backward alike)."""
    import os

    def wrapped():
        saved = os.environ.get(name)
        os.environ[name] = value
        try:
            return run()
        finally:
            if saved is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = saved

    return wrapped


def _with_cudnn_tf32(allow: bool, run):
    """The timed closure ``run`` with cuDNN's TF32 switch set to ``allow`` while it runs."""
    def wrapped():
        saved = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = allow
        try:
            return run()
        finally:
            torch.backends.cudnn.allow_tf32 = saved

    return wrapped


def _recurrent_cell_cases(cell: str):
    """Cases of one cell: pyneuro.nn's layer on each backend against torch.nn's (oneDNN / cuDNN),
    same weights, same threads; the leaky cell has no torch.nn twin, so its baseline is the
    PyTorch reference loop. On a GPU in fp32 the baseline runs cuDNN with TF32 off, in IEEE fp32
    as the pyneuro kernels' recurrent products do (torch leaves cuDNN's TF32 on by default, which
    multiplies in 10-bit mantissas); that default is timed beside it as "torch.nn (cuDNN, TF32)"."""
    gates = {"lstm": 4, "gru": 3, "rnn": 1, "leaky": 1}[cell]

    def cases(device: torch.device, quick: bool):
        import pyneuro.nn as pnn
        from pyneuro.ops.rnn import leaky_sequence

        for T, B, I, H, dtype in _recurrent_shapes(device, quick):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(T, B, I, generator=g).to(device=device, dtype=dtype)
            modules, label = {}, "reference"
            if cell == "leaky":
                weights = [(torch.randn(*shape, generator=g) / H ** 0.5).to(device=device, dtype=dtype)
                           for shape in ((H, I), (H, H), (H,))]
                tau = torch.linspace(1.0, 16.0, H).to(device=device, dtype=dtype)
                u0 = torch.zeros(B, H, device=device, dtype=dtype)
                for backend in _backends_for("leaky", device):
                    params = [w.clone().requires_grad_() for w in weights]
                    modules[backend] = (lambda inp, b=backend, p=params, u0=u0, tau=tau: leaky_sequence(
                        inp, u0, *p, tau, backend=b), params)
            else:
                label = "torch.nn (cuDNN)" if device.type == "cuda" else "torch.nn"
                theirs = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](I, H)
                theirs = theirs.to(device=device, dtype=dtype)
                modules[label] = (theirs, list(theirs.parameters()))
                ours_cls = {"lstm": pnn.LSTM, "gru": pnn.GRU, "rnn": pnn.RNN}[cell]
                for backend in _backends_for(cell, device):
                    if backend == "reference" and T * B * H > 4_000_000:
                        continue  # a Python loop over 512 steps says nothing new
                    m = ours_cls(I, H, backend=backend).to(device=device, dtype=dtype)
                    m.load_state_dict(theirs.state_dict())
                    modules[backend] = (m, list(m.parameters()))
            if "cuda" in modules:
                # The CUDA backend's per-step path on its own, to show what the persistent kernel buys.
                modules["cuda-stepwise"] = modules["cuda"]
            tf32_row = cell != "leaky" and device.type == "cuda" and dtype == torch.float32
            if tf32_row:
                modules["torch.nn (cuDNN, TF32)"] = modules[label]
            for mode in ("fwd", "fwd+bwd"):
                xs = x.clone().requires_grad_(mode != "fwd")
                contenders = {}
                for name, (fn, params) in modules.items():
                    if mode == "fwd":
                        contenders[name] = lambda fn=fn, x=x: torch.no_grad()(fn)(x)
                    else:
                        contenders[name] = _fwd_bwd(lambda fn=fn, xs=xs: fn(xs)[0], [xs, *params])
                    if name == "cuda-stepwise":
                        contenders[name] = _with_env("PYNEURO_CUDA_RNN_PATH", "stepwise", contenders[name])
                    if tf32_row and name in (label, "torch.nn (cuDNN, TF32)"):
                        contenders[name] = _with_cudnn_tf32(name != label, contenders[name])
                # Forward: the input and the recurrent GEMM of every step; the backward does twice
                # that (dx + dh, and dW_ih + dW_hh).
                flops = 2 * T * B * (I + H) * gates * H * (1 if mode == "fwd" else 3)
                yield {"op": cell, "mode": mode, "dtype": str(dtype).replace("torch.", ""),
                       "shape": {"T": T, "B": B, "I": I, "H": H}, "baseline": label, "contenders": contenders,
                       "flops": flops}

    return cases


# ----------------------------------------------------------------------------- batch norm + ReLU + pool
def batch_norm_relu_cases(device: torch.device, quick: bool):
    """The MNIST CNN's conv-block epilogues (BN + ReLU + 2x2 max-pool after its two conv blocks'
    last convs), channels_last fp32 activations in training. The baseline is what a user would
    otherwise run: F.max_pool2d(F.relu(F.batch_norm(...)), 2) in the same layout, which is the
    reference backend."""
    from pyneuro.ops import batch_norm_relu

    shapes = [(8, 24, 28, 28, 2)] if quick else [(128, 24, 28, 28, 2), (128, 32, 14, 14, 2)]
    for N, C, H, W, pool in shapes:
        g = torch.Generator(device="cpu").manual_seed(0)
        x = (torch.randn(N, C, H, W, generator=g) * 1.5 + 0.3).to(device).contiguous(memory_format=torch.channels_last)
        weight = (torch.rand(C, generator=g) + 0.5).to(device)
        bias = (torch.randn(C, generator=g) * 0.1).to(device)
        E = N * C * H * W
        # The kernels' traffic (docs/batch_norm_contract.md), fp32: forward 4E bytes for the
        # statistics, 4E + 4E/pool^2 for the output; backward 4E + 4E/pool^2 for the sums, 8E +
        # 4E/pool^2 for dx.
        fwd = 4 * E + 4 * E + 4 * E // pool ** 2
        bwd = 4 * E + 4 * E // pool ** 2 + 8 * E + 4 * E // pool ** 2
        traffic = {"fwd": fwd, "fwd+bwd": fwd + bwd}
        for mode in ("fwd", "fwd+bwd"):
            contenders = {}
            for backend in _backends_for("batch_norm_relu", device):
                # Each contender updates its own running statistics, as a training step does.
                rm, rv = torch.zeros(C, device=device), torch.ones(C, device=device)
                if mode == "fwd":
                    contenders[backend] = (lambda b=backend, rm=rm, rv=rv, x=x, w=weight, bias=bias, pool=pool:
                                           torch.no_grad()(batch_norm_relu)(x, rm, rv, w, bias, True, 0.1, 1e-5,
                                                                            pool, backend=b))
                else:
                    leaves = [t.detach().clone().requires_grad_() for t in (x, weight, bias)]  # x stays channels_last
                    contenders[backend] = _fwd_bwd(
                        lambda b=backend, lv=leaves, rm=rm, rv=rv, pool=pool: batch_norm_relu(
                            lv[0], rm, rv, lv[1], lv[2], True, 0.1, 1e-5, pool, backend=b),
                        leaves)
            yield {"op": "batch_norm_relu", "mode": mode, "dtype": "float32",
                   "shape": {"N": N, "C": C, "H": H, "W": W, "pool": pool, "layout": "channels_last"},
                   "baseline": "reference", "contenders": contenders, "bytes": traffic[mode]}


# ----------------------------------------------------------------------------- residual add + layer norm
def add_layer_norm_cases(device: torch.device, quick: bool):
    """A transformer block's residual add and the layer norm after it, with gradients through both
    outputs (out and the residual stream total), at the MNIST transformer's rows (256 x 17 tokens of
    96 features). Baseline: torch's add then F.layer_norm, which is the reference backend."""
    from pyneuro.ops import add_layer_norm

    shapes = [(8, 17, 96)] if quick else [(256, 17, 96), (64, 50, 96)]
    for shape in shapes:
        g = torch.Generator(device="cpu").manual_seed(0)
        x, residual, dout, dtotal = (torch.randn(*shape, generator=g).to(device) for _ in range(4))
        N = shape[-1]
        weight, bias = (torch.rand(N, generator=g) + 0.5).to(device), torch.randn(N, generator=g).to(device)
        E = x.numel()
        # The kernels' traffic, fp32: forward reads x, residual and writes total, out (16E bytes);
        # backward reads dout, dtotal, total and writes dx (16E).
        traffic = {"fwd": 16 * E, "fwd+bwd": 32 * E}
        for mode in ("fwd", "fwd+bwd"):
            contenders = {}
            for backend in _backends_for("add_layer_norm", device):
                if mode == "fwd":
                    contenders[backend] = (lambda b=backend, a=(x, residual, weight, bias): torch.no_grad()(
                        add_layer_norm)(*a, backend=b))
                    continue
                leaves = [t.clone().requires_grad_() for t in (x, residual, weight, bias)]

                def run(b=backend, lv=leaves, grads=(dout, dtotal)):
                    for t in lv:
                        t.grad = None
                    out, total = add_layer_norm(*lv, backend=b)
                    torch.autograd.backward((out, total), grads)
                contenders[backend] = run
            yield {"op": "add_layer_norm", "mode": mode, "dtype": "float32",
                   "shape": dict(zip(("B", "L", "N"), shape)), "baseline": "reference",
                   "contenders": contenders, "bytes": traffic[mode]}


# ----------------------------------------------------------------------------- linear bias + GELU
def bias_gelu_cases(device: torch.device, quick: bool):
    """A transformer MLP's first linear layer and its exact GELU, with gradients for the input, the
    weight and the bias, at the MNIST transformer's rows (256 x 17 tokens, 96 -> 192 features).
    Baseline: torch, F.gelu(F.linear(h, W, b)) (addmm broadcasts b into the GEMM's output first).
    Contenders: F.linear(h, W) without the bias, then bias_gelu(·, b) on each backend. The GEMMs are
    the same in both and timed with them, as they run in a model."""
    import torch.nn.functional as F

    from pyneuro.ops import bias_gelu

    shapes = [(8, 17, 96, 192)] if quick else [(256, 17, 96, 192), (64, 50, 96, 192)]
    for B, L, K, N in shapes:
        g = torch.Generator(device="cpu").manual_seed(0)
        h = torch.randn(B, L, K, generator=g).to(device)
        weight = (torch.randn(N, K, generator=g) / K ** 0.5).to(device)
        bias = torch.randn(N, generator=g).to(device)
        E = B * L * N
        # The pointwise part's traffic, fp32: forward reads the GEMM's output and writes out (8E bytes);
        # backward reads dout and the saved GEMM output and writes dx (12E).
        traffic = {"fwd": 8 * E, "fwd+bwd": 20 * E}
        layers = {"torch": lambda h, w, b: F.gelu(F.linear(h, w, b))}
        for backend in _backends_for("bias_gelu", device):
            layers[backend] = lambda h, w, b, backend=backend: bias_gelu(F.linear(h, w), b, backend=backend)
        for mode in ("fwd", "fwd+bwd"):
            contenders = {}
            for name, layer in layers.items():
                if mode == "fwd":
                    contenders[name] = (lambda f=layer, a=(h, weight, bias): torch.no_grad()(f)(*a))
                    continue
                leaves = [t.clone().requires_grad_() for t in (h, weight, bias)]
                contenders[name] = _fwd_bwd(lambda f=layer, lv=leaves: f(*lv), leaves)
            yield {"op": "bias_gelu", "mode": mode, "dtype": "float32", "shape": {"B": B, "L": L, "K": K, "N": N},
                   "baseline": "torch", "contenders": contenders, "bytes": traffic[mode]}


# ----------------------------------------------------------------------------- per-call cost
def call_overhead_cases(device: torch.device, quick: bool):
    """Each small op at a tiny shape, where its kernel does next to nothing: the time is what a call
    costs on its way there (argument checks, the backend choice, the dispatcher, autograd's node),
    the part that decides the speed of short-sequence models. Baseline: the torch call a user
    would make instead (SDPA; the add and F.layer_norm; the add and F.gelu). Contender: pyneuro's
    public function with backend "auto", as a model calls it."""
    import torch.nn.functional as F

    from pyneuro.ops import add_layer_norm, attention, bias_gelu

    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(1, 2, 4, 8, generator=g).to(device) for _ in range(3))
    x, residual = (torch.randn(4, 8, generator=g).to(device) for _ in range(2))
    weight, bias = torch.ones(8, device=device), torch.randn(8, generator=g).to(device)
    pairs = {
        "attention": ({"B": 1, "H": 2, "L": 4, "Dh": 8}, (q, k, v),
                      lambda q, k, v: F.scaled_dot_product_attention(q, k, v), attention),
        "add_layer_norm": ({"rows": 4, "N": 8}, (x, residual, weight, bias),
                           lambda x, r, w, b: F.layer_norm(x + r, (8,), w, b),
                           lambda x, r, w, b: add_layer_norm(x, r, w, b)[0]),
        "bias_gelu": ({"rows": 4, "N": 8}, (x, bias), lambda x, b: F.gelu(x + b), bias_gelu),
    }
    for op, (shape, inputs, torch_fn, ours) in pairs.items():
        for mode in ("fwd", "fwd+bwd"):
            contenders = {}
            for name, fn in (("torch", torch_fn), ("pyneuro", ours)):
                if mode == "fwd":
                    contenders[name] = (lambda f=torch.no_grad()(fn), a=inputs: f(*a))  # wrapped once, not per call
                else:
                    leaves = [t.clone().requires_grad_() for t in inputs]
                    contenders[name] = _fwd_bwd(lambda f=fn, lv=leaves: f(*lv), leaves)
            yield {"op": f"call_overhead/{op}", "mode": mode, "dtype": "float32", "shape": shape,
                   "baseline": "torch", "contenders": contenders}


CASES = {"selective_scan": scan_cases, "attention": attention_cases, "attention_qkvpacked": attention_qkvpacked_cases,
         **{cell: _recurrent_cell_cases(cell) for cell in ("lstm", "gru", "rnn", "leaky")},
         "batch_norm_relu": batch_norm_relu_cases, "add_layer_norm": add_layer_norm_cases,
         "bias_gelu": bias_gelu_cases, "call_overhead": call_overhead_cases}
