"""PV-RNN's pictures: digits generated from the prior, completions of half-seen test digits, each
row's latent posterior against the prior, and
(a separate, slower entry) the effect of the meta-prior w.

    python -m pyneuro.viz.pvrnn --meta-prior-sweep [--out runs/pvrnn-sweep] [--sequences 2000] [--epochs 25]

trains one short PV-RNN per w in {0.0001, 0.001, 0.01, 0.1} and draws their reconstruction error
against their KL, and how varied their generations from the same initial state are.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from .plots import _save, plt  # imported there with the file-only Agg backend

__all__ = ["pvrnn_pictures", "generations", "completions", "prior_posterior", "meta_prior_sweep",
           "generation_variety"]

PICTURE_SEED = 7
SWEEP_WEIGHTS = (0.0001, 0.001, 0.01, 0.1)


def _show(ax, picture, title=None):
    ax.axis("off")
    ax.imshow(picture.detach().cpu().numpy(), cmap="gray_r", vmin=0, vmax=1)
    if title:
        ax.set_title(title, fontsize=7)


def _class_sequences(model, per_class: int, generator: torch.Generator) -> dict[int, torch.Tensor]:
    """Up to ``per_class`` training sequences of each class whose label the trainer recorded."""
    labels = model.sequence_labels.cpu()
    out = {}
    for c in range(10):
        idx = (labels == c).nonzero().flatten()
        if len(idx):
            out[c] = idx[torch.randperm(len(idx), generator=generator)[:per_class]]
    return out


@torch.no_grad()
def generations(model, path: Path, title: str = "pvrnn", per_class: int = 8) -> Path:
    """Row c: digits generated from the prior (every z_t drawn) starting from the learned initial
    states of training sequences of class c; last row: from z_0 ~ N(0, I)."""
    gen = torch.Generator().manual_seed(PICTURE_SEED)
    device = model.readout.weight.device
    dgen = torch.Generator(device=device).manual_seed(PICTURE_SEED)
    by_class = _class_sequences(model, per_class, gen)
    rows = [(f"class {c}", model.generate(index=idx, generator=dgen)) for c, idx in by_class.items()]
    rows.append(("z0 ~ N(0,I)", model.generate(n=per_class, generator=dgen)))
    fig, axes = plt.subplots(len(rows), per_class, figsize=(per_class * 0.9, len(rows) * 0.95), squeeze=False)
    for r, (name, pics) in enumerate(rows):
        for c in range(per_class):
            _show(axes[r, c], pics[c]) if c < len(pics) else axes[r, c].axis("off")
        axes[r, 0].text(-4, 14, name, fontsize=7, ha="right", va="center")
    fig.suptitle(f"{title}: generated from the prior (learned initial states per sequence; last row: sampled z0)",
                 fontsize=9)
    return _save(fig, path)


@torch.no_grad()
def completions(model, images, labels, path: Path, title: str = "pvrnn", count: int = 10) -> Path:
    """For ``count`` test digits: the seen half, the completion (seen rows + rows generated after
    error regression, a line at the boundary) and the original."""
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(PICTURE_SEED))[:count]
    imgs, labs = images[pick], labels[pick]
    done = model.complete(imgs.to(model.readout.weight.device)).cpu()
    seen = model.seen_rows
    half = imgs.float() / 255
    half[:, seen:] = 0
    fig, axes = plt.subplots(3, count, figsize=(count * 0.9, 3 * 1.0), squeeze=False)
    for i in range(count):
        _show(axes[0, i], half[i], f"label {labs[i].item()}")
        _show(axes[1, i], done[i])
        axes[1, i].axhline(seen - 0.5, color="tab:red", lw=0.6)
        _show(axes[2, i], imgs[i].float() / 255)
    for r, name in enumerate(("seen", "completed", "original")):
        axes[r, 0].text(-4, 14, name, fontsize=7, ha="right", va="center")
    fig.suptitle(f"{title}: first {seen} rows seen, the rest generated after error regression", fontsize=9)
    return _save(fig, path)


@torch.no_grad()
def prior_posterior(model, images, labels, path: Path, title: str = "pvrnn", count: int = 3) -> Path:
    """For ``count`` test digits, seen whole: the posterior of every step's latent z (mean ± σ, from
    adaptive vectors inferred by error regression on all 28 rows) against the prior the network
    predicts for that step from its own state (mean ± σ), one panel per latent unit, and the KL
    per row. Where the posterior leaves the prior, the row told the network something its own
    dynamics did not expect; with a strong meta-prior the two stay together."""
    from ..models.pvrnn import ROWS

    if images.dim() != 3 or len(images) != len(labels) or len(images) < count:
        raise ValueError(f"images: expected uint8 (N >= {count}, 28, 28) with one label each, got {tuple(images.shape)}")
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(PICTURE_SEED))[:count]
    device = model.readout.weight.device
    x = images[pick].to(device, model.readout.weight.dtype) / 255.0
    a_init, a_steps = model.error_regression(x, seen=ROWS)
    out = model.unroll((a_init, a_steps), steps=ROWS, sample=False)
    posterior = model._split(a_steps, model.z_sizes)  # per layer: (mean, log σ), (B, 28, z_l)
    units = [(l, k) for l, size in enumerate(model.z_sizes) for k in range(size)]
    rows = torch.arange(1, ROWS + 1)
    fig, axes = plt.subplots(count, len(units) + 2, figsize=(1.9 * (len(units) + 2), 1.6 * count + 0.5), squeeze=False)
    for i in range(count):
        _show(axes[i, 0], x[i], f"digit {labels[pick[i]].item()}")
        for j, (l, k) in enumerate(units):
            ax = axes[i, j + 1]
            for (mu, logsig), name, colour in ((out["prior"][l], "prior", "tab:gray"), (posterior[l], "posterior", "tab:blue")):
                m, sd = mu[i, :, k].cpu(), logsig[i, :, k].exp().cpu()
                ax.plot(rows, m, color=colour, lw=1, label=name)
                ax.fill_between(rows, m - sd, m + sd, color=colour, alpha=0.25, lw=0)
            ax.set_ylim(-2, 2)
            ax.tick_params(labelsize=6)
            if i == 0:
                ax.set_title(f"layer {l + 1}, z[{k}]", fontsize=7)
            if i == count - 1:
                ax.set_xlabel("row", fontsize=7)
        kl = out["kl_steps"][i].cpu()  # (28, L)
        ax = axes[i, -1]
        for l in range(kl.shape[1]):
            ax.plot(rows, kl[:, l], lw=1, label=f"layer {l + 1}")
        ax.tick_params(labelsize=6)
        if i == 0:
            ax.set_title("KL(posterior ‖ prior) per row", fontsize=7)
            ax.legend(fontsize=6)
    axes[0, 1].legend(fontsize=6, loc="upper right")
    fig.suptitle(f"{title}: each row's latent z, posterior (inferred from the whole digit) against the prior "
                 f"(predicted from the network's state); bands ± σ", fontsize=9)
    return _save(fig, Path(path))


def pvrnn_pictures(model, images, labels, out_dir, title: str = "pvrnn", view: str = "rows") -> list[Path]:
    """The model's plots hook (see pyneuro/models/registry.py)."""
    out = Path(out_dir)
    was_training = model.training
    model.eval()
    try:
        return [generations(model, out / "generations.png", title),
                completions(model, images, labels, out / "completions.png", title),
                prior_posterior(model, images, labels, out / "prior_posterior.png", title)]
    finally:
        model.train(was_training)


