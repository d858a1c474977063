"""Training throughput of every MNIST model: pyneuro's layers against the same model on stock
torch.nn layers (``python -m benchmarks --mnist``, ``pyneuro bench --mnist``).

The stock twin is the same network with each pyneuro layer swapped for its torch.nn counterpart
(LSTM, GRU, RNN, TransformerEncoderLayer, MultiheadAttention; BatchNormReLU2d becomes BatchNorm2d + ReLU
+ MaxPool2d), weights copied, so both compute the same function. A layer
torch.nn lacks (Mamba) runs its pure-PyTorch reference instead, and the row says so. One step is
forward, backward and an AdamW update on one batch; the variants are timed step by step in
rounds (pyneuro, torch.nn, torch.nn with subnormals flushed, each after an untimed settling step)
so that a slow spell of the machine lands on all of them alike, and the median step counts.

On the CPU the twin is timed twice: as it comes, and with subnormal floats flushed
(``torch.set_flush_denormal(True)`` around its steps only). On long sequences (the pixels view) a
fading gradient turns subnormal and x86 takes a microcode assist on each operation on one, which
slows torch.nn's oneDNN layers several times over; pyneuro's CPU kernels flush on their own
threads. A user who knows can flush too, so the speedup is taken against the faster of the two.

The transformer reads only its class token, and pyneuro's model runs its last layer on that token
alone (pyneuro.nn.run_layers ``rows``); a model on torch.nn.TransformerEncoderLayer cannot. So its
row also times the pyneuro model with the last layer on every token (``pyneuro_all_rows``), in the
same rounds: the speedup of the layers themselves, apart from the work skipped.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from .timing import time_interleaved


def stock_twin(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` on torch.nn layers; also the notes on what had no torch.nn counterpart."""
    from .. import nn as pnn

    twin, notes, replaced = copy.deepcopy(model), [], []
    recurrent = {pnn.LSTM: nn.LSTM, pnn.GRU: nn.GRU, pnn.RNN: nn.RNN}
    for name, module in list(twin.named_modules()):
        stock = state_holder = None
        if type(module) in recurrent:
            extra = {"proj_size": module.proj_size} if type(module) is pnn.LSTM else {}
            if type(module) is pnn.RNN:
                extra = {"nonlinearity": getattr(module, "nonlinearity", "tanh")}
            stock = recurrent[type(module)](module.input_size, module.hidden_size, module.num_layers,
                                            bias=module.bias, batch_first=module.batch_first, dropout=module.dropout,
                                            bidirectional=module.bidirectional, **extra)
        elif isinstance(module, pnn.TransformerEncoderLayer):
            # The whole layer, as a user would write it with torch.nn (attention dropout = dropout there).
            attn = module.self_attn
            stock = nn.TransformerEncoderLayer(attn.embed_dim, attn.num_heads, module.linear1.out_features,
                                               module.dropout.p, activation=module.activation,
                                               layer_norm_eps=module.norm1.eps, batch_first=attn.batch_first,
                                               norm_first=module.norm_first, bias=attn.in_proj_bias is not None)
            if attn.dropout != module.dropout.p:
                notes.append("TransformerEncoderLayer: torch.nn's uses one dropout for attention and residuals")
        elif isinstance(module, pnn.MultiheadAttention):
            stock = nn.MultiheadAttention(module.embed_dim, module.num_heads, dropout=module.dropout,
                                          bias=module.in_proj_bias is not None, batch_first=module.batch_first)
        elif isinstance(module, pnn.BatchNormReLU2d):
            # torch.nn's three layers; the state_dict goes into the BatchNorm2d.
            state_holder = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                          module.track_running_stats)
            stock = nn.Sequential(state_holder, nn.ReLU(inplace=True),
                                  *([nn.MaxPool2d(2)] if module.pool == 2 else []))
        elif hasattr(module, "backend") and module is not twin and not name.endswith("self_attn"):
            module.backend = "reference"
            notes.append(f"{type(module).__name__}: no torch.nn layer, pure-PyTorch reference")
            continue
        if stock is None or any(name.startswith(done + ".") for done in replaced):
            continue
        replaced.append(name)
        (state_holder or stock).load_state_dict(module.state_dict())
        parent_name, _, child = name.rpartition(".")
        setattr(twin.get_submodule(parent_name) if parent_name else twin, child, stock)
    return twin, sorted(set(notes))


def _flushing_subnormals() -> bool:
    """Whether this thread flushes subnormal floats now (a subnormal product comes out 0)."""
    return (torch.tensor([1e-39]) * torch.tensor([1.0])).item() == 0.0


def training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """One training step of ``model`` on (x, y) as a callable: forward, cross-entropy, backward and
    an AdamW update (its own optimizer; fused where torch has it, as `pyneuro train` makes it)."""
    from ..train.loop import fused_update

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused_update(model.parameters()) or None)

    def step():
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


@contextlib.contextmanager
def _subnormals_flushed():
    """Subnormal floats flushed on this thread inside the block, the caller's mode restored after;
    yields False where the CPU cannot flush (torch.set_flush_denormal's answer)."""
    caller_flushes = _flushing_subnormals()  # torch has a setter only
    try:
        yield torch.set_flush_denormal(True)
    finally:
        torch.set_flush_denormal(caller_flushes)


def _with_subnormals_flushed(step):
    """``step`` run with subnormal floats flushed (see _subnormals_flushed)."""
    def flushed():
        with _subnormals_flushed():
            step()

    return flushed


def _can_flush_subnormals() -> bool:
    with _subnormals_flushed() as can:
        return can


