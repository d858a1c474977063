"""config.json: a shared ``train`` section and one section per model.

    {
      "train": {"batch_size": 128, "lr": 0.002, ...},          # shared training settings
      "cnn":   {"channels": [32, 64], ..., "train": {"epochs": 12}}   # hyper-parameters + overrides
    }

Precedence, lowest first: TRAIN_DEFAULTS, the model's registered train_defaults, the file's shared
``train``, the model section's ``train``, then command-line overrides. Every key is checked
against the defaults: an unknown key lists the valid ones, a wrong type names the key.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from ..models import registry

TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 10,
    "batch_size": 128,
    "eval_batch_size": 1000,
    "lr": 2e-3,                 # peak learning rate of the schedule
    "optimizer": "adamw",       # adamw | sgd
    "weight_decay": 0.01,
    "momentum": 0.9,            # sgd only
    "scheduler": "onecycle",    # onecycle | cosine | constant
    "warmup_frac": 0.15,        # onecycle: fraction of steps spent warming up
    "label_smoothing": 0.0,
    "grad_clip": 0.0,           # max gradient norm; 0 disables clipping
    "augment_shift": 0,         # random translation by up to this many pixels; 0 disables it
    "seed": 0,
    "device": "auto",           # auto | cpu | cuda
    "threads": 0,               # torch intra-op threads; 0 keeps torch's default
    "train_subset": 0,          # use only the first N training images (0 = all 50,000)
    "val_subset": 0,            # use only the first N validation images (0 = all 10,000)
    "data_dir": None,           # where MNIST files / the converted cache live (None = default)
    "log_every": 50,            # steps between progress-bar refreshes when not on a terminal
}

_CHOICES = {
    "optimizer": ("adamw", "sgd"),
    "scheduler": ("onecycle", "cosine", "constant"),
    "device": ("auto", "cpu", "cuda"),
}
_NULLABLE = {"data_dir": str}


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def _type_name(value) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "object", type(None): "null"}.get(type(value), type(value).__name__)


def _check_value(where: str, key: str, value, default):
    """Type-check ``value`` against the type of ``default``; ints pass where floats are expected."""
    if default is None:
        expected = _NULLABLE.get(key)
        if value is None or expected is None or isinstance(value, expected):
            return value
        raise ConfigError(f"{where}: key {key!r} must be a {_type_name(expected())} or null, "
                          f"got {_type_name(value)} {value!r}")
    ok = (isinstance(value, bool) if isinstance(default, bool)
          else isinstance(value, (int, float)) and not isinstance(value, bool) if isinstance(default, float)
          else isinstance(value, int) and not isinstance(value, bool) if isinstance(default, int)
          else isinstance(value, type(default)))
    if not ok:
        raise ConfigError(f"{where}: key {key!r} must be a {_type_name(default)}, "
                          f"got {_type_name(value)} {value!r}")
    if isinstance(default, float):
        value = float(value)
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigError(f"{where}: key {key!r} must be one of {list(_CHOICES[key])}, got {value!r}")
    return value


def _check_section(where: str, section, schema: dict) -> dict:
    if not isinstance(section, dict):
        raise ConfigError(f"{where} must be a JSON object, got {_type_name(section)}")
    unknown = sorted(set(section) - set(schema))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(schema)}")
    return {k: _check_value(where, k, v, schema[k]) for k, v in section.items()}


def read_config_file(path: str | Path) -> dict:
    """Parse and validate a config file; malformed JSON is reported with line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}: malformed JSON: {exc.msg}") from None
    return validate_config(raw, str(path))


def validate_config(raw, where: str = "config") -> dict:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level must be a JSON object, got {_type_name(raw)}")
    valid_top = ["train", *registry.names()]
    unknown = sorted(set(raw) - set(valid_top))
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {unknown}; valid sections: {valid_top}")
    out = {"train": _check_section(f"{where}: section 'train'", raw.get("train", {}), TRAIN_DEFAULTS)}
    for name in registry.names():
        if name not in raw:
            continue
        section = raw[name]
        if not isinstance(section, dict):
            raise ConfigError(f"{where}: section {name!r} must be a JSON object, got {_type_name(section)}")
        spec = registry.get(name)
        hyper = {k: v for k, v in section.items() if k != "train"}
        out[name] = _check_section(f"{where}: section {name!r}", hyper, spec.defaults)
        out[name]["train"] = _check_section(f"{where}: section {name!r}.train", section.get("train", {}),
                                            TRAIN_DEFAULTS)
    return out


def parse_override(text: str):
    """'key=value' -> (key, value); the value is JSON when it parses (2, 1e-3, [32,64], true), else a string."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, value = text.split("=", 1)
    key = key.strip()
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def resolve(model: str, config: dict | None = None, overrides: list[str] | tuple = ()) -> dict:
    """The run's settings: {"model": name, "hyper": {...}, "train": {...}}, fully validated.

    Override keys: ``train.KEY``, ``model.KEY`` (or ``<model>.KEY``), or a bare KEY when it is
    unambiguous (a training or a model key, not both)."""
    spec = registry.get(model)
    config = config or {}
    section = config.get(model, {})
    train = {**TRAIN_DEFAULTS, **spec.train_defaults, **config.get("train", {}), **section.get("train", {})}
    hyper = {**copy.deepcopy(spec.defaults), **{k: v for k, v in section.items() if k != "train"}}
    for text in overrides:
        key, value = parse_override(text)
        scope, _, name = key.rpartition(".")
        if scope in ("model", model):
            target, schema = hyper, spec.defaults
        elif scope == "train":
            target, schema = train, TRAIN_DEFAULTS
        elif scope:
            raise ConfigError(f"--set {key}: unknown scope {scope!r}; use train.KEY or model.KEY")
        elif name in TRAIN_DEFAULTS and name in spec.defaults:
            raise ConfigError(f"--set {key}: ambiguous, say train.{name} or model.{name}")
        elif name in TRAIN_DEFAULTS:
            target, schema = train, TRAIN_DEFAULTS
        elif name in spec.defaults:
            target, schema = hyper, spec.defaults
        else:
            raise ConfigError(f"--set {key}: unknown key; training keys: {sorted(TRAIN_DEFAULTS)}; "
                              f"{model} keys: {sorted(spec.defaults)}")
        if name not in schema:
            raise ConfigError(f"--set {key}: unknown key; valid: {sorted(schema)}")
        target[name] = _check_value(f"--set {key}", name, value, schema[name])
    return {"model": model, "hyper": hyper, "train": train}
