"""Training and evaluation of a registered model on MNIST.

The whole data set stays in memory as uint8 tensors on the training device; each batch is gathered
by index, augmented and turned into the model's view on the fly. A run folder holds:
    settings.json    the resolved settings (model, preset, hyper-parameters, training, world size)
    metrics.jsonl    one record per epoch (train/val loss and accuracy, lr, samples/s)
    last.pt          checkpoint: model, optimizer, scheduler, RNG states, position (atomic writes)
    eval.json        the final test-set evaluation (test_acc, per-class report, confusion matrix)
    *.png            training curves, confusion matrix, predictions grid

A generative model (registry task "generate", see pyneuro/models/registry.py) brings its own loss:
the loop calls ``model.prepare`` and ``model(batch) -> (loss, terms)``, logs the named terms (nats
per image) instead of an accuracy, and writes eval.json with the test loss, its terms and whatever
``model.evaluate`` adds; the pictures are the loss curves and the model's own (its spec's ``plots``).

Stopping: SIGINT (Ctrl-C) and SIGTERM only set a flag. The loop acts on it at the next batch
boundary, where the model, optimizer, scheduler and position agree: it saves the checkpoint and
raises :class:`Interrupted`. ``resume`` continues from there bit for bit. Checkpoints are also
written at every epoch end and every ``train.checkpoint_every`` steps, so even ``kill -9`` loses at
most that many steps. A second signal stops at once (the last checkpoint on disk stays whole).

Under torchrun every process trains on its share of each global batch (DistributedDataParallel
averages the gradients); only rank 0 logs, writes files and evaluates. See distributed.py.
"""
from __future__ import annotations

import copy
import inspect
import io
import json
import math
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import data as pdata
from ..models import registry
from ..runtime import retain_freed_memory
from . import distributed
from .augment import affine_draws, affine_images, shift_images, shift_offsets
from .checkpoint import CHECKPOINT_FORMAT, CheckpointError, atomic_write_text, load_checkpoint, save_checkpoint
from .config import TRAIN_DEFAULTS, ConfigError
from .metrics import MetricsLog, classification_report, confusion_matrix, format_report
from ..nn.norm import convert_sync_batchnorm
from .progress import Progress

CHECKPOINT_NAME = "last.pt"


class Interrupted(KeyboardInterrupt):
    """A signal stopped the run; the checkpoint to resume from was saved first."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StopRequest:
    """Signal handlers that only record the request (SIGINT and SIGTERM).

    The old handler raised inside whatever was running, optimizer.step() included, which could save
    a half-updated model, or an updated model with the old position. Here the loop polls
    ``signum`` at batch boundaries. A second signal raises KeyboardInterrupt at once, for a user
    who does not want to wait for the batch to finish."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        try:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: signals cannot be caught here
            pass
        return self

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        return False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch sees no CUDA GPU here "
                          f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use --device cpu")
    return torch.device(name)


def load_split(split: str, data_dir=None, subset: int = 0):
    # data_dir holds both IDX files a user put there and the converted cache.
    images, labels = pdata.load_mnist(root=data_dir, split=split, cache_dir=data_dir)
    if subset:
        images, labels = images[:subset], labels[:subset]
    return images, labels


def input_view(spec, hyper: dict) -> str:
    """The view the model reads: its ``view`` hyper-parameter when it has one, else the registry's."""
    return hyper.get("view", spec.view)


