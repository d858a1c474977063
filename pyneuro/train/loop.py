"""Training and evaluation of a registered model on MNIST.

The whole data set stays in memory as uint8 tensors; each batch is gathered by index, augmented
and turned into the model's view on the fly. A run folder holds:
    settings.json    the resolved settings (model, hyper-parameters, training)
    metrics.jsonl    one record per epoch (train/val loss and accuracy, lr, samples/s)
    last.pt          checkpoint: model, optimizer, scheduler, RNG states, position (atomic writes)
    eval.json        the final test-set evaluation (test_acc, per-class report, confusion matrix)
    *.png            training curves, confusion matrix, predictions grid
Ctrl-C (or SIGTERM) saves a checkpoint at the current batch; ``resume`` continues exactly there.
"""
from __future__ import annotations

import json
import math
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import data as pdata
from ..models import registry
from .augment import random_shift
from .checkpoint import load_checkpoint, save_checkpoint
from .metrics import MetricsLog, classification_report, confusion_matrix, format_report
from .progress import Progress

CHECKPOINT_NAME = "last.pt"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch sees no CUDA GPU "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda})")
    return torch.device(name)


def load_split(split: str, data_dir=None, subset: int = 0):
    # data_dir holds both IDX files a user put there and the converted cache.
    images, labels = pdata.load_mnist(root=data_dir, split=split, cache_dir=data_dir)
    if subset:
        images, labels = images[:subset], labels[:subset]
    return images, labels


