"""config.json: a shared ``train`` section and one section per model.

    {
      "train": {"batch_size": 128, "lr": 0.002, ...},          # shared training settings
      "cnn":   {"channels": [32, 64], ..., "train": {"epochs": 12},   # hyper-parameters + overrides
                "presets": {"fast": {"channels": [24, 32], "train": {"batch_size": 512}}}}
    }

Precedence, lowest first: TRAIN_DEFAULTS, the model's registered train_defaults, the file's shared
``train``, the model section's ``train``, the chosen preset (``--preset NAME``: overrides of that
model section, nested like it), then command-line overrides. Every key is checked against the
defaults: an unknown key lists the valid ones, a wrong type or a value out of range names the key
and the accepted range. List elements are checked one by one.
"""
from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

from ..models import registry

TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 10,
    "batch_size": 128,          # the global batch: split across the processes of a torchrun launch
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
    "augment_rotate": 0.0,      # random rotation by up to this many degrees either way; 0 disables it
    "augment_scale": 0.0,       # random zoom by a factor in [1 - s, 1 + s]; 0 disables it
    "seed": 0,
    "device": "auto",           # auto | cpu | cuda
    "threads": 0,               # torch intra-op threads; 0 keeps torch's default
    "train_split": "train",     # train (50,000) | train+val (all 60,000: needs eval_every=0)
    "train_subset": 0,          # use only the first N training images (0 = all of train_split)
    "val_subset": 0,            # use only the first N validation images (0 = all 10,000)
    "data_dir": None,           # where MNIST files / the converted cache live (None = default)
    "log_every": 50,            # steps between progress-bar refreshes when not on a terminal
    "checkpoint_every": 0,      # steps between checkpoints inside an epoch; 0 = at epoch ends only
    "eval_every": 1,            # epochs between validation passes (the last epoch always); 0 = none
    "channels_last": False,     # NHWC activations for image models (faster convolutions on many CPUs)
    "compile": False,           # torch.compile the model (pays off for long runs, costs start-up time)
    "retain_freed_memory": True,  # Linux/glibc: malloc keeps freed memory for reuse (pyneuro.runtime)
}

_CHOICES = {
    "optimizer": ("adamw", "sgd"),
    "scheduler": ("onecycle", "cosine", "constant"),
    "device": ("auto", "cpu", "cuda"),
    "train_split": ("train", "train+val"),
}
_NULLABLE = {"data_dir": str}

_BIG = 1 << 30
# Accepted ranges, (low, high, how the ends count): "[]" both included, "(]" low excluded, "[)" high
# excluded. Upper bounds are far beyond any useful value; they turn a typo (an extra zero or ten)
# into an error instead of an hour-long run or an allocation that takes the machine down.
_TRAIN_RANGES = {
    "epochs": (1, 100_000, "[]"),
    "batch_size": (1, 1 << 20, "[]"),
    "eval_batch_size": (1, 1 << 20, "[]"),
    "lr": (0.0, 10.0, "(]"),
    "weight_decay": (0.0, 10.0, "[]"),
    "momentum": (0.0, 1.0, "[)"),
    "warmup_frac": (0.0, 1.0, "[)"),
    "label_smoothing": (0.0, 1.0, "[)"),
    "grad_clip": (0.0, 1e6, "[]"),
    "augment_shift": (0, 14, "[]"),
    "augment_rotate": (0.0, 180.0, "[]"),
    "augment_scale": (0.0, 0.5, "[]"),
    "seed": (0, 2**32 - 1, "[]"),
    "threads": (0, 1024, "[]"),
    "train_subset": (0, _BIG, "[]"),
    "val_subset": (0, _BIG, "[]"),
    "log_every": (1, _BIG, "[]"),
    "checkpoint_every": (0, _BIG, "[]"),
    "eval_every": (0, 100_000, "[]"),
}