def model_input(spec, hyper: dict, images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 (B, 28, 28) -> the float view the model consumes."""
    x = pdata.to_view(images, input_view(spec, hyper), patch_size=hyper.get("patch_size", 7))
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _generative_output(spec, hyper, out) -> str | None:
    """What is wrong with a generative model's forward output, or None: it must be (scalar loss,
    dict of named scalar tensors)."""
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
        return f"returns {type(out).__name__}, expected a (loss, terms dict) pair"
    loss, terms = out
    bad = [name for name, v in terms.items() if not (isinstance(v, torch.Tensor) and v.dim() == 0)]
    if not (isinstance(loss, torch.Tensor) and loss.dim() == 0):
        bad.insert(0, "loss")
    return f"must give a scalar loss and scalar terms (not scalar: {bad})" if bad else None


# What a generative model's ``prepare`` may ask for beside the images, by naming the keyword: the
# images' positions in the training split (per-sequence parameters, e.g. PV-RNN's adaptive vectors)
# and their labels. Only training batches carry them.
PREPARE_EXTRAS = ("index", "labels")


def prepare_extras(model) -> tuple[str, ...]:
    """The PREPARE_EXTRAS that ``model.prepare`` takes as keywords."""
    params = inspect.signature(model.prepare).parameters
    return tuple(name for name in PREPARE_EXTRAS if name in params)


def _rng_fork(device: torch.device):
    """Random draws inside leave the global RNG (CPU and this GPU) as they were."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def build_model(spec, hyper: dict, device: torch.device) -> nn.Module:
    """Build the model and run it once on two blank images, so that hyper-parameters which pass the
    schema but do not fit together (a head count that does not divide the width, more pooling
    stages than the image has pixels) are reported as settings errors before training starts.
    The probe runs in eval mode without gradients: it changes no state and draws no random numbers."""
    try:
        model = spec.build(**hyper).to(device)
    except Exception as exc:  # noqa: BLE001 -- any failure here is the settings' fault
        raise ConfigError(f"model {spec.name}: cannot build it with {json.dumps(hyper)}: {_one_line(exc)}") from None
    probe = torch.zeros(2, 28, 28, dtype=torch.uint8, device=device)
    was_training = model.training
    model.eval()
    try:
        if spec.generative:  # sampling models draw random numbers even in eval mode
            with torch.no_grad(), _rng_fork(device):
                out = model(model.prepare(probe, train=False))
        else:
            with torch.no_grad():
                out = model(model_input(spec, hyper, probe))
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"model {spec.name} with {json.dumps(hyper)} cannot read {input_view(spec, hyper)!r} "
                          f"input: {_one_line(exc)}") from None
    finally:
        model.train(was_training)
    if spec.generative:
        problem = _generative_output(spec, hyper, out)
        if problem:
            raise ConfigError(f"generative model {spec.name} with {json.dumps(hyper)}: its forward {problem}")
        return model
    if tuple(out.shape) != (2, 10):
        raise ConfigError(f"model {spec.name} with {json.dumps(hyper)} gives outputs of shape "
                          f"{tuple(out.shape)} for 2 images, expected (2, 10)")
    return model


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


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The optimiser's parameter groups. No weight decay on biases, norms and parameters that ask
    for none (``_no_weight_decay``, e.g. Mamba's dt bias). A parameter with an ``_optim`` dict
    (e.g. S4D's A and step sizes: ``{"lr": 1e-3, "weight_decay": 0.0}``) goes into a group of its
    own with those settings; its lr is a peak like train.lr, scaled by the same schedule."""
    decay, no_decay, hinted = [], [], {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        undecayed = p.dim() < 2 or getattr(p, "_no_weight_decay", False)
        hint = getattr(p, "_optim", None)
        if hint:
            defaults = {"weight_decay": 0.0 if undecayed else weight_decay}
            hinted.setdefault(tuple(sorted({**defaults, **hint}.items())), []).append(p)
        else:
            (no_decay if undecayed else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return groups + [{"params": params, **dict(settings)} for settings, params in hinted.items()]


def fused_update(params) -> bool:
    """Whether torch's fused optimiser kernels (one pass over each parameter for the whole update)
    take these parameters: floating tensors on a device torch has them for (cpu, cuda, ...). The
    default per-tensor loop makes ~10 elementwise passes per parameter: on the CPU a transformer's
    AdamW step took 7.4 ms that way and 0.6 ms fused."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
        supported = set(_get_fused_kernels_supported_devices())
    except ImportError:  # a torch without the helper: fused kernels on CUDA only, as torch 2.3 had them
        supported = {"cuda"}
    params = list(params)
    return bool(params) and all(p.is_floating_point() and p.device.type in supported for p in params)


def make_optimizer(model: nn.Module, train: dict) -> torch.optim.Optimizer:
    groups = param_groups(model, train["weight_decay"])
    fused = fused_update(p for g in groups for p in g["params"]) or None  # None: torch's default
    if train["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=train["lr"], momentum=train["momentum"], nesterov=True, fused=fused)
    return torch.optim.AdamW(groups, lr=train["lr"], fused=fused)


@torch.no_grad()
def evaluate(model, spec, hyper, images, labels, device, batch_size=1000, channels_last=False):
    """Loss, accuracy and per-sample predictions/probabilities over a whole split (one host sync)."""
    model.eval()
    probs = []
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, len(labels), batch_size):
        x = model_input(spec, hyper, images[start:start + batch_size].to(device), channels_last)
        y = labels[start:start + batch_size].to(device)
        logits = model(x).float()
        total_loss += F.cross_entropy(logits, y, reduction="sum")
        probs.append(logits.softmax(-1))
    probs = torch.cat(probs).cpu() if probs else torch.zeros(0, 10)
    preds = probs.argmax(-1)
    n = max(len(labels), 1)
    return {"loss": total_loss.item() / n, "acc": (preds == labels).sum().item() / n,
            "preds": preds, "probs": probs}


# The noise of a generative model's validation and test passes: a fixed draw (the same figures on
# every run and resume), taken on a forked RNG (the training draws do not depend on validation).
EVAL_SEED = 2024


@torch.no_grad()
def evaluate_generative(model, images, device, batch_size=1000) -> dict:
    """Mean loss and terms per image over a whole split, on the model's deterministic batch."""
    model.eval()
    n = max(len(images), 1)
    with _rng_fork(device):
        torch.manual_seed(EVAL_SEED)
        batch = model.prepare(images.to(device), train=False)  # the whole split at once: one draw
        loss = torch.zeros((), dtype=torch.float64, device=device)
        terms: dict[str, torch.Tensor] = {}
        for start in range(0, len(images), batch_size):
            chunk = batch[start:start + batch_size]
            step_loss, step_terms = model(chunk)
            loss += step_loss.double() * len(chunk)
            for name, value in step_terms.items():
                terms[name] = terms.get(name, 0.0) + value.double() * len(chunk)
    return {"loss": loss.item() / n, "terms": {name: v.item() / n for name, v in terms.items()}}


def _restore_partial(partial: dict, device, main: bool) -> dict:
    """The epoch's running sums, as device tensors (no host sync per step). A resumed run keeps the
    saved sums on rank 0 only: the ranks' sums are added up at the end of the epoch. ``terms``: a
    generative model's named loss terms (filled at its first step)."""
    return {"loss": torch.tensor(partial["loss"] if main else 0.0, dtype=torch.float64, device=device),
            "correct": torch.tensor(partial["correct"] if main else 0, dtype=torch.int64, device=device),
            "terms": {name: torch.tensor(v if main else 0.0, dtype=torch.float64, device=device)
                      for name, v in partial.get("terms", {}).items()},
            "seen": partial["seen"] if main else 0, "time": partial["time"]}


def train(settings: dict | None, out_dir: str | Path, resume: bool = False, stream=None,
          expect_model: str | None = None) -> dict | None:
    """Train ``settings["model"]`` (see config.resolve) into ``out_dir``; returns the eval summary
    (None on the ranks other than 0 of a torchrun launch).

    With ``resume=True`` the run continues from ``out_dir/last.pt``: its saved settings win, except
    ``settings["train"]["epochs"]`` (to train longer) and ``["device"]`` when given.
    ``expect_model``: refuse a checkpoint of another model."""
    out = Path(out_dir)
    ckpt = None
    if resume:
        ckpt = load_checkpoint(out / CHECKPOINT_NAME, model=expect_model, resume=True)
        extra = (settings or {}).get("train", {})
        settings = copy.deepcopy(ckpt["settings"])
        # Settings added since the checkpoint was written take their defaults, which reproduce
        # what that version did (no rotation or zoom, ...).
        settings["train"] = {**TRAIN_DEFAULTS, **settings.get("train", {})}
        if extra.get("epochs") is not None:
            settings["train"]["epochs"] = max(extra["epochs"], ckpt["epoch"])
        if extra.get("device") is not None:
            settings["train"]["device"] = extra["device"]
    ctx, device = distributed.setup(settings["train"]["device"])
    try:
        return _Run(settings, out, ckpt, ctx, device, stream or sys.stderr).run()
    finally:
        distributed.teardown(ctx)


class _Run:
    def __init__(self, settings, out: Path, ckpt, ctx: distributed.Context, device, stream):
        self.settings, self.out, self.ckpt, self.ctx, self.device = settings, out, ckpt, ctx, device
        self.stream = stream if ctx.is_main else io.StringIO()  # only rank 0 talks
        self.tr, self.hyper = settings["train"], settings["hyper"]
        self.spec = registry.get(settings["model"])
        self.generative = self.spec.generative

    # -- set-up --------------------------------------------------------------------------------
    def _prepare(self):
        tr, ctx, device = self.tr, self.ctx, self.device
        if tr["threads"]:
            torch.set_num_threads(tr["threads"])
        if tr["retain_freed_memory"]:
            retain_freed_memory()  # fewer page faults per step (pyneuro/runtime.py)
        if tr["batch_size"] % ctx.world_size:
            raise ConfigError(f"train.batch_size={tr['batch_size']} is the global batch: it must be a multiple of "
                              f"the {ctx.world_size} processes, which each take an equal share")
        self.local_batch = tr["batch_size"] // ctx.world_size
        self.settings["world_size"] = ctx.world_size
        torch.manual_seed(tr["seed"])

        train_x, train_y = load_split(tr.get("train_split", "train"), tr["data_dir"], tr["train_subset"])
        self.val_x, self.val_y = load_split("val", tr["data_dir"], tr["val_subset"])
        if len(train_y) < tr["batch_size"]:
            subset = f" (train.train_subset={tr['train_subset']})" if tr["train_subset"] else ""
            raise ConfigError(f"train.batch_size={tr['batch_size']} is more than the {len(train_y)} training "
                              f"images{subset}: not one full batch per epoch; lower batch_size or use more images")
        self.train_x, self.train_y = train_x.to(device), train_y.to(device)

        self.view = input_view(self.spec, self.hyper)
        self.channels_last = tr["channels_last"] and self.view == "image"
        model = build_model(self.spec, self.hyper, device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if ctx.distributed and device.type == "cuda":
            model = convert_sync_batchnorm(model)  # batch statistics of the global batch (keeps fused ReLU/pool)
        self.model = model
        self.prepare_extras = prepare_extras(model) if self.generative else ()
        if ctx.rank:  # dropout masks differ between ranks, as they would between samples of one batch
            torch.manual_seed(tr["seed"] + 7919 * ctx.rank)
        self.optimizer = make_optimizer(model, tr)
        self.batch_gen = torch.Generator().manual_seed(tr["seed"] + 1)
        self.aug_gen = torch.Generator().manual_seed(tr["seed"] + 2)
        self.steps_per_epoch = len(train_y) // tr["batch_size"]
        total = tr["epochs"] * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(tr["scheduler"], s, total, tr["warmup_frac"]))
        self.log = MetricsLog(self.out / "metrics.jsonl")
        self.epoch = self.skip = self.step = 0
        partial = {"loss": 0.0, "correct": 0, "seen": 0, "time": 0.0}
        if self.ckpt is not None:
            partial = self._load_state(self.ckpt)
        self.partial = _restore_partial(partial, device, ctx.is_main)

        forward = model
        if ctx.distributed:
            forward = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        if tr["compile"]:
            forward = torch.compile(forward)
        self.forward = forward

    def _load_state(self, ckpt) -> dict:
        try:
            self.model.load_state_dict(ckpt["model_state"])
            self.optimizer.load_state_dict(ckpt["optimizer_state"])
            self.scheduler.load_state_dict(ckpt["scheduler_state"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{self.out / CHECKPOINT_NAME} does not fit model {self.spec.name} with its saved "
                                  f"settings: {_one_line(exc)}") from None
        self.epoch, self.skip, self.step = ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]
        rng = ckpt["rng"]
        self.batch_gen.set_state(rng["batches"])
        self.aug_gen.set_state(rng["augment"])
        if ckpt["world_size"] == self.ctx.world_size:  # each rank continues its own dropout stream
            torch.set_rng_state(rng["torch"][self.ctx.rank])
            if rng.get("cuda") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"][self.ctx.rank], self.device)
        else:  # another world size: fresh dropout streams, everything else continues exactly
            torch.manual_seed(self.tr["seed"] + 7919 * self.ctx.rank + 104729 * self.step)
        return ckpt["partial_epoch"]

    # -- checkpoints ---------------------------------------------------------------------------
    def _checkpoint(self, batch_in_epoch: int, epoch_start: dict, partial_time: float) -> None:
        """Save the state at a batch boundary (a collective: every rank calls it at the same step)."""
        ctx = self.ctx
        terms = self.partial["terms"]
        sums = torch.stack([self.partial["loss"], self.partial["correct"].double(), *terms.values()]).cpu()
        seen = torch.tensor([float(self.partial["seen"])])
        ctx.sum_(sums, seen)
        torch_states = ctx.gather(torch.get_rng_state())
        cuda_states = ctx.gather(torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None)
        if not ctx.is_main:
            return
        save_checkpoint({
            "format": CHECKPOINT_FORMAT, "pyneuro_version": _version(), "model": self.spec.name,
            "settings": self.settings, "world_size": ctx.world_size,
            "model_state": self.model.state_dict(), "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict(),
            "epoch": self.epoch, "batch_in_epoch": batch_in_epoch, "step": self.step,
            "partial_epoch": {"loss": sums[0].item(), "correct": int(sums[1].item()), "seen": int(seen.item()),
                              "time": partial_time, "terms": dict(zip(terms, sums[2:].tolist()))},
            # The shuffling and augmentation generators as they were when this epoch began (the
            # epoch's order and shifts are drawn at once), and each rank's dropout RNG now.
            "rng": {**epoch_start, "torch": torch_states,
                    "cuda": cuda_states if self.device.type == "cuda" else None},
        }, self.out / CHECKPOINT_NAME)

    def _stop_requested(self, stop: StopRequest) -> int:
        if self.ctx.any(bool(stop.signum)):
            return stop.signum or signal.SIGTERM  # another rank got it (torchrun signals them all)
        return 0

    def _interrupted(self, signum: int, batch: int):
        if self.ctx.is_main:
            print(f"\ninterrupted: saved {self.out / CHECKPOINT_NAME} at epoch {self.epoch + 1}, batch {batch}; "
                  f"continue with `pyneuro train --resume {self.out}`", file=self.stream)
        return Interrupted(signum)

    # -- the loop ------------------------------------------------------------------------------
    def run(self):
        ctx, tr, out = self.ctx, self.tr, self.out
        with StopRequest() as stop:
            self._prepare()
            if ctx.is_main:
                out.mkdir(parents=True, exist_ok=True)
                if self.ckpt is None:  # a fresh start leaves nothing of an earlier run to resume
                    for name in (CHECKPOINT_NAME, "eval.json"):
                        (out / name).unlink(missing_ok=True)
                    self.log.path.write_text("", encoding="utf-8")
                else:
                    self.log.truncate_after(self.step)
                atomic_write_text(out / "settings.json", json.dumps(self.settings, indent=2) + "\n")
            self._announce()
            while self.epoch < tr["epochs"]:
                self._epoch(stop)
            # A signal from here on lets the evaluation finish (seconds): the run is then complete.
            if not ctx.is_main:
                return None
            return evaluate_run(out, device=self.device, model=self.model, settings=self.settings,
                                stream=self.stream)

    def _announce(self):
        if self.ckpt is not None:
            print(f"resuming {self.spec.name} at epoch {self.epoch + 1}, batch {self.skip}/{self.steps_per_epoch} "
                  f"(step {self.step})", file=self.stream)
        n_params = sum(p.numel() for p in self.model.parameters())
        procs = (f"{self.ctx.world_size} processes ({self.local_batch} images each per step)"
                 if self.ctx.distributed else "1 process")
        preset = f", preset {self.settings['preset']}" if self.settings.get("preset") else ""
        print(f"training {self.spec.name} ({n_params:,} parameters{preset}) on {self.device}, {procs}, for "
              f"{self.tr['epochs']} epochs, {len(self.train_y):,} {self.tr.get('train_split', 'train')} images, "
              f"{f'{len(self.val_y):,} val images' if self.tr['eval_every'] else 'no validation pass'} "
              f"-> {self.out}", file=self.stream)

    def _epoch(self, stop: StopRequest):
        ctx, tr, device = self.ctx, self.tr, self.device
        B, b, shift = tr["batch_size"], self.local_batch, tr["augment_shift"]
        epoch_start = {"batches": self.batch_gen.get_state(), "augment": self.aug_gen.get_state()}
        # The whole epoch's order and shifts in one draw each, copied to the device once.
        order = torch.randperm(len(self.train_y), generator=self.batch_gen).to(device)
        offsets = (shift_offsets(B, shift, self.aug_gen, batches=self.steps_per_epoch).to(device)
                   if shift else None)
        rotate, scale = tr["augment_rotate"], tr["augment_scale"]
        affine = (affine_draws(B, rotate, scale, self.aug_gen, batches=self.steps_per_epoch).to(device)
                  if rotate or scale else None)  # drawn after the shifts: runs without it replay as before
        mine = slice(ctx.rank * b, (ctx.rank + 1) * b)  # this rank's share of each global batch
        self.model.train()
        bar = Progress(self.steps_per_epoch, f"epoch {self.epoch + 1}/{tr['epochs']}", every=tr["log_every"],
                       stream=self.stream, start=self.skip)
        partial, t0 = self.partial, time.perf_counter()

        def shown():
            seen = max(partial["seen"], 1)
            if self.generative:
                return {"loss": partial["loss"].item() / seen,
                        **{name: v.item() / seen for name, v in partial["terms"].items()}}
            return {"loss": partial["loss"].item() / seen, "acc": partial["correct"].item() / seen}

        for i in range(self.skip, self.steps_per_epoch):
            idx = order[i * B:(i + 1) * B][mine]
            xb, yb = self.train_x.index_select(0, idx), self.train_y.index_select(0, idx)
            if shift:
                xb = shift_images(xb, offsets[i][:, mine], shift)
            if affine is not None:
                xb = affine_images(xb, affine[i][:, mine])
            if self.generative:
                extras = {"index": idx, "labels": yb}
                loss, terms = self.forward(self.model.prepare(
                    xb, train=True, **{name: extras[name] for name in self.prepare_extras}))
            else:
                logits = self.forward(model_input(self.spec, self.hyper, xb, self.channels_last))
                loss = F.cross_entropy(logits.float(), yb, label_smoothing=tr["label_smoothing"])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tr["grad_clip"] > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), tr["grad_clip"])
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            with torch.no_grad():  # on the device: reading them would wait for the GPU every step
                partial["loss"] += loss.detach().double() * len(yb)
                if self.generative:
                    for name, value in terms.items():
                        total = partial["terms"].setdefault(name, torch.zeros((), dtype=torch.float64, device=device))
                        total += value.detach().double() * len(yb)
                else:
                    partial["correct"] += (logits.detach().argmax(-1) == yb).sum()
            partial["seen"] += len(yb)
            bar.update(len(yb), shown)
            # A batch boundary: model, optimizer, scheduler and position agree.
            signum = self._stop_requested(stop)
            if signum or (tr["checkpoint_every"] and self.step % tr["checkpoint_every"] == 0
                          and i + 1 < self.steps_per_epoch):
                self._checkpoint(i + 1, epoch_start, partial["time"] + time.perf_counter() - t0)
            if signum:
                bar.close()
                raise self._interrupted(signum, i + 1)
        bar.close()
        self.skip = 0
        train_time = partial["time"] + time.perf_counter() - t0
        term_names = list(partial["terms"])
        sums = torch.stack([partial["loss"], partial["correct"].double(), *partial["terms"].values()])
        seen = torch.tensor([float(partial["seen"])], device=device)
        ctx.sum_(sums, seen)
        if ctx.is_main:
            seen_n = max(seen.item(), 1)
            record = {"epoch": self.epoch + 1, "step": self.step, "train_loss": sums[0].item() / seen_n}
            if self.generative:
                record.update({f"train_{name}": v / seen_n for name, v in zip(term_names, sums[2:].tolist())})
            else:
                record["train_acc"] = sums[1].item() / seen_n
            every, last = tr["eval_every"], self.epoch + 1 == tr["epochs"]
            if every and ((self.epoch + 1) % every == 0 or last):
                if self.generative:
                    val = evaluate_generative(self.model, self.val_x, device, tr["eval_batch_size"])
                    record.update(val_loss=val["loss"], **{f"val_{name}": v for name, v in val["terms"].items()})
                else:
                    val = evaluate(self.model, self.spec, self.hyper, self.val_x, self.val_y, device,
                                   tr["eval_batch_size"], self.channels_last)
                    record.update(val_loss=val["loss"], val_acc=val["acc"])
            record.update(lr=self.optimizer.param_groups[0]["lr"], epoch_time_s=train_time,
                          samples_per_s=seen_n / max(train_time, 1e-9), world_size=ctx.world_size)
            self.log.append(record)
            print(f"epoch {self.epoch + 1}: {self._epoch_text(record, term_names)} | {train_time:.1f}s",
                  file=self.stream)
        self.epoch += 1
        self.partial = partial = _restore_partial({"loss": 0.0, "correct": 0, "seen": 0, "time": 0.0},
                                                  device, True)
        self._checkpoint(0, {"batches": self.batch_gen.get_state(), "augment": self.aug_gen.get_state()}, 0.0)
        signum = self._stop_requested(stop)
        if signum:
            raise self._interrupted(signum, 0)


    def _epoch_text(self, record: dict, term_names: list[str]) -> str:
        if not self.generative:
            val_text = (f" | val loss {record['val_loss']:.4f} acc {record['val_acc']:.4f}"
                        if "val_acc" in record else "")
            return f"train loss {record['train_loss']:.4f} acc {record['train_acc']:.4f}{val_text}"

        def part(prefix):
            terms = ", ".join(f"{name} {record[f'{prefix}_{name}']:.2f}" for name in term_names
                              if f"{prefix}_{name}" in record)
            return f"{prefix} loss {record[f'{prefix}_loss']:.4f}" + (f" ({terms})" if terms else "")

        return part("train") + (f" | {part('val')}" if "val_loss" in record else "")


