"""What makes Mamba selective: its step size Δ depends on the input, so per step and channel the
block decides how much of the new row to take in (large Δ) and how long to keep its state (small
Δ). Drawn for a few digits: Δ per channel over the rows, and the size of the SSM state h_t.

Neither is an output of the fused selective-scan kernels, so both are recomputed here in plain
PyTorch from the block's parameters, following pyneuro.nn.Mamba's data flow:

    x, z  = in_proj(u);   x = silu(causal depthwise conv1d(x))
    dt, B, C = x_proj(x); Δ = softplus(dt_proj(dt));   A = -exp(A_log)
    h_t   = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t x_t        (h_t: d_inner × d_state per step)
    y_t   = (<h_t, C_t> + D x_t) ⊙ silu(z_t);   out = out_proj(y)

The recomputed ``out`` equals the block's own output (tests/viz/test_model_pictures.py checks it).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.colors import LogNorm
from torch import nn

from .. import nn as pnn
from ..data import to_view
from .plots import _check_images, _digit_panel, _one_per_class, _save, plt  # plt: file-only Agg backend
from .recurrent import _model_view

__all__ = ["recompute_selective_scan", "plot_selectivity", "plots"]


def _mamba_blocks(model: nn.Module) -> list[pnn.Mamba]:
    blocks = [m for m in model.modules() if isinstance(m, pnn.Mamba)]
    if not blocks:
        raise ValueError("model: expected at least one pyneuro.nn.Mamba block inside, found 0")
    return blocks


@torch.no_grad()
def recompute_selective_scan(block: pnn.Mamba, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run ``block`` over ``hidden`` (batch, L, d_model) step by step from a zero state, keeping
    what the fused scan does not return. Returns "delta" (batch, L, d_inner), the step sizes after
    softplus; "state_norm" (batch, L, d_inner), ‖h_t‖ per channel over its d_state entries; and
    "out" (batch, L, d_model), the block's output."""
    if not isinstance(block, pnn.Mamba):
        raise ValueError(f"block: expected a pyneuro.nn.Mamba, got {type(block).__name__}")
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3 or hidden.shape[-1] != block.d_model:
        raise ValueError(f"hidden: expected (batch, L, d_model={block.d_model}), got "
                         f"{tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__}")
    steps = hidden.shape[1]
    x, z = block.in_proj(hidden).chunk(2, dim=-1)  # (batch, L, d_inner) each
    # The block's conv pads d_conv - 1 on both sides; the first L outputs are the causal ones.
    x = F.silu(block.conv1d(x.transpose(1, 2))[..., :steps]).transpose(1, 2)
    dt, B, C = block.x_proj(x).split([block.dt_rank, block.d_state, block.d_state], dim=-1)
    # The scan runs in fp32 whatever the block's dtype, as pyneuro.ops.scan does.
    delta = F.softplus(F.linear(dt.float(), block.dt_proj.weight.float(), block.dt_proj.bias.float()))
    A = -torch.exp(block.A_log.float())  # (d_inner, d_state)
    x32, B, C = x.float(), B.float(), C.float()
    state = x32.new_zeros(hidden.shape[0], block.d_inner, block.d_state)
    ys, norms = [], []
    for t in range(steps):
        state = torch.exp(delta[:, t, :, None] * A) * state + (delta[:, t] * x32[:, t])[..., None] * B[:, t, None, :]
        ys.append((state * C[:, t, None, :]).sum(-1))
        norms.append(state.norm(dim=-1))
    y = torch.stack(ys, dim=1) if steps else x32.new_zeros(x32.shape)
    y = (y + block.D.float() * x32) * F.silu(z.float())
    out = block.out_proj(y.to(hidden.dtype))
    state_norm = torch.stack(norms, dim=1) if steps else x32.new_zeros(x32.shape)
    return {"delta": delta, "state_norm": state_norm, "out": out}