# Model hyper-parameters: the registry's defaults give the type; these give the range. Integers
# not listed are sizes, counts or widths: in [1, _MAX_WIDTH] (from 0 when the default is 0); floats
# not listed must be finite and at most 1e6 in magnitude.
_MAX_WIDTH = 1 << 16
_HYPER_RANGES = {
    "dropout": (0.0, 1.0, "[)"),
    "weight_dropout": (0.0, 1.0, "[)"),
}
_HYPER_CHOICES = {
    "backend": ("auto", "reference", "cpu", "triton", "cuda"),
    "view": ("image", "rows", "patches", "pixels"),  # pyneuro.data.VIEWS (not imported: no torch here)
}
_MAX_LIST = 64
_PRESET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def _type_name(value) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "object", type(None): "null"}.get(type(value), type(value).__name__)


def _article(noun: str) -> str:
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _in_range(value, low, high, ends) -> bool:
    above = value > low if ends[0] == "(" else value >= low
    below = value < high if ends[1] == ")" else value <= high
    return above and below


def _check_range(where: str, key: str, value, bounds) -> None:
    low, high, ends = bounds
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: key {key!r} must be a finite number, got {value!r}")
    if not _in_range(value, low, high, ends):
        raise ConfigError(f"{where}: key {key!r} must be in {ends[0]}{low}, {high}{ends[1]}, got {value!r}")


def _hyper_bounds(key: str, default):
    name = key.split("[", 1)[0]  # list elements share their list's range
    if name in _HYPER_RANGES:
        return _HYPER_RANGES[name]
    if not _is_int(default):
        return (-1e6, 1e6, "[]")
    return (1 if default > 0 else 0 if default == 0 else -_MAX_WIDTH, _MAX_WIDTH, "[]")


def _check_value(where: str, key: str, value, default, *, hyper: bool = False):
    """Type- and range-check ``value`` against ``default``; ints pass where floats are expected."""
    if default is None:
        expected = _NULLABLE.get(key)
        if value is None or expected is None or isinstance(value, expected):
            return value
        raise ConfigError(f"{where}: key {key!r} must be {_article(_type_name(expected()))} or null, "
                          f"got {_type_name(value)} {value!r}")
    ok = (isinstance(value, bool) if isinstance(default, bool)
          else _is_number(value) if isinstance(default, float)
          else _is_int(value) if _is_int(default)
          else isinstance(value, type(default)))
    if not ok:
        raise ConfigError(f"{where}: key {key!r} must be {_article(_type_name(default))}, "
                          f"got {_type_name(value)} {value!r}")
    if isinstance(default, float):
        value = float(value)
    choices = (_HYPER_CHOICES if hyper else _CHOICES).get(key)
    if choices is not None and not isinstance(value, str):
        choices = None  # a list element of another type is reported by the type check above
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: key {key!r} must be one of {list(choices)}, got {value!r}")
    if isinstance(default, list):
        return _check_list(where, key, value, default, hyper)
    if _is_number(value):
        bounds = _hyper_bounds(key, default) if hyper else _TRAIN_RANGES.get(key)
        if bounds is not None:
            _check_range(where, key, value, bounds)
    return value


def _check_list(where: str, key: str, value: list, default: list, hyper: bool) -> list:
    """Each element has the type of the default's elements and lies in its range."""
    if len(value) > _MAX_LIST:
        raise ConfigError(f"{where}: key {key!r} holds {len(value)} elements, at most {_MAX_LIST} are allowed")
    if not default:
        return list(value)
    out = []
    for i, item in enumerate(value):
        out.append(_check_value(where, f"{key}[{i}]", item, default[0], hyper=hyper))
    return out


def _check_section(where: str, section, schema: dict, *, hyper: bool = False) -> dict:
    if not isinstance(section, dict):
        raise ConfigError(f"{where} must be a JSON object, got {_type_name(section)}")
    unknown = sorted(set(section) - set(schema))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(schema)}")
    return {k: _check_value(where, k, v, schema[k], hyper=hyper) for k, v in section.items()}


