"""The architecture figure of a model, drawn from the model itself: one box per layer in the order
the forward pass calls them, with what the layer is, its parameter count and the shape it returns.

The layers are found by running two blank images through the model with forward hooks, so the
figure shows what the code does, not what a hand-drawn diagram claims: containers
(``nn.Sequential``, ``nn.ModuleList``) are opened, every other module is one box. A stretch of
boxes that repeats (four identical encoder layers, or a norm and a block four times over) is drawn
once with its repeat count, and a layer called at every time step (PV-RNN's cells) once with its
call count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .plots import _save, plt

__all__ = ["LayerCall", "trace_calls", "trace_layers", "plot_architecture"]

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass
class LayerCall:
    name: str          # dotted path inside the model, e.g. "features.0"
    kind: str          # the module's class name
    detail: str        # its extra_repr, shortened
    params: int        # its own parameters (with its children's)
    out_shape: str     # the shape of its first tensor output, batch included
    calls: int = 1     # how often one forward pass calls it (per-step cells call it once per step)
    repeat: int = 1    # how many consecutive copies this box stands for
    group: int = -1    # boxes of one repeated stretch share its index

    def signature(self) -> tuple:
        return (self.kind, self.detail, self.params, self.out_shape, self.calls)


def _layers(model: nn.Module, prefix: str = ""):
    """The modules that get a box: children, with containers opened recursively."""
    for name, child in model.named_children():
        path = f"{prefix}{name}"
        if isinstance(child, _CONTAINERS):
            yield from _layers(child, path + ".")
        else:
            yield path, child


def _boxes(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every box; a model without submodules is one box: itself."""
    return list(_layers(model)) or [(type(model).__name__, model)]


def _shape_of(output) -> str:
    while isinstance(output, (tuple, list)) and output:
        output = output[0]
    if isinstance(output, torch.Tensor):
        return "(" + ", ".join(str(s) for s in output.shape) + ")"
    return type(output).__name__


def _short(text: str, width: int = 56) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _describe(module: nn.Module) -> str:
    """The module's own summary (extra_repr), or else what it is made of."""
    own = module.extra_repr()
    if own:
        return _short(own)
    parts = [f"{name}: {type(child).__name__}" for name, child in module.named_children()]
    return _short(", ".join(parts))


def loose_parameters(model: nn.Module) -> list[tuple[str, tuple]]:
    """Parameters held outside every box (a class token, a positional table): (name, shape)."""
    boxed = {id(p) for _, module in _boxes(model) for p in module.parameters()}
    return [(name, tuple(p.shape)) for name, p in model.named_parameters() if id(p) not in boxed]


