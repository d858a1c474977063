"""How an RNN, LSTM or GRU reads a digit: its first layer's hidden state and gates at every step.

The gates are not outputs of the fused recurrent kernels, so they are recomputed here in plain
PyTorch from the layer's own weights, with torch.nn's equations and gate order:

    LSTM  i, f, g, o = split(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)        (σ, σ, tanh, σ)
          c_t = f ⊙ c_{t-1} + i ⊙ g,   h_t = o ⊙ tanh(c_t)   (then W_hr h_t with proj_size)
    GRU   r, z = σ(W_i{r,z} x_t + b_i{r,z} + W_h{r,z} h_{t-1} + b_h{r,z})
          n = tanh(W_in x_t + b_in + r ⊙ (W_hn h_{t-1} + b_hn)),   h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}
    RNN   h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)   (or relu)

The recomputed h_t equals the layer's own output (tests/viz/test_model_pictures.py checks it), so
the gates drawn are the ones the model used.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .. import nn as pnn
from ..data import to_view
from .plots import _check_images, _digit_panel, _one_per_class, _save, plt  # plt: file-only Agg backend

__all__ = ["recompute_gates", "plot_gates", "plots"]

_KINDS = ((pnn.LSTM, "lstm"), (nn.LSTM, "lstm"), (pnn.GRU, "gru"), (nn.GRU, "gru"), (pnn.RNN, "rnn"), (nn.RNN, "rnn"))

# What is drawn per cell kind: (key of recompute_gates' result, panel title, bounded to [0, 1]).
_PANELS = {
    "lstm": (("h", "hidden state h", False), ("c", "cell c", False), ("i", "input gate i", True),
             ("f", "forget gate f", True), ("o", "output gate o", True)),
    "gru": (("h", "hidden state h", False), ("r", "reset gate r", True), ("z", "update gate z", True)),
    "rnn": (("h", "hidden state h", False),),
}


def _kind(layer: nn.Module) -> str | None:
    return next((kind for cls, kind in _KINDS if isinstance(layer, cls)), None)


def _recurrent_layer(model: nn.Module) -> nn.Module:
    """The model's first LSTM/GRU/RNN layer (pyneuro.nn's or torch.nn's)."""
    for module in model.modules():
        if _kind(module) is not None:
            return module
    raise ValueError("model: expected an LSTM, GRU or RNN layer (pyneuro.nn or torch.nn) inside, found none")