def _check_model_section(where: str, section, spec, *, allow_presets: bool) -> dict:
    if not isinstance(section, dict):
        raise ConfigError(f"{where} must be a JSON object, got {_type_name(section)}")
    hyper = {k: v for k, v in section.items() if k not in ("train", "presets")}
    out = _check_section(where, hyper, spec.defaults, hyper=True)
    out["train"] = _check_section(f"{where}.train", section.get("train", {}), TRAIN_DEFAULTS)
    if "presets" in section:
        if not allow_presets:
            raise ConfigError(f"{where}: a preset cannot hold presets")
        presets = section["presets"]
        if not isinstance(presets, dict):
            raise ConfigError(f"{where}.presets must be a JSON object of name -> overrides, "
                              f"got {_type_name(presets)}")
        out["presets"] = {}
        for name, preset in presets.items():
            if not _PRESET_NAME.match(name):
                raise ConfigError(f"{where}.presets: preset name {name!r} must be letters, digits, '_', '-' or '.'")
            out["presets"][name] = _check_model_section(f"{where}.presets.{name}", preset, spec,
                                                        allow_presets=False)
    return out


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
        if name in raw:
            out[name] = _check_model_section(f"{where}: section {name!r}", raw[name], registry.get(name),
                                             allow_presets=True)
    return out


def parse_override(text: str):
    """'key=value' -> (key, value); the value is JSON when it parses (2, 1e-3, [32,64], true), else a string."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, value = text.split("=", 1)
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z0-9_.]+", key):
        raise ConfigError(f"--set {text!r}: the key must be a name such as train.lr or model.hidden")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def preset_names(config: dict | None, model: str) -> list[str]:
    return sorted(((config or {}).get(model) or {}).get("presets", {}))


def resolve(model: str, config: dict | None = None, overrides: list[str] | tuple = (),
            preset: str | None = None) -> dict:
    """The run's settings: {"model", "preset", "hyper", "train"}, fully validated.

    ``preset`` names an entry of the model section's ``presets``; it applies after the file and
    before ``overrides``. Override keys: ``train.KEY``, ``model.KEY`` (or ``<model>.KEY``), or a
    bare KEY when it is unambiguous (a training or a model key, not both)."""
    spec = registry.get(model)
    config = config or {}
    section = config.get(model, {})
    chosen = {}
    if preset is not None:
        valid = preset_names(config, model)
        if preset not in valid:
            listed = ", ".join(valid) if valid else "none (presets live in config.json's model section)"
            raise ConfigError(f"--preset {preset!r}: {model} has no such preset; valid presets: {listed}")
        chosen = section["presets"][preset]
    hyper_of = lambda sec: {k: v for k, v in sec.items() if k not in ("train", "presets")}  # noqa: E731
    train = {**TRAIN_DEFAULTS, **spec.train_defaults, **config.get("train", {}), **section.get("train", {}),
             **chosen.get("train", {})}
    hyper = {**copy.deepcopy(spec.defaults), **hyper_of(section), **hyper_of(chosen)}
    for text in overrides:
        key, value = parse_override(text)
        scope, _, name = key.rpartition(".")
        if scope in ("model", model):
            target, schema, is_hyper = hyper, spec.defaults, True
        elif scope == "train":
            target, schema, is_hyper = train, TRAIN_DEFAULTS, False
        elif scope:
            raise ConfigError(f"--set {key}: unknown scope {scope!r}; use train.KEY or model.KEY")
        elif name in TRAIN_DEFAULTS and name in spec.defaults:
            raise ConfigError(f"--set {key}: ambiguous, say train.{name} or model.{name}")
        elif name in TRAIN_DEFAULTS:
            target, schema, is_hyper = train, TRAIN_DEFAULTS, False
        elif name in spec.defaults:
            target, schema, is_hyper = hyper, spec.defaults, True
        else:
            raise ConfigError(f"--set {key}: unknown key; training keys: {sorted(TRAIN_DEFAULTS)}; "
                              f"{model} keys: {sorted(spec.defaults)}")
        if name not in schema:
            raise ConfigError(f"--set {key}: unknown key; valid: {sorted(schema)}")
        target[name] = _check_value(f"--set {key}", name, value, schema[name], hyper=is_hyper)
    if train["train_split"] == "train+val" and train["eval_every"]:
        raise ConfigError("train.train_split='train+val' trains on the validation images too: set "
                          "train.eval_every=0 (no validation pass), or keep train_split='train'")
    return {"model": model, "preset": preset, "hyper": hyper, "train": train}