def model_input(spec, hyper: dict, images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 28, 28) -> the float view the model consumes."""
    return pdata.to_view(images, spec.view, patch_size=hyper.get("patch_size", 7))


def lr_factor(scheduler: str, step: int, total: int, warmup_frac: float) -> float:
    """Multiplier of the peak learning rate at ``step``: warm-up then cosine decay (onecycle),
    cosine decay alone, or constant."""
    if scheduler == "constant" or total <= 1:
        return 1.0
    warmup = int(total * warmup_frac) if scheduler == "onecycle" else 0
    if step < warmup:
        return 0.04 + 0.96 * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) * 0.999 + 0.001


def make_optimizer(model: nn.Module, train: dict) -> torch.optim.Optimizer:
    # No weight decay on biases, norms and parameters that ask for none (e.g. Mamba's dt bias).
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or getattr(p, "_no_weight_decay", False) else decay).append(p)
    groups = [{"params": decay, "weight_decay": train["weight_decay"]},
              {"params": no_decay, "weight_decay": 0.0}]
    if train["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=train["lr"], momentum=train["momentum"], nesterov=True)
    return torch.optim.AdamW(groups, lr=train["lr"])


@torch.no_grad()
def evaluate(model, spec, hyper, images, labels, device, batch_size=1000):
    """Loss, accuracy and per-sample predictions/probabilities over a whole split."""
    model.eval()
    preds, probs, total_loss = [], [], 0.0
    for start in range(0, len(labels), batch_size):
        x = model_input(spec, hyper, images[start:start + batch_size].to(device))
        y = labels[start:start + batch_size].to(device)
        logits = model(x).float()
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        p = logits.softmax(-1)
        probs.append(p.cpu())
        preds.append(p.argmax(-1).cpu())
    preds = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
    n = max(len(labels), 1)
    return {"loss": total_loss / n, "acc": (preds == labels).float().sum().item() / n,
            "preds": preds, "probs": torch.cat(probs) if probs else torch.zeros(0, 10)}


@contextmanager
def _sigterm_as_interrupt():
    """Treat SIGTERM like Ctrl-C so a killed run still saves its checkpoint."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _rng_snapshot(aug_gen) -> dict:
    """The random state that the next batch will draw from (dropout, augmentation)."""
    state = {"torch": torch.get_rng_state(), "augment": aug_gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state, aug_gen) -> None:
    torch.set_rng_state(state["torch"])
    aug_gen.set_state(state["augment"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train(settings: dict, out_dir: str | Path, resume: bool = False, stream=None) -> dict:
    """Train ``settings["model"]`` (see config.resolve) into ``out_dir``; returns the eval summary.

    With ``resume=True`` the run continues from ``out_dir/last.pt`` (its saved settings win, except
    ``train.epochs``, which may be raised to train longer)."""
    stream = stream or sys.stderr
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = None
    if resume:
        ckpt = load_checkpoint(out / CHECKPOINT_NAME)
        epochs = settings["train"]["epochs"] if settings else ckpt["settings"]["train"]["epochs"]
        settings = ckpt["settings"]
        settings["train"]["epochs"] = max(epochs, ckpt["epoch"])
    tr, hyper = settings["train"], settings["hyper"]
    spec = registry.get(settings["model"])
    device = resolve_device(tr["device"])
    if tr["threads"]:
        torch.set_num_threads(tr["threads"])
    torch.manual_seed(tr["seed"])
    (out / "settings.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")

    train_x, train_y = load_split("train", tr["data_dir"], tr["train_subset"])
    val_x, val_y = load_split("val", tr["data_dir"], tr["val_subset"])
    train_x, train_y = train_x.to(device), train_y.to(device)

    model = spec.build(**hyper).to(device)
    optimizer = make_optimizer(model, tr)
    batch_gen = torch.Generator().manual_seed(tr["seed"] + 1)
    aug_gen = torch.Generator().manual_seed(tr["seed"] + 2)
    batches = pdata.TensorBatches(train_x, train_y, tr["batch_size"], shuffle=True, drop_last=True,
                                  generator=batch_gen)
    steps_per_epoch = len(batches)
    total_steps = tr["epochs"] * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(tr["scheduler"], s, total_steps, tr["warmup_frac"]))
    log = MetricsLog(out / "metrics.jsonl")

    epoch, skip, step = 0, 0, 0
    partial = {"loss": 0.0, "correct": 0, "seen": 0, "time": 0.0}
    if ckpt is not None:
        model.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
        scheduler.load_state_dict(ckpt["scheduler_state"])
        epoch, skip, step = ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]
        partial = ckpt["partial_epoch"]
        _restore_rng(ckpt["rng"], aug_gen)
        batch_gen.set_state(ckpt["batches_epoch_start"])
        log.truncate_after(step)
        print(f"resuming {spec.name} at epoch {epoch + 1}, batch {skip}/{steps_per_epoch} (step {step})",
              file=stream)
    else:
        log.path.write_text("", encoding="utf-8")

    n_params = sum(p.numel() for p in model.parameters())
    print(f"training {spec.name} ({n_params:,} parameters) on {device} for {tr['epochs']} epochs, "
          f"{len(train_y):,} train / {len(val_y):,} val images -> {out}", file=stream)

    def checkpoint(epoch_, batch_in_epoch, epoch_start_state, rng):
        # Everything needed to continue bit-for-bit: position, optimizer/scheduler state, the
        # shuffling generator as it was when this epoch began, and the RNG the next batch draws from.
        save_checkpoint({
            "model": spec.name, "settings": settings, "model_state": model.state_dict(),
            "optimizer_state": optimizer.state_dict(), "scheduler_state": scheduler.state_dict(),
            "epoch": epoch_, "batch_in_epoch": batch_in_epoch, "step": step,
            "partial_epoch": partial, "rng": rng, "batches_epoch_start": epoch_start_state,
            "pyneuro_version": _version()}, out / CHECKPOINT_NAME)

    with _sigterm_as_interrupt():
        while epoch < tr["epochs"]:
            epoch_start_state = batch_gen.get_state()
            model.train()
            bar = Progress(steps_per_epoch, f"epoch {epoch + 1}/{tr['epochs']}", every=tr["log_every"],
                           stream=stream)
            t0 = time.perf_counter()
            done = skip  # batches of this epoch completed so far
            rng = _rng_snapshot(aug_gen)
            try:
                for batch_idx, (xb, yb) in enumerate(batches):
                    if batch_idx < skip:
                        continue
                    xb = random_shift(xb, tr["augment_shift"], aug_gen)
                    logits = model(model_input(spec, hyper, xb))
                    loss = F.cross_entropy(logits.float(), yb, label_smoothing=tr["label_smoothing"])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if tr["grad_clip"] > 0:
                        nn.utils.clip_grad_norm_(model.parameters(), tr["grad_clip"])
                    optimizer.step()
                    scheduler.step()
                    step, done, rng = step + 1, done + 1, _rng_snapshot(aug_gen)
                    partial["loss"] += loss.item() * len(yb)
                    partial["correct"] += (logits.argmax(-1) == yb).sum().item()
                    partial["seen"] += len(yb)
                    bar.update(len(yb), loss=partial["loss"] / partial["seen"],
                               acc=partial["correct"] / partial["seen"])
            except KeyboardInterrupt:
                bar.close()
                partial["time"] += time.perf_counter() - t0
                checkpoint(epoch, done, epoch_start_state, rng)
                print(f"\ninterrupted: saved {out / CHECKPOINT_NAME} at epoch {epoch + 1}, batch {done}; "
                      f"continue with `pyneuro train --resume {out}`", file=stream)
                raise
            bar.close()
            skip = 0
            train_time = partial["time"] + time.perf_counter() - t0
            val = evaluate(model, spec, hyper, val_x, val_y, device, tr["eval_batch_size"])
            record = {"epoch": epoch + 1, "step": step,
                      "train_loss": partial["loss"] / max(partial["seen"], 1),
                      "train_acc": partial["correct"] / max(partial["seen"], 1),
                      "val_loss": val["loss"], "val_acc": val["acc"],
                      "lr": optimizer.param_groups[0]["lr"], "epoch_time_s": train_time,
                      "samples_per_s": partial["seen"] / max(train_time, 1e-9)}
            log.append(record)
            print(f"epoch {epoch + 1}: train loss {record['train_loss']:.4f} acc {record['train_acc']:.4f} | "
                  f"val loss {val['loss']:.4f} acc {val['acc']:.4f} | {train_time:.1f}s", file=stream)
            epoch += 1
            partial = {"loss": 0.0, "correct": 0, "seen": 0, "time": 0.0}
            checkpoint(epoch, 0, batch_gen.get_state(), _rng_snapshot(aug_gen))

    return evaluate_run(out, device=device, model=model, settings=settings, stream=stream)


