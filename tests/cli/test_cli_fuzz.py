"""Hypothesis throws random --set values and random config files at `pyneuro train`. The answer is
a run (exit 0) or exactly one error line with exit status 2: never a traceback, never another code.

The runs are real (tiny CNN, tiny random data set); only the epochs are capped at 1 after the
settings were checked, and the plots skipped, so that a fuzzed `epochs=40` stays quick."""
from __future__ import annotations

import json
import string

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyneuro import cli
from pyneuro.models import registry
from pyneuro.train import loop
from pyneuro.train.config import TRAIN_DEFAULTS

BASE = ["train", "--model", "cnn", "--device", "cpu", "--overwrite", "--set", "model.channels=[4,8]",
        "--set", "model.convs_per_block=1", "--set", "model.hidden=8", "--set", "train.batch_size=25",
        "--set", "train.threads=1"]
CNN_KEYS = sorted(registry.get("cnn").defaults)

# Mostly near the edges of the accepted ranges, plus values far outside them and of every JSON type.
numbers = st.one_of(st.integers(-3, 40), st.sampled_from([0, -1, 2**31, 2**63, 10**6, -10**9]),
                    st.floats(allow_nan=True, allow_infinity=True),
                    st.floats(-2.0, 2.0))
scalars = st.one_of(numbers, st.booleans(), st.none(), st.text(string.printable, max_size=6))
values = st.one_of(scalars, st.lists(st.one_of(st.integers(-2, 16), st.text(max_size=2), st.none(), st.floats()),
                                     max_size=4),
                   st.dictionaries(st.text(max_size=3), scalars, max_size=2))
keys = st.one_of(st.sampled_from([f"train.{k}" for k in TRAIN_DEFAULTS]),
                 st.sampled_from([f"model.{k}" for k in CNN_KEYS] + CNN_KEYS + list(TRAIN_DEFAULTS)),
                 st.text(string.ascii_letters + "._", max_size=12), st.text(max_size=6))


def _plausible(default):
    """Values of the right type, mostly inside the accepted range: these reach the training loop."""
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.integers(-1, 12)
    if isinstance(default, float):
        return st.one_of(st.floats(-0.1, 1.2), st.sampled_from([0.0, 1e-3, 0.5, 0.999]))
    if isinstance(default, list):
        return st.lists(st.integers(0, 12), max_size=3)
    if isinstance(default, str):
        return st.sampled_from(["auto", "cpu", "cuda", "adamw", "sgd", "onecycle", "cosine", "constant", "x"])
    return st.one_of(st.none(), st.text(max_size=4))


SCHEMA = {**{f"train.{k}": v for k, v in TRAIN_DEFAULTS.items() if k != "data_dir"},
          **{f"model.{k}": v for k, v in registry.get("cnn").defaults.items()}}
plausible = st.sampled_from(sorted(SCHEMA)).flatmap(
    lambda k: _plausible(SCHEMA[k]).map(lambda v: f"{k}={json.dumps(v)}"))
overrides = st.one_of(plausible, plausible,
                      st.tuples(keys, st.one_of(values.map(json.dumps), st.text(max_size=8))).map("=".join))


@pytest.fixture(autouse=True)
def _quick_runs(monkeypatch):
    real_train = loop.train

    def capped(settings, out, **kw):
        if settings is not None and "train" in settings and "epochs" in settings["train"]:
            settings["train"]["epochs"] = 1
        return real_train(settings, out, **kw)

    monkeypatch.setattr(loop, "train", capped)
    monkeypatch.setattr("pyneuro.viz.plots.run_plots", lambda *a, **k: [])
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _answer(capsys, argv) -> None:
    code = cli.main(argv)  # an exception escaping here fails the test: that would be a traceback
    captured = capsys.readouterr()
    if code == 0:
        assert json.loads(captured.out.strip().splitlines()[-1])["model"] == "cnn"
        return
    lines = captured.err.strip().splitlines()
    assert code == 2, (code, captured.err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("pyneuro: error: "), captured.err[-2000:]


FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.mark.slow
@FUZZ
@given(sets=st.lists(overrides, min_size=1, max_size=3))
def test_random_set_values(sets, micro_data, tmp_path, capsys):
    # The fuzzed values override the base settings; the data folder stays (the real MNIST is slow).
    data = ["--set", f"train.data_dir={json.dumps(str(micro_data))}", "--out", str(tmp_path / "run")]
    _answer(capsys, [*BASE, *[a for s in sets for a in ("--set", s)], *data])


train_sections = st.fixed_dictionaries({}, optional={
    **{k: st.one_of(_plausible(v), values) for k, v in TRAIN_DEFAULTS.items() if k != "data_dir"},
    "no_such_key": values})
hyper = {k: st.one_of(_plausible(v), values) for k, v in registry.get("cnn").defaults.items()}
model_sections = st.fixed_dictionaries({}, optional={
    "train": train_sections, **hyper,
    "presets": st.dictionaries(st.sampled_from(["fast", "", "a b"]),
                               st.fixed_dictionaries({}, optional={"train": train_sections, **hyper}), max_size=2)})
configs = st.one_of(
    st.fixed_dictionaries({}, optional={"train": train_sections, "cnn": model_sections, "lstm": values,
                                        "nope": values}).map(json.dumps),
    st.fixed_dictionaries({"cnn": model_sections}).map(json.dumps),
    values.map(json.dumps),
    st.text(max_size=30))


@FUZZ
@given(text=configs, preset=st.sampled_from([None, "fast"]))
def test_random_config_files(text, preset, micro_data, tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(text, encoding="utf-8")
    argv = [*BASE, "--config", str(path), "--set", f"train.data_dir={json.dumps(str(micro_data))}",
            "--out", str(tmp_path / "run")]
    _answer(capsys, argv + (["--preset", preset] if preset else []))