@torch.no_grad()
def recompute_gates(layer: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The first layer's (forward direction's) states and gates over the sequence ``x``, from a
    zero initial state, recomputed from ``layer``'s weights.

    ``x`` is what the layer takes: 3-D, (batch, T, input_size) if ``layer.batch_first`` else
    (T, batch, input_size). Returns batch-first (batch, T, width) tensors: for an LSTM "h", "c",
    "i", "f", "g", "o"; for a GRU "h", "r", "z", "n"; for an RNN "h". "h" equals the layer's own
    output for a one-layer, one-direction layer.
    """
    kind = _kind(layer)
    if kind is None:
        raise ValueError(f"layer: expected an LSTM, GRU or RNN, got {type(layer).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != layer.input_size:
        raise ValueError(f"x: expected a 3-D tensor with input_size={layer.input_size} features last, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not layer.batch_first:
        x = x.transpose(0, 1)
    w_ih, w_hh = layer.weight_ih_l0, layer.weight_hh_l0
    x = x.to(w_ih.dtype)
    zeros = w_ih.new_zeros(w_ih.shape[0])
    b_ih = layer.bias_ih_l0 if layer.bias else zeros
    b_hh = layer.bias_hh_l0 if layer.bias else zeros
    w_hr = getattr(layer, "weight_hr_l0", None) if getattr(layer, "proj_size", 0) else None
    batch, steps = x.shape[:2]
    if steps == 0:
        raise ValueError("x: the sequence is empty (0 steps)")
    hidden = layer.hidden_size
    # The input's share of every gate at every step in one product; only the recurrence is a loop.
    from_input = x @ w_ih.t() + b_ih
    h = x.new_zeros(batch, w_hh.shape[1])  # hidden_size, or proj_size when the LSTM projects
    c = x.new_zeros(batch, hidden)
    trace: dict[str, list[torch.Tensor]] = {}
    for t in range(steps):
        from_state = h @ w_hh.t() + b_hh
        if kind == "lstm":
            i, f, g, o = (from_input[:, t] + from_state).chunk(4, dim=-1)
            i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
            c = f * c + i * g
            h = o * torch.tanh(c)
            if w_hr is not None:
                h = h @ w_hr.t()
            step = {"h": h, "c": c, "i": i, "f": f, "g": g, "o": o}
        elif kind == "gru":
            x_r, x_z, x_n = from_input[:, t].chunk(3, dim=-1)
            h_r, h_z, h_n = from_state.chunk(3, dim=-1)
            r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
            n = torch.tanh(x_n + r * h_n)  # the reset gate scales the state's term, bias included
            h = (1 - z) * n + z * h
            step = {"h": h, "r": r, "z": z, "n": n}
        else:
            pre = from_input[:, t] + from_state
            h = torch.relu(pre) if getattr(layer, "nonlinearity", "tanh") == "relu" else torch.tanh(pre)
            step = {"h": h}
        for name, value in step.items():
            trace.setdefault(name, []).append(value)
    return {name: torch.stack(values, dim=1) for name, values in trace.items()}


def _model_view(model: nn.Module, view: str | None) -> str:
    if view is not None:
        return view
    return next((m.view for m in model.modules() if isinstance(getattr(m, "view", None), str)), "rows")


@torch.no_grad()
def plot_gates(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, path, count: int = 4, units: int = 32,
               title: str = "rnn", view: str | None = None) -> Path:
    """For one test digit of each of the first ``count`` classes found (a row each): the digit with
    the model's prediction, then heat maps (units × steps, the first ``units`` units) of the first
    layer's hidden state h_t and, for an LSTM, its cell c_t and input/forget/output gates, for a
    GRU its reset and update gates. Shows when the network takes in a row (input gate open, update
    gate low) and when it holds on to what it has (forget gate near 1).

    ``view``: how the model reads an image ("rows" or "pixels"; None: the model's ``view``
    attribute, else "rows"). ``images`` uint8 (N, 28, 28), ``labels`` (N,). Written as a PNG at
    ``path``; returns the path.
    """
    layer = _recurrent_layer(model)
    images = _check_images(images, labels)
    for name, value in (("count", count), ("units", units)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: must be a positive int, got {value!r}")
    view = _model_view(model, view)
    if view not in ("rows", "pixels"):
        raise ValueError(f"view: must be 'rows' or 'pixels' for a recurrent model, got {view!r}")
    picks = _one_per_class(labels, count)
    param = next(model.parameters())
    chosen = images[picks]
    x = to_view(chosen.to(param.device), view).to(param.dtype)

    # The layer's input as the model feeds it (the model may transform the view first).
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    was_training = model.training
    model.eval()
    try:
        predictions = model(x).argmax(-1).cpu()
    finally:
        handle.remove()
        model.train(was_training)
    trace = recompute_gates(layer, seen[0] if seen else x)
    kind = _kind(layer)
    panels = _PANELS[kind]
    steps = trace["h"].shape[1]
    step_name = "row" if view == "rows" else "step (pixel)"

    n, cols = len(picks), 1 + len(panels)
    fig, axes = plt.subplots(n, cols, figsize=(1.3 + 2.2 * len(panels), 1.5 * n + 1.2), squeeze=False,
                             layout="constrained", gridspec_kw={"width_ratios": [0.55] + [1.0] * len(panels)})
    for r, index in enumerate(picks):
        _digit_panel(axes[r, 0], images[index], labels[index].item(), predictions[r].item())
    for j, (key, name, gate) in enumerate(panels, start=1):
        values = trace[key][..., :units].float().cpu()  # (n, T, shown units)
        shown = values.shape[-1]
        if gate:  # sigmoid gates: 0 = closed, 1 = open
            cmap, vmin, vmax = "viridis", 0.0, 1.0
        else:  # states are signed: diverging around 0, one scale per quantity across the digits
            limit = max(values.abs().max().item(), 1e-6)
            cmap, vmin, vmax = "RdBu_r", -limit, limit
        for r in range(n):
            ax = axes[r, j]
            im = ax.imshow(values[r].t().numpy(), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax,
                           interpolation="nearest" if steps <= 100 else "antialiased",
                           extent=(0.5, steps + 0.5, shown - 0.5, -0.5))
            ax.tick_params(labelsize=7)
            if r == 0:
                ax.set_title(name, fontsize=8)
            if j == 1:
                ax.set_ylabel("unit", fontsize=8)
            if r == n - 1:
                ax.set_xlabel(step_name, fontsize=8)
        fig.colorbar(im, ax=axes[:, j].tolist(), location="bottom", shrink=0.8, aspect=25,
                     label="0 closed … 1 open" if gate else key)
    direction = ", forward direction" if getattr(layer, "bidirectional", False) else ""
    fig.suptitle(f"{title}: first layer{direction}, first {min(units, trace['h'].shape[-1])} units over "
                 f"the {steps} {'rows' if view == 'rows' else 'pixels'}", fontsize=9)
    return _save(fig, Path(path), tight_layout=False)


def plots(model, images, labels, out_dir, title: str = "rnn", view: str | None = None) -> list[Path]:
    """The recurrent model's own pictures after a run (the model registry's ``plots`` hook): gates.png."""
    return [plot_gates(model, images, labels, Path(out_dir) / "gates.png", title=title, view=view)]