@torch.no_grad()
def trace_calls(model: nn.Module, example) -> list[LayerCall]:
    """Run ``model(example)`` once (eval mode, no gradients, the caller's RNG state kept) and return
    every call of a layer, in order. ``example``: the model's input batch."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    calls: list[LayerCall] = []
    handles = []
    for path, module in _boxes(model):
        def hook(mod, args, output, path=path):
            calls.append(LayerCall(path, type(mod).__name__, _describe(mod),
                                   sum(p.numel() for p in mod.parameters()), _shape_of(output)))
        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    devices = [example.device] if isinstance(example, torch.Tensor) and example.is_cuda else []
    try:
        with torch.random.fork_rng(devices=devices):  # sampling models draw numbers even in eval mode
            model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return calls


def trace_layers(model: nn.Module, example, longest_sequence: int = 200) -> list[LayerCall]:
    """The boxes to draw. A pass of at most ``longest_sequence`` layer calls is drawn call by call,
    repeated stretches collapsed (a dropout module shared by four blocks appears in each); a longer
    one (a cell called at every time step) as each layer once, in the order of first calls, with
    its call count."""
    calls = trace_calls(model, example)
    if len(calls) <= longest_sequence:
        return _collapse_repeats(calls)
    first: dict[str, LayerCall] = {}
    for call in calls:
        if call.name in first:
            first[call.name].calls += 1
        else:
            first[call.name] = call
    return list(first.values())


def _collapse_repeats(layers: list[LayerCall], longest_period: int = 6) -> list[LayerCall]:
    """Stretches that repeat back to back (period 1..longest_period) become one copy with a count."""
    keys = [l.signature() for l in layers]
    out: list[LayerCall] = []
    i = 0
    while i < len(layers):
        best_period, best_count = 1, 1
        for period in range(1, longest_period + 1):
            if i + 2 * period > len(layers):
                break
            count = 1
            while keys[i + count * period:i + (count + 1) * period] == keys[i:i + period]:
                count += 1
            if count > 1 and count * period > best_count * best_period:
                best_period, best_count = period, count
        for k, layer in enumerate(layers[i:i + best_period]):
            last = layers[i + (best_count - 1) * best_period + k]
            name = layer.name if last.name == layer.name else f"{layer.name} … {last.name}"
            out.append(LayerCall(**{**layer.__dict__, "name": name, "repeat": best_count, "group": i}))
        i += best_period * best_count
    return out


def plot_architecture(model: nn.Module, example, path, title: str = "", input_note: str = "") -> Path:
    """Draw the traced layers as a column of boxes joined by arrows, from the input at the top to
    the output at the bottom. Boxes with parameters are filled; parameter-free layers (activations,
    dropout, reshapes) are drawn smaller and grey. A repeated stretch gets a bracket with "× n".
    ``input_note``: how the model reads the digit (e.g. "28 rows of 28 pixels")."""
    layers = trace_layers(model, example)
    if not layers:
        raise ValueError("model: its forward pass called no submodule, nothing to draw")
    in_shape = _shape_of(example)
    rows = len(layers) + 1
    extra = 0.5 if loose_parameters(model) else 0.0  # room for the line of loose parameters
    fig_height = 0.9 + 0.46 * (rows + extra)
    fig, ax = plt.subplots(figsize=(7.6, fig_height))
    ax.set_xlim(0, 10)
    ax.set_ylim(-rows + 0.4 - extra, 1.0)
    ax.axis("off")

    def box(y, text, sub, filled):
        face = "#dbe9f6" if filled else "#f2f2f2"
        edge = "#2c6fad" if filled else "#9a9a9a"
        ax.text(3.6, y, text, ha="center", va="center", fontsize=8.5 if filled else 7.5,
                bbox=dict(boxstyle="round,pad=0.35", fc=face, ec=edge, lw=1.0 if filled else 0.6),
                color="black" if filled else "#555555")
        if sub:
            ax.text(7.25, y, sub, ha="left", va="center", fontsize=7, color="#333333", family="monospace")

    box(0.4, f"input {in_shape}" + (f"\n{input_note}" if input_note else ""), "", True)
    loose = loose_parameters(model)
    if loose:  # parameters the model's forward uses itself, outside every layer
        listed = ", ".join(f"{name} {tuple(shape)}" for name, shape in loose)
        count = sum(math.prod(shape) for _, shape in loose)
        ax.text(3.6, 0.6 - (len(layers) + 1), f"parameters outside the layers: {_short(listed, 70)} ({count:,})",
                ha="center", va="center", fontsize=7.5, color="#333333")
    for row, layer in enumerate(layers, start=1):
        y = 0.4 - row
        ax.annotate("", xy=(3.6, y + 0.27), xytext=(3.6, y + 0.73),
                    arrowprops=dict(arrowstyle="->", color="#666666", lw=0.8))
        label = f"{layer.name}: {layer.kind}"
        if layer.detail:
            label += f"\n{layer.detail}"
        if layer.calls > 1:
            label += f"   (called {layer.calls}× per pass)"
        sub = f"{layer.out_shape}\n{layer.params:,} params" if layer.params else layer.out_shape
        box(y, label, sub, layer.params > 0)
        # A bracket with the count spans each repeated stretch.
        if layer.repeat > 1 and (row == 1 or layers[row - 2].group != layer.group):
            group_top = y
        if layer.repeat > 1 and (row == len(layers) or layers[row].group != layer.group):
            ax.plot([0.35, 0.25, 0.25, 0.35], [group_top + 0.3, group_top + 0.3, y - 0.3, y - 0.3],
                    color="#2c6fad", lw=1.0)
            ax.text(0.15, (group_top + y) / 2, f"× {layer.repeat}", ha="right", va="center", fontsize=9,
                    color="#2c6fad")
    total = sum(p.numel() for p in model.parameters())
    order = ("each layer once, in the order of its first call" if any(l.calls > 1 for l in layers)
             else "layers in the order the forward pass calls them")
    ax.set_title(f"{title}: {total:,} parameters — {order}", fontsize=9)
    ax.text(7.25, 0.4, "output shape (batch 2)\nparameters", ha="left", va="center", fontsize=7, color="#777777",
            family="monospace")
    ax.set_xlim(-0.6, 10)
    return _save(fig, Path(path))
