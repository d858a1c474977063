"""config.json validation and override resolution."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyneuro.train.config import TRAIN_DEFAULTS, ConfigError, read_config_file, resolve, validate_config

REPO = Path(__file__).resolve().parents[2]


def test_shipped_config_is_valid_and_covers_every_model():
    from pyneuro.models import registry

    config = read_config_file(REPO / "config.json")
    assert set(registry.names()) <= set(config)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['epoch'\]; valid keys: .*'epochs'"):
        validate_config({"train": {"epoch": 3}})
    with pytest.raises(ConfigError, match=r"section 'cnn'.*unknown key\(s\) \['chanels'\].*'channels'"):
        validate_config({"cnn": {"chanels": [8]}})
    with pytest.raises(ConfigError, match=r"unknown section\(s\) \['cnnn'\]"):
        validate_config({"cnnn": {}})


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="key 'batch_size' must be an integer, got string"):
        validate_config({"train": {"batch_size": "128"}})
    with pytest.raises(ConfigError, match="key 'lr' must be a number, got boolean"):
        validate_config({"train": {"lr": True}})
    with pytest.raises(ConfigError, match="key 'optimizer' must be one of"):
        validate_config({"train": {"optimizer": "adam"}})
    with pytest.raises(ConfigError, match=r"section 'lstm'.train.*'epochs' must be an integer"):
        validate_config({"lstm": {"train": {"epochs": 1.5}}})


def test_int_accepted_where_float_expected():
    assert validate_config({"train": {"lr": 1}})["train"]["lr"] == 1.0


def test_malformed_json_reports_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "train": {\n    "lr": 0.1,,\n  }\n}\n')
    with pytest.raises(ConfigError, match=r"bad\.json:3:15: malformed JSON"):
        read_config_file(path)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        read_config_file(tmp_path / "absent.json")


def test_precedence_defaults_file_model_section_overrides():
    config = validate_config({"train": {"lr": 0.5, "batch_size": 32}, "cnn": {"hidden": 64, "train": {"lr": 0.25}}})
    s = resolve("cnn", config, ["train.batch_size=16", "dropout=0.5"])
    assert s["train"]["lr"] == 0.25            # model section beats shared section
    assert s["train"]["batch_size"] == 16      # command line beats both
    assert s["hyper"]["hidden"] == 64 and s["hyper"]["dropout"] == 0.5
    assert s["train"]["seed"] == TRAIN_DEFAULTS["seed"]


def test_override_errors():
    with pytest.raises(ConfigError, match="expects key=value"):
        resolve("cnn", None, ["lr"])
    with pytest.raises(ConfigError, match="unknown key; training keys"):
        resolve("cnn", None, ["nope=1"])
    with pytest.raises(ConfigError, match="'epochs' must be an integer"):
        resolve("cnn", None, ["train.epochs=abc"])
    assert resolve("cnn", None, ["model.channels=[8,16]"])["hyper"]["channels"] == [8, 16]


def test_preset_applies_after_the_file_and_before_set():
    config = validate_config({
        "train": {"lr": 0.5},
        "cnn": {"hidden": 64, "dropout": 0.3, "train": {"epochs": 5, "batch_size": 64},
                "presets": {"fast": {"hidden": 32, "train": {"epochs": 2, "lr": 0.25}}}}})
    s = resolve("cnn", config, ["train.epochs=3"], preset="fast")
    assert s["preset"] == "fast"
    assert s["hyper"]["hidden"] == 32 and s["hyper"]["dropout"] == 0.3   # preset over section, section kept
    assert s["train"]["lr"] == 0.25 and s["train"]["batch_size"] == 64   # preset over file
    assert s["train"]["epochs"] == 3                                      # --set over preset
    assert resolve("cnn", config, [])["hyper"]["hidden"] == 64            # no preset: untouched
    assert "presets" not in resolve("cnn", config, [])["hyper"]


def test_presets_are_checked_like_their_section():
    with pytest.raises(ConfigError, match=r"section 'cnn'.presets.fast: unknown key\(s\) \['hiden'\]"):
        validate_config({"cnn": {"presets": {"fast": {"hiden": 3}}}})
    with pytest.raises(ConfigError, match=r"presets.fast.train: key 'batch_size' must be in \[1, "):
        validate_config({"cnn": {"presets": {"fast": {"train": {"batch_size": 0}}}}})
    with pytest.raises(ConfigError, match="a preset cannot hold presets"):
        validate_config({"cnn": {"presets": {"fast": {"presets": {}}}}})
    with pytest.raises(ConfigError, match="presets must be a JSON object"):
        validate_config({"cnn": {"presets": ["fast"]}})
    with pytest.raises(ConfigError, match="preset name 'a b' must be"):
        validate_config({"cnn": {"presets": {"a b": {}}}})
    with pytest.raises(ConfigError, match=r"--preset 'slow': cnn has no such preset; valid presets: fast"):
        resolve("cnn", validate_config({"cnn": {"presets": {"fast": {}}}}), [], preset="slow")


def test_every_numeric_setting_has_a_range():
    from pyneuro.train import config as cfg

    numeric = {k for k, v in TRAIN_DEFAULTS.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert numeric == set(cfg._TRAIN_RANGES)
    with pytest.raises(ConfigError, match=r"'warmup_frac' must be in \[0.0, 1.0\), got 1.0"):
        validate_config({"train": {"warmup_frac": 1}})
    with pytest.raises(ConfigError, match=r"'hidden' must be in \[1, 65536\], got 100000"):
        validate_config({"cnn": {"hidden": 100000}})
    with pytest.raises(ConfigError, match=r"'channels\[1\]' must be an integer, got boolean True"):
        validate_config({"cnn": {"channels": [8, True]}})
    with pytest.raises(ConfigError, match=r"'backend' must be one of"):
        validate_config({"lstm": {"backend": "gpu"}})
    with pytest.raises(ConfigError, match=r"'weight_dropout' must be in \[0.0, 1.0\), got 1.0"):
        validate_config({"gru": {"weight_dropout": 1.0}})


def test_shipped_fast_preset_resolves():
    config = read_config_file(REPO / "config.json")
    s = resolve("cnn", config, [], preset="fast")
    assert s["train"]["eval_every"] == 0 and s["train"]["channels_last"] is True
    assert s["train"]["train_split"] == "train+val"  # the validation images are not needed: train on them


def test_training_on_the_validation_images_needs_no_validation_pass():
    with pytest.raises(ConfigError, match="train_split='train\\+val' trains on the validation images too"):
        resolve("cnn", None, ['train.train_split="train+val"'])
    assert resolve("cnn", None, ['train.train_split="train+val"', "train.eval_every=0"])["train"]["eval_every"] == 0
