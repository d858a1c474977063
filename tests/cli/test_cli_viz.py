"""`pyneuro viz`: a trained run's pictures and report, redrawn from its checkpoint alone."""
from __future__ import annotations

import json

import matplotlib.image as mpimg

from pyneuro import cli

TINY_GRU = ["--model", "gru", "--set", "model.hidden_size=8", "--device", "cpu", "--set", "train.threads=1"]


def test_viz_redraws_every_picture_and_the_report(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", *TINY_GRU, "--set", f"train.data_dir={tiny_data}", "--epochs", "1",
                     "--out", str(run)]) == 0
    for name in ("architecture.png", "gates.png", "embedding.png", "report.html"):
        assert (run / name).exists(), f"training did not draw {name}"
        (run / name).unlink()
    capsys.readouterr()
    assert cli.main(["viz", str(run / "last.pt")]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["model"] == "gru"
    assert sorted(p.rsplit("/", 1)[-1] for p in printed["pictures"]) == [
        "architecture.png", "embedding.png", "gates.png", "report.html"]
    for name in ("architecture.png", "gates.png", "embedding.png"):
        assert mpimg.imread(run / name).shape[0] > 100, name
    assert 'src="gates.png"' in (run / "report.html").read_text()


def test_viz_into_another_folder_writes_no_report(tiny_data, tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "pictures"
    assert cli.main(["train", *TINY_GRU, "--set", f"train.data_dir={tiny_data}", "--epochs", "1",
                     "--out", str(run)]) == 0
    capsys.readouterr()
    assert cli.main(["viz", str(run), "--out", str(out)]) == 0
    assert (out / "architecture.png").exists() and not (out / "report.html").exists()


def test_viz_of_a_missing_run_is_a_one_line_error(tmp_path, capsys):
    assert cli.main(["viz", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyneuro: error:") and "nothing" in err and len(err.splitlines()) == 1


def test_a_picture_that_does_not_fit_the_model_is_a_note_not_a_failure(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--model", "cnn", "--set", "model.channels=[]", "--set", f"train.data_dir={tiny_data}",
                     "--set", "train.threads=1", "--epochs", "1", "--device", "cpu", "--out", str(run)]) == 0
    err = capsys.readouterr().err
    assert "pyneuro: note: cnn's own pictures not drawn: model: expected at least one nn.Conv2d" in err
    assert (run / "eval.json").exists() and (run / "architecture.png").exists() and (run / "report.html").exists()