def _version() -> str:
    from .. import __version__
    return __version__


def evaluate_run(out_dir, device=None, model=None, settings=None, checkpoint=None, stream=None) -> dict:
    """Evaluate on the untouched 10k test set; writes eval.json and the plots into ``out_dir``."""
    stream = stream or sys.stderr
    out = Path(out_dir)
    if model is None:
        model, spec, settings, device = load_run_model(checkpoint or out / CHECKPOINT_NAME, device)
    spec = registry.get(settings["model"])
    tr = settings["train"]
    test_x, test_y = load_split("test", tr["data_dir"])
    if spec.generative:
        summary = _evaluate_generative_run(out, model, spec, settings, device, test_x, test_y, stream)
    else:
        summary = _evaluate_classifier_run(out, model, spec, settings, device, test_x, test_y, stream)
    summary["plots"].extend(str(p) for p in model_pictures(model, spec, settings, test_x, test_y, out, stream))
    write_report(out)
    return summary


def load_run_model(checkpoint, device=None):
    """(model, spec, settings, device) from a last.pt or a run folder."""
    state = load_checkpoint(checkpoint)
    settings = state["settings"]
    device = device or resolve_device(settings["train"]["device"])
    spec = registry.get(settings["model"])
    model = build_model(spec, settings["hyper"], device)
    try:
        model.load_state_dict(state["model_state"])
    except RuntimeError as exc:
        raise CheckpointError(f"{checkpoint} does not fit model {spec.name} with its saved settings: "
                              f"{_one_line(exc)}") from None
    return model, spec, settings, device