# -- the meta-prior sweep ------------------------------------------------------------------------
@torch.no_grad()
def generation_variety(model, starts: int = 20, samples: int = 8, seed: int = PICTURE_SEED) -> float:
    """How varied the generations are: the mean per-pixel standard deviation across ``samples``
    prior generations from the same learned initial state, averaged over ``starts`` training
    sequences (0: the prior's noise changes nothing)."""
    trained = (model.adaptive_updates > 0).nonzero().flatten()
    idx = trained[torch.randperm(len(trained), generator=torch.Generator().manual_seed(seed))[:starts]]
    dgen = torch.Generator(device=model.readout.weight.device).manual_seed(seed)
    pics = model.generate(index=idx.repeat_interleave(samples), generator=dgen).reshape(len(idx), samples, 28, 28)
    return pics.std(1).mean().item()


def _train_short(weight: float, images, sequences: int, epochs: int, batch: int, seed: int, **hyper):
    from ..models import registry

    torch.manual_seed(seed)
    model = registry.get("pvrnn").build(sequences=sequences, meta_prior=[weight, weight], **hyper)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(sequences, generator=gen)
        for i in range(sequences // batch):
            idx = order[i * batch:(i + 1) * batch]
            loss, _ = model(model.prepare(images[idx], train=True, index=idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    model.eval()
    # The last epoch's figures with the trained adaptive vectors, on one pass without updates.
    with torch.no_grad():
        idx = torch.arange(sequences)
        _, terms = model(model.prepare(images[:sequences], train=True, index=idx))
    return model, {k: v.item() for k, v in terms.items()}


def meta_prior_sweep(out_dir="runs/pvrnn-sweep", weights=SWEEP_WEIGHTS, sequences: int = 2000, epochs: int = 25,
                     batch: int = 100, seed: int = 0, **hyper) -> dict:
    """Train a short PV-RNN per meta-prior w on the first ``sequences`` training digits; write
    sweep.json and meta_prior.png (recon against KL; generation variety; generations per w)."""
    from .. import data as pdata

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images, _ = pdata.load_mnist(split="train")
    images = images[:sequences]
    hyper = {"a_lr": 0.2, **hyper}  # the shipped config's: each adaptive row moves once per epoch
    results, samples = [], []
    for w in weights:
        t0 = time.perf_counter()
        model, terms = _train_short(w, images, sequences, epochs, batch, seed, **hyper)
        variety = generation_variety(model)
        results.append({"meta_prior": w, "recon_nats": terms["recon_nats"], "kl_nats": terms["kl_nats"],
                        "variety": variety, "seconds": time.perf_counter() - t0})
        dgen = torch.Generator().manual_seed(PICTURE_SEED)
        samples.append(model.generate(index=torch.zeros(8, dtype=torch.int64), generator=dgen))
        print(json.dumps(results[-1]), flush=True)
    summary = {"sequences": sequences, "epochs": epochs, "batch": batch, "results": results}
    (out / "sweep.json").write_text(json.dumps(summary, indent=2) + "\n")

    fig = plt.figure(figsize=(10, 3 + 0.9 * len(weights)))
    grid = fig.add_gridspec(1 + len(weights), 8, height_ratios=[3.2] + [1] * len(weights))
    ax = fig.add_subplot(grid[0, :4])
    ax.plot([r["kl_nats"] for r in results], [r["recon_nats"] for r in results], "o-")
    for r in results:
        ax.annotate(f"w={r['meta_prior']:g}", (r["kl_nats"], r["recon_nats"]), fontsize=7)
    ax.set(xlabel="KL(q||p), nats per digit", ylabel="reconstruction, nats per digit", xscale="log",
           title="reconstruction against KL")
    ax2 = fig.add_subplot(grid[0, 5:])
    ax2.bar([f"{r['meta_prior']:g}" for r in results], [r["variety"] for r in results])
    ax2.set(xlabel="meta-prior w", ylabel="pixel std across samples", title="variety of generations")
    for i, (w, pics) in enumerate(zip(weights, samples)):
        for c in range(8):
            _show(fig.add_subplot(grid[1 + i, c]), pics[c], f"w={w:g}" if c == 0 else None)
    fig.suptitle(f"PV-RNN meta-prior sweep ({sequences} digits, {epochs} epochs each; rows: 8 generations "
                 f"from sequence 0's initial state)", fontsize=9)
    summary["plot"] = str(_save(fig, out / "meta_prior.png"))
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pyneuro.viz.pvrnn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--meta-prior-sweep", action="store_true", help="train one short run per meta-prior w")
    parser.add_argument("--out", default="runs/pvrnn-sweep")
    parser.add_argument("--sequences", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if not args.meta_prior_sweep:
        parser.error("nothing to do: pass --meta-prior-sweep")
    torch.set_num_threads(args.threads)
    print(json.dumps(meta_prior_sweep(args.out, sequences=args.sequences, epochs=args.epochs), indent=2))


if __name__ == "__main__":
    main()
