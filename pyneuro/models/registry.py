"""Model registry shared by main.py, the CLI and the tests.

Each entry names a builder, the MNIST view it consumes, its default hyper-parameters (which are
also the schema `config.json` is validated against) and the training settings it prefers, its task
kind and, optionally, its own pictures.

Task kinds (``TASKS``):

- ``"classify"``: ``model(view batch)`` returns (B, 10) logits; the trainer reports accuracy.
- ``"generate"``: the model brings its own objective, and the trainer reports its terms:
    ``model.prepare(images, train)``: uint8 (B, 28, 28) on the model's device -> the batch that
        ``forward`` takes (``train=False``: the deterministic version used for validation and test);
        a ``prepare`` that names the keywords ``index`` and/or ``labels`` also gets, for training
        batches only, the images' positions in the training split (int64 (B,): per-sequence
        parameters, e.g. PV-RNN's adaptive vectors) and their labels;
    ``model(batch)`` -> ``(loss, terms)``: the scalar loss to minimise and a dict of named scalar
        tensors, each a mean per image in nats (they go to the metrics, the progress bar, eval.json);
    ``model.evaluate(images, labels, progress=None) -> dict`` (optional): the model's own test
        figures, merged into eval.json (``progress(total_updates)`` gives a bar: ``update(n_images, fields)``,
        ``close()``).

``plots``: "module:function" (imported only when pictures are drawn) or a callable, called after
the test evaluation as ``fn(model, images, labels, out_dir, title=..., view=...)`` with the uint8
test images; it returns the paths of the pictures it wrote.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import importlib
from typing import Any, Callable

import torch.nn as nn


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    view: str                      # one of pyneuro.data.VIEWS
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)        # model hyper-parameters
    train_defaults: dict[str, Any] = field(default_factory=dict)  # overrides of the shared train section
    task: str = "classify"         # one of TASKS
    plots: str | Callable | None = None  # the model's own pictures (see the module docstring)

    @property
    def generative(self) -> bool:
        return self.task == "generate"

    def plot_function(self) -> Callable | None:
        """The ``plots`` hook as a callable (importing its module), or None."""
        if self.plots is None or callable(self.plots):
            return self.plots
        module, _, name = self.plots.partition(":")
        return getattr(importlib.import_module(module), name)

    def build(self, **overrides) -> nn.Module:
        unknown = set(overrides) - set(self.defaults)
        if unknown:
            raise ValueError(f"model {self.name!r}: unknown hyper-parameter(s) {sorted(unknown)}; "
                             f"valid: {sorted(self.defaults)}")
        return self.builder(**{**self.defaults, **overrides})


TASKS = ("classify", "generate")
MODELS: dict[str, ModelSpec] = {}


def register(name: str, *, view: str, description: str, defaults: dict, train_defaults: dict | None = None,
             task: str = "classify", plots: str | Callable | None = None):
    """Decorator: @register("cnn", view="image", ...) on a builder(**hyper_parameters)."""
    if task not in TASKS:
        raise ValueError(f"model {name!r}: task must be one of {TASKS}, got {task!r}")
    if isinstance(plots, str) and ":" not in plots:
        raise ValueError(f"model {name!r}: plots must be 'module:function' or a callable, got {plots!r}")

    def wrap(builder):
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        MODELS[name] = ModelSpec(name, builder, view, description, dict(defaults), dict(train_defaults or {}),
                                 task, plots)
        return builder

    return wrap


def get(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(MODELS)}") from None


def names(task: str | None = None) -> list[str]:
    """Every registered model, or those of one task kind."""
    if task is not None and task not in TASKS:
        raise ValueError(f"task: expected one of {TASKS} or None, got {task!r}")
    return [n for n, spec in MODELS.items() if task is None or spec.task == task]
