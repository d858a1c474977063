"""`pyneuro train` and `pyneuro eval` on a generative model (the vae), on a tiny random MNIST."""
from __future__ import annotations

import json

import pytest
import torch

from pyneuro import cli

FIGURES = {"neg_elbo_nats", "iw_nll_nats", "kl_nats", "recon_nats"}


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _tiny_vae(data) -> list[str]:
    sets = ["model.hidden=[16]", "model.latent_dim=3", "model.iw_samples=10", "train.batch_size=50",
            "train.threads=1", f"train.data_dir={json.dumps(str(data))}"]
    return ["--model", "vae", "--device", "cpu", "--epochs", "1", *[a for s in sets for a in ("--set", s)]]


def test_train_then_eval_a_vae(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", *_tiny_vae(tiny_data), "--out", str(run)]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out.strip().splitlines()[-1])
    assert printed["model"] == "vae" and printed["task"] == "generate" and "test_acc" not in printed
    assert FIGURES <= set(printed) and all(printed[k] > 0 for k in FIGURES)
    assert {p.rsplit("/", 1)[-1] for p in printed["plots"]} >= {"curves.png", "reconstructions.png", "samples.png",
                                                                 "latent.png"}
    assert "evaluating vae" in captured.err

    other = tmp_path / "other"
    assert cli.main(["eval", "--checkpoint", str(run), "--out", str(other)]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again == {k: v for k, v in printed.items() if k != "plots"}
    assert json.loads((other / "eval.json").read_text()) == json.loads((run / "eval.json").read_text())


def test_models_lists_the_task(capsys):
    assert cli.main(["models"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("vae "))
    assert "task: generate" in line