_VIEW_NOTES = {"image": "the 28×28 image", "flat": "784 pixels at once", "rows": "28 rows of 28 pixels, a row a step",
               "pixels": "784 pixels, one a step", "patches": "patches of the image, one a token"}


def model_pictures(model, spec, settings, test_x, test_y, out_dir, stream=None) -> list[Path]:
    """Every picture of a trained model (not the run's curves): its architecture, the model's own
    pictures (its registry ``plots`` hook), the fast and slow units of MTRNN-based models, and, for
    classifiers, the 2-D embedding of the penultimate features. Drawn after a run's evaluation and
    by ``pyneuro viz``."""
    from ..nn import MTRNN
    from ..viz.architecture import plot_architecture
    from ..viz.embedding import plot_embedding
    from ..viz.mtrnn import plot_unit_activity

    out = Path(out_dir)
    hyper = settings["hyper"]
    view = input_view(spec, hyper)
    device = next(model.parameters(), torch.empty(0)).device
    probe = torch.zeros(2, 28, 28, dtype=torch.uint8, device=device)
    example = model.prepare(probe, train=False) if spec.generative else model_input(spec, hyper, probe)
    pictures = [("architecture", lambda: [plot_architecture(model, example, out / "architecture.png", title=spec.name,
                                                            input_note=_VIEW_NOTES.get(view, view))])]
    hook = spec.plot_function()
    if hook is not None:
        pictures.append((f"{spec.name}'s own pictures",
                         lambda: hook(model, test_x, test_y, out, title=spec.name, view=view)))
    if not spec.generative:
        if any(isinstance(m, MTRNN) for m in model.modules()):
            pictures.append(("units", lambda: [plot_unit_activity(model, test_x, test_y, out / "units.png",
                                                                  title=spec.name, view=view)]))
        pictures.append(("embedding", lambda: [plot_embedding(model, test_x, test_y, out / "embedding.png",
                                                              title=spec.name, view=view)]))
    paths = []
    for name, draw in pictures:
        # A picture that does not fit a model's settings (a cnn built without conv layers has no
        # filters to show) is skipped with the reason: it must not fail a run that trained.
        try:
            paths.extend(draw())
        except ValueError as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            print(f"pyneuro: note: {name} not drawn: {reason}", file=stream or sys.stderr)
    return [Path(p) for p in paths]


