"""What an MTRNN's two timescales do: the fast and slow units' activity while it reads a few digits."""
from __future__ import annotations

from pathlib import Path

import torch

from ..data import to_view
from ..nn import MTRNN
from .plots import _one_per_class, plt  # plt: imported there with the file-only Agg backend

__all__ = ["plot_unit_activity"]


def _mtrnn_layer(model: torch.nn.Module) -> MTRNN:
    layers = [m for m in model.modules() if isinstance(m, MTRNN)]
    if len(layers) != 1:
        raise ValueError(f"model: expected exactly one pyneuro.nn.MTRNN layer inside, found {len(layers)}")
    return layers[0]


@torch.no_grad()
def plot_unit_activity(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, path,
                       count: int = 5, title: str = "mtrnn", view: str | None = None) -> Path:
    """Heat maps of every fast and every slow unit's activity h_t = tanh(u_t) over the steps.

    ``model`` holds one :class:`pyneuro.nn.MTRNN` (e.g. the ``mtrnn`` model, also wrapped in DDP or
    torch.compile); ``view`` is how it reads an image ("rows" or "pixels"; None: the ``view``
    attribute of the model or of the module inside it that has one, else "rows"). ``images`` are
    uint8 (N, 28, 28) and ``labels`` (N,), e.g. the test set; one digit of each of the first
    ``count`` classes found is drawn: the image with the model's prediction, the fast units
    (units x steps), the slow ones, and each group's mean change per step. Written as a PNG at
    ``path``; returns the path.
    """
    layer = _mtrnn_layer(model)
    if images.dim() == 4:
        images = images[:, 0]
    if images.dim() != 3 or len(images) != len(labels):
        raise ValueError(f"images: expected uint8 (N, 28, 28) with one label each, got {tuple(images.shape)} "
                         f"and {len(labels)} labels")
    picks = _one_per_class(labels, count)
    if not picks:
        raise ValueError("images: no image to draw")
    device = next(model.parameters()).device
    chosen = images[picks].to(device)
    if view is None:
        view = next((m.view for m in model.modules() if isinstance(getattr(m, "view", None), str)), "rows")

    captured = []
    hook = layer.register_forward_hook(lambda module, args, output: captured.append(output[0]))
    was_training = model.training
    model.eval()
    try:
        x = to_view(chosen, view).to(next(model.parameters()).dtype)
        preds = model(x).argmax(-1).cpu()
    finally:
        hook.remove()
        model.train(was_training)
    # A compiled model may run without calling the hook; the MTRNN then reads the input directly
    # (in the mtrnn model it is the first layer).
    h = (captured[0] if captured else layer(x)[0]).float().cpu()
    if not layer.batch_first:
        h = h.transpose(0, 1)
    fast, slow = layer.split(h)  # (n, T, units)
    steps = h.shape[1]

    n = len(picks)
    fig, axes = plt.subplots(4, n, figsize=(2.3 * n + 0.8, 8.4), squeeze=False,
                             gridspec_kw={"height_ratios": [1.0, 1.3, 1.0, 0.8]})
    groups = ((fast, layer.fast_tau, "fast", "C3"), (slow, layer.slow_tau, "slow", "C0"))
    unit = "row" if view == "rows" else "pixel"
    for j, i in enumerate(picks):
        ok = preds[j].item() == labels[i].item()
        ax = axes[0, j]
        ax.imshow(images[i].cpu().numpy(), cmap="gray_r")
        ax.set_title(f"digit {labels[i].item()}, predicted {preds[j].item()}", fontsize=8,
                     color="black" if ok else "red")
        ax.axis("off")
        for row, (group, tau, name, _) in enumerate(groups, start=1):
            ax = axes[row, j]
            # Units down, steps across, as the image is read: tanh activity, so a fixed [-1, 1] scale.
            im = ax.imshow(group[j].t().numpy(), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1,
                           interpolation="nearest", extent=(0.5, steps + 0.5, group.shape[2] - 0.5, -0.5))
            if j == 0:
                ax.set_ylabel(f"{name} units (τ = {tau:g})", fontsize=8)
            ax.tick_params(labelsize=7)
        # How much each group moves per step: the two timescales as numbers, not only as colours.
        ax = axes[3, j]
        for group, tau, name, colour in groups:
            change = torch.cat([group[j, :1], group[j, 1:] - group[j, :-1]]).abs().mean(-1)
            ax.plot(range(1, steps + 1), change.numpy(), color=colour, lw=1.2, label=f"{name} (τ = {tau:g})")
        ax.set_xlim(0.5, steps + 0.5)
        ax.set_xlabel(unit, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if j == 0:
            ax.set_ylabel("mean |h_t − h_{t−1}|", fontsize=8)
            ax.legend(fontsize=7)
    fig.suptitle(f"{title}: fast and slow context units while reading one digit per class", fontsize=9)
    # Laid out by hand: tight_layout cannot place a colour bar beside two rows of axes only.
    fig.subplots_adjust(left=0.07, right=0.9, top=0.92, bottom=0.06, hspace=0.3, wspace=0.25)
    top, bottom = axes[1, -1].get_position(), axes[2, -1].get_position()
    bar = fig.add_axes((top.x1 + 0.012, bottom.y0, 0.012, top.y1 - bottom.y0))
    fig.colorbar(im, cax=bar, label="h = tanh(u)")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")  # atomic, like the run's other plots
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
