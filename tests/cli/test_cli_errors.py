"""Every user mistake on the `pyneuro train` command line is one clear line and exit status 2."""
from __future__ import annotations

import json

import pytest
import torch

from pyneuro import cli
from pyneuro.train.checkpoint import CHECKPOINT_FORMAT

TINY = ["--model", "cnn", "--set", "model.channels=[4,8]", "--set", "model.convs_per_block=1",
        "--set", "model.hidden=8", "--set", "train.batch_size=32", "--device", "cpu", "--epochs", "1",
        "--set", "train.threads=1"]


@pytest.fixture(autouse=True)
def _no_plots_and_threads(monkeypatch):
    monkeypatch.setattr("pyneuro.viz.plots.run_plots", lambda *a, **k: [])
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def one_error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pyneuro: error: "), err
    return err[0]


def _data(tiny_data) -> list[str]:
    return ["--set", f"train.data_dir={json.dumps(str(tiny_data))}"]


@pytest.fixture(scope="module")
def finished_run(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "cnn"
    threads = torch.get_num_threads()
    try:
        assert cli.main(["train", *TINY, *_data(tiny_data), "--out", str(run)]) == 0
    finally:
        torch.set_num_threads(threads)
    return run


def test_resume_with_another_model(finished_run, capsys):
    line = one_error(capsys, ["train", "--resume", str(finished_run), "--model", "lstm"])
    assert "holds a 'cnn' run, not 'lstm'" in line


def test_resume_with_the_same_model_and_more_epochs(finished_run, capsys):
    assert cli.main(["train", "--resume", str(finished_run), "--model", "cnn", "--epochs", "2"]) == 0
    assert torch.load(finished_run / "last.pt", weights_only=True)["epoch"] == 2


def test_resume_without_a_checkpoint(tmp_path, capsys):
    assert "no such run folder" in one_error(capsys, ["train", "--resume", str(tmp_path / "absent")])
    (tmp_path / "empty").mkdir()
    assert "holds no last.pt" in one_error(capsys, ["train", "--resume", str(tmp_path / "empty")])


def test_resume_refuses_new_settings(finished_run, capsys):
    line = one_error(capsys, ["train", "--resume", str(finished_run), "--set", "train.lr=1"])
    assert "--set cannot be given with it" in line


def test_taken_out_without_overwrite(finished_run, tiny_data, capsys):
    line = one_error(capsys, ["train", *TINY, *_data(tiny_data), "--out", str(finished_run)])
    assert "already holds a run" in line and "--overwrite" in line


def test_checkpoint_of_an_incompatible_version(finished_run, tmp_path, capsys):
    old = tmp_path / "old"
    old.mkdir()
    state = torch.load(finished_run / "last.pt", weights_only=True)
    for fmt in (1, CHECKPOINT_FORMAT + 1):
        state["format"] = fmt
        torch.save(state, old / "last.pt")
        assert f"has format {fmt}" in one_error(capsys, ["train", "--resume", str(old)])


def test_checkpoint_that_does_not_fit_its_model(finished_run, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    state = torch.load(finished_run / "last.pt", weights_only=True)
    state["settings"]["hyper"]["hidden"] = 9
    torch.save(state, bad / "last.pt")
    assert "does not fit model cnn" in one_error(capsys, ["train", "--resume", str(bad)])
    assert "does not fit model cnn" in one_error(capsys, ["eval", "--checkpoint", str(bad)])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without a GPU")
def test_device_cuda_without_a_gpu(tiny_data, capsys):
    assert "sees no CUDA GPU" in one_error(capsys, ["train", *TINY, *_data(tiny_data), "--device", "cuda"])


@pytest.mark.parametrize("setting,message", [
    ("train.batch_size=0", "'batch_size' must be in [1, 1048576], got 0"),
    ("train.epochs=-1", "'epochs' must be in [1, 100000], got -1"),
    ("train.eval_batch_size=0", "'eval_batch_size' must be in [1,"),
    ("train.lr=NaN", "'lr' must be a finite number"),
    ("train.lr=0", "'lr' must be in (0.0, 10.0]"),
    ('model.channels=["a"]', "'channels[0]' must be an integer, got string 'a'"),
    ("model.channels=[8,-2]", "'channels[1]' must be in [1, 65536], got -2"),
    ("model.dropout=1.5", "'dropout' must be in [0.0, 1.0)"),
    # Valid one by one, not together: five 2x poolings leave no pixel of a 28x28 image.
    ("model.channels=[2,2,2,2,2]", "cannot read 'image' input"),
    ("train.batch_size=256", "more than the 250 training images"),
    ("train.train_subset=20", "more than the 20 training images (train.train_subset=20)"),
])
def test_out_of_range_settings(tiny_data, tmp_path, capsys, setting, message):
    line = one_error(capsys, ["train", *TINY, *_data(tiny_data), "--set", setting, "--out", str(tmp_path / "r")])
    assert message in line
    assert not (tmp_path / "r" / "last.pt").exists()


def test_unknown_preset_lists_the_valid_ones(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"cnn": {"presets": {"fast": {}, "wide": {"hidden": 256}}}}))
    line = one_error(capsys, ["train", "--model", "cnn", "--preset", "fastest"])
    assert "cnn has no such preset; valid presets: fast, wide" in line
    assert "valid presets: none" in one_error(capsys, ["train", "--model", "lstm", "--preset", "fast"])
    assert cli.main(["models"]) == 0
    assert "presets (config.json): fast, wide" in capsys.readouterr().out
