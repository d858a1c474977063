"""Model registry shared by main.py, the CLI and the tests.

Each entry names a builder, the MNIST view it consumes, its default hyper-parameters (which are
also the schema `config.json` is validated against) and the training settings it prefers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
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

    def build(self, **overrides) -> nn.Module:
        unknown = set(overrides) - set(self.defaults)
        if unknown:
            raise ValueError(f"model {self.name!r}: unknown hyper-parameter(s) {sorted(unknown)}; "
                             f"valid: {sorted(self.defaults)}")
        return self.builder(**{**self.defaults, **overrides})


MODELS: dict[str, ModelSpec] = {}


def register(name: str, *, view: str, description: str, defaults: dict, train_defaults: dict | None = None):
    """Decorator: @register("cnn", view="image", ...) on a builder(**hyper_parameters)."""

    def wrap(builder):
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        MODELS[name] = ModelSpec(name, builder, view, description, dict(defaults), dict(train_defaults or {}))
        return builder

    return wrap


def get(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(MODELS)}") from None


def names() -> list[str]:
    return list(MODELS)