def _version() -> str:
    from .. import __version__
    return __version__


def evaluate_run(out_dir, device=None, model=None, settings=None, checkpoint=None, stream=None) -> dict:
    """Evaluate on the untouched 10k test set; writes eval.json and the plots into ``out_dir``."""
    from ..viz import plots

    stream = stream or sys.stderr
    out = Path(out_dir)
    if model is None:
        state = load_checkpoint(checkpoint or out / CHECKPOINT_NAME)
        settings = state["settings"]
        device = device or resolve_device(settings["train"]["device"])
        model = registry.get(settings["model"]).build(**settings["hyper"]).to(device)
        model.load_state_dict(state["model_state"])
    spec = registry.get(settings["model"])
    tr = settings["train"]
    test_x, test_y = load_split("test", tr["data_dir"])
    t0 = time.perf_counter()
    res = evaluate(model, spec, settings["hyper"], test_x, test_y, device, tr["eval_batch_size"])
    cm = confusion_matrix(test_y, res["preds"])
    report = classification_report(cm)
    summary = {"model": spec.name, "test_acc": res["acc"], "test_loss": res["loss"], "n_test": len(test_y),
               "eval_time_s": time.perf_counter() - t0, "device": str(device),
               "report": report, "confusion_matrix": cm.tolist(), "settings": settings}
    (out / "eval.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(format_report(report), file=stream)
    print(f"test accuracy ({spec.name}): {res['acc'] * 100:.2f}%  ({len(test_y):,} images)", file=stream)
    records = MetricsLog(out / "metrics.jsonl").read()
    summary["plots"] = [str(p) for p in plots.run_plots(out, records, cm, test_x, test_y, res["preds"],
                                                         res["probs"], title=spec.name)]
    return summary