@torch.no_grad()
def plot_selectivity(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, path, count: int = 4,
                     channels: int = 32, layer: int = 0, title: str = "mamba", view: str | None = None) -> Path:
    """For one test digit of each of the first ``count`` classes found (a row each): the digit with
    the model's prediction; Δ_t of the first ``channels`` channels of Mamba block ``layer``
    (channels × steps, log colour scale: where the block takes a row in versus keeps its memory);
    ‖h_t‖ of the same channels; and the whole state's norm ‖h_t‖ over the steps with the mean Δ_t.

    ``view``: how the model reads an image (None: the model's ``view`` attribute, else "rows").
    ``images`` uint8 (N, 28, 28), ``labels`` (N,). Written as a PNG at ``path``; returns the path.
    """
    blocks = _mamba_blocks(model)
    images = _check_images(images, labels)
    for name, value in (("count", count), ("channels", channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: must be a positive int, got {value!r}")
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(blocks):
        raise ValueError(f"layer: must be an int in [0, {len(blocks)}), got {layer!r}")
    block = blocks[layer]
    view = _model_view(model, view)
    picks = _one_per_class(labels, count)
    param = next(model.parameters())
    x = to_view(images[picks].to(param.device), view).to(param.dtype)

    # The block's input is what the layers before it made of the view: captured, not rebuilt.
    seen: list[torch.Tensor] = []
    handle = block.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    was_training = model.training
    model.eval()
    try:
        predictions = model(x).argmax(-1).cpu()
        if not seen:
            raise ValueError(f"model: its Mamba block {layer} did not run in the forward pass")
        trace = recompute_selective_scan(block, seen[0])
    finally:
        handle.remove()
        model.train(was_training)
    delta = trace["delta"][..., :channels].cpu()
    per_channel = trace["state_norm"][..., :channels].cpu()
    total = trace["state_norm"].pow(2).sum(-1).sqrt().cpu()  # ‖h_t‖ over every channel and state entry
    mean_delta = trace["delta"].mean(-1).cpu()
    steps, shown = delta.shape[1], delta.shape[2]
    step_name = {"rows": "row", "pixels": "step (pixel)"}.get(view, "step")
    extent = (0.5, steps + 0.5, shown - 0.5, -0.5)
    delta_scale = LogNorm(vmin=max(delta.min().item(), 1e-6), vmax=max(delta.max().item(), 2e-6))

    n = len(picks)
    fig, axes = plt.subplots(n, 4, figsize=(10.5, 1.6 * n + 1.3), squeeze=False, layout="constrained",
                             gridspec_kw={"width_ratios": [0.55, 1.0, 1.0, 1.0]})
    for r, index in enumerate(picks):
        _digit_panel(axes[r, 0], images[index], labels[index].item(), predictions[r].item())
        im_delta = axes[r, 1].imshow(delta[r].t().numpy(), aspect="auto", cmap="magma", norm=delta_scale,
                                     interpolation="nearest", extent=extent)
        im_norm = axes[r, 2].imshow(per_channel[r].t().numpy(), aspect="auto", cmap="viridis", vmin=0,
                                    vmax=max(per_channel.max().item(), 1e-6), interpolation="nearest", extent=extent)
        ax = axes[r, 3]
        ax.plot(range(1, steps + 1), total[r].numpy(), color="C0", lw=1.2)
        ax.set_ylim(0, max(total.max().item(), 1e-6) * 1.05)
        ax.set_ylabel("‖h_t‖", fontsize=8, color="C0")
        twin = ax.twinx()
        twin.plot(range(1, steps + 1), mean_delta[r].numpy(), color="C3", lw=1.0, ls="--")
        twin.set_ylabel("mean Δ_t", fontsize=8, color="C3")
        twin.tick_params(labelsize=7)
        ax.set_xlim(0.5, steps + 0.5)
        ax.grid(alpha=0.3)
        for j in (1, 2, 3):
            axes[r, j].tick_params(labelsize=7)
            if r == n - 1:
                axes[r, j].set_xlabel(step_name, fontsize=8)
        for j in (1, 2):
            axes[r, j].set_ylabel("channel", fontsize=8)
    axes[0, 1].set_title("step size Δ_t (softplus)", fontsize=8)
    axes[0, 2].set_title("state norm ‖h_t‖ per channel", fontsize=8)
    axes[0, 3].set_title("whole state ‖h_t‖ and mean Δ_t", fontsize=8)
    fig.colorbar(im_delta, ax=axes[:, 1].tolist(), location="bottom", shrink=0.8, aspect=25, label="Δ")
    fig.colorbar(im_norm, ax=axes[:, 2].tolist(), location="bottom", shrink=0.8, aspect=25, label="‖h_t‖")
    fig.suptitle(f"{title}: selectivity of Mamba block {layer + 1} of {len(blocks)} (first {shown} of "
                 f"{block.d_inner} channels, d_state {block.d_state})", fontsize=9)
    return _save(fig, Path(path), tight_layout=False)


def plots(model, images, labels, out_dir, title: str = "mamba", view: str | None = None) -> list[Path]:
    """The Mamba model's own pictures after a run (the model registry's ``plots`` hook): selectivity.png."""
    return [plot_selectivity(model, images, labels, Path(out_dir) / "selectivity.png", title=title, view=view)]