def run(models: list[str], device: torch.device, batch_size: int, steps: int, view: str | None = None,
        channels_last: bool = True, retain_memory: bool = True) -> list[dict]:
    """``view``: read the images this way instead of each model's default (the recurrent models'
    "pixels": 784 steps of one pixel), for the models that take it as a hyper-parameter.
    ``retain_memory``: first call pyneuro.retain_freed_memory(), as `pyneuro train` does (it is
    process-wide, so every variant runs with it; it cannot be undone within the process)."""
    from ..data import to_view
    from ..models import registry
    from ..runtime import retain_freed_memory

    retained = retain_freed_memory() if retain_memory else False

    rows = []
    images = torch.randint(0, 256, (batch_size, 28, 28), dtype=torch.uint8, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    for name in models:
        spec = registry.get(name)
        torch.manual_seed(0)
        overrides = {"view": view} if view is not None else {}
        model = spec.build(**overrides).to(device)
        x = to_view(images, view or spec.view)
        twin, notes = stock_twin(model)
        twin = twin.to(device)
        layout = "nchw"
        if channels_last and x.dim() == 4:  # image models train in NHWC (train.channels_last): both do here
            model, twin = (m.to(memory_format=torch.channels_last) for m in (model, twin))
            x, layout = x.contiguous(memory_format=torch.channels_last), "channels_last"
        steps_of = {"pyneuro": training_step(model, x, y), "torch_nn": training_step(twin, x, y)}
        if getattr(model, "class_token_only_last_layer", False):
            # The same pyneuro model with its last layer over every token, as the twin must run it:
            # what the layers' kernels alone give, apart from skipping the rows nothing reads.
            all_rows = copy.deepcopy(model)
            all_rows.class_token_only_last_layer = False
            steps_of["pyneuro_all_rows"] = training_step(all_rows, x, y)
        if device.type == "cpu" and _can_flush_subnormals():
            steps_of["torch_nn_flush_denormal"] = _with_subnormals_flushed(
                training_step(copy.deepcopy(twin), x, y))
        # Round-robin, each variant settled by an untimed step before its timed one (time_interleaved).
        timed = time_interleaved(steps_of, device, warmup=3, repeats=steps)
        row = {"model": name, "view": view or spec.view, "layout": layout, "batch_size": batch_size,
               "device": str(device), "retain_freed_memory": retained, "notes": notes}
        for label, t in timed.items():
            if "error" in t:
                raise RuntimeError(f"{name} ({label}): {t['error']}")
            row[f"{label}_samples_per_s"] = batch_size / t["median_s"]
        baseline = row["torch_nn_samples_per_s"]
        flushed = ""
        if "torch_nn_flush_denormal_samples_per_s" in row:
            baseline = max(baseline, row["torch_nn_flush_denormal_samples_per_s"])
            flushed = f"  +flush {row['torch_nn_flush_denormal_samples_per_s']:8,.0f}"
        row["speedup"] = row["pyneuro_samples_per_s"] / baseline
        all_rows = ""
        if "pyneuro_all_rows_samples_per_s" in row:
            row["speedup_all_rows"] = row["pyneuro_all_rows_samples_per_s"] / baseline
            all_rows = (f"  (last layer on every token: {row['pyneuro_all_rows_samples_per_s']:,.0f} samples/s, "
                        f"{row['speedup_all_rows']:.2f}x)")
        rows.append(row)
        note = f"  ({'; '.join(notes)})" if notes else ""
        print(f"{name:<12} pyneuro {row['pyneuro_samples_per_s']:10,.0f}  torch.nn {row['torch_nn_samples_per_s']:10,.0f}"
              f"{flushed}  samples/s  {row['speedup']:5.2f}x{all_rows}{note}", flush=True)
    return rows


def main(argv=None, prog: str = "pyneuro bench --mnist") -> int:
    from ..models import registry

    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    classifiers = registry.names(task="classify")  # the benchmark times cross-entropy training steps
    p.add_argument("--models", default=",".join(classifiers), help="comma-separated subset")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="timed training steps per model and variant (rounds)")
    p.add_argument("--view", help="read the images this way (e.g. pixels: 784 steps of one pixel) in every chosen "
                                  "model; only models with a 'view' hyper-parameter take it")
    p.add_argument("--nchw", action="store_true", help="image models in NCHW layout (default: channels_last, "
                                                       "as train.channels_last trains them; for both variants)")
    p.add_argument("--no-retain-freed-memory", action="store_true",
                   help="leave glibc's malloc as it is (default: keep freed memory for reuse, as `pyneuro train` "
                        "does, for every variant; see pyneuro/runtime.py)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(classifiers))
    if unknown:
        p.error(f"--models: unknown {unknown}; choose from the classifiers {classifiers}")
    if args.view is not None:
        fixed = [m for m in models if "view" not in registry.get(m).defaults]
        if fixed:
            p.error(f"--view: {fixed} read MNIST one way only; choose among "
                    f"{[m for m in classifiers if 'view' in registry.get(m).defaults]}")
    if args.batch_size < 1 or args.steps < 1:
        p.error("--batch-size and --steps must be positive")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA GPU here")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    view = f", view {args.view}" if args.view else ""
    memory = "" if args.no_retain_freed_memory else ", freed memory retained"
    print(f"MNIST training throughput on {device}, batch {args.batch_size}, {args.steps} steps{view} "
          f"(forward + backward + AdamW{memory})")
    rows = run(models, device, args.batch_size, args.steps, view=args.view, channels_last=not args.nchw,
               retain_memory=not args.no_retain_freed_memory)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
        print(f"wrote {args.json}")
    return 0