def write_report(out_dir) -> Path:
    """The run's report.html (settings, metrics, every picture), beside its files."""
    from ..viz.report import write_report as write

    return write(out_dir)


def _evaluate_generative_run(out, model, spec, settings, device, test_x, test_y, stream) -> dict:
    from ..viz import plots

    tr = settings["train"]
    t0 = time.perf_counter()
    res = evaluate_generative(model, test_x, device, tr["eval_batch_size"])
    summary = {"model": spec.name, "task": spec.task, "test_loss": res["loss"], "test_terms": res["terms"],
               "n_test": len(test_x), "device": str(device), "world_size": settings.get("world_size", 1)}
    own = getattr(model, "evaluate", None)
    if own is not None:
        def progress(total):
            return Progress(total, f"evaluating {spec.name}", every=max(1, total // 20), stream=stream)

        extra = own(test_x, test_y, progress=progress)
        clash = set(extra) & set(summary)
        if clash:
            raise ValueError(f"model {spec.name}: evaluate() returned keys the trainer writes itself: {sorted(clash)}")
        summary.update(extra)
    summary["settings"] = settings
    atomic_write_text(out / "eval.json", json.dumps(summary, indent=2) + "\n")
    figures = {k: v for k, v in summary.items() if k.endswith("_nats") or k.endswith("_acc")}
    shown = "  ".join(f"{k} {v:.2f}" for k, v in (figures or res["terms"]).items())
    print(f"test ({spec.name}): loss {res['loss']:.4f}  {shown}  ({len(test_x):,} images, "
          f"{time.perf_counter() - t0:.1f}s)", file=stream)
    records = MetricsLog(out / "metrics.jsonl").read()
    summary["plots"] = [str(p) for p in plots.generative_run_plots(out, records, title=spec.name)]
    return summary


def _evaluate_classifier_run(out, model, spec, settings, device, test_x, test_y, stream) -> dict:
    from ..viz import plots

    tr = settings["train"]
    t0 = time.perf_counter()
    res = evaluate(model, spec, settings["hyper"], test_x, test_y, device, tr["eval_batch_size"])
    cm = confusion_matrix(test_y, res["preds"])
    report = classification_report(cm)
    # Nothing time- or machine-dependent beyond the device: a resumed run writes the same bytes.
    summary = {"model": spec.name, "test_acc": res["acc"], "test_loss": res["loss"], "n_test": len(test_y),
               "device": str(device), "world_size": settings.get("world_size", 1),
               "report": report, "confusion_matrix": cm.tolist(), "settings": settings}
    atomic_write_text(out / "eval.json", json.dumps(summary, indent=2) + "\n")
    print(format_report(report), file=stream)
    print(f"test accuracy ({spec.name}): {res['acc'] * 100:.2f}%  ({len(test_y):,} images, "
          f"{time.perf_counter() - t0:.1f}s)", file=stream)
    nan = float("nan")  # epochs without a validation pass leave gaps in the curves
    records = [{"val_loss": nan, "val_acc": nan, **r} for r in MetricsLog(out / "metrics.jsonl").read()]
    summary["plots"] = [str(p) for p in plots.run_plots(out, records, cm, test_x, test_y, res["preds"],
                                                         res["probs"], title=spec.name)]
    return summary
