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


def test_results_table_prints_each_kind_from_real_run_folders(tiny_data, tmp_path, capsys):
    """scripts/results_table.py on what the trainer writes: a classifier without a validation pass
    (train+val) and a generative run (it used to fail looking for val_acc)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "results_table", Path(__file__).resolve().parents[2] / "scripts" / "results_table.py")
    results_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(results_table)

    vae, ann = tmp_path / "vae", tmp_path / "ann"
    assert cli.main(["train", *_tiny_vae(tiny_data), "--out", str(vae)]) == 0
    assert cli.main(["train", "--model", "ann", "--device", "cpu", "--epochs", "1", "--set", "train.threads=1",
                     "--set", "train.train_split=train+val", "--set", "train.eval_every=0",
                     "--set", f"train.data_dir={json.dumps(str(tiny_data))}",
                     "--out", str(ann)]) == 0
    capsys.readouterr()
    lines = results_table.tables([vae, ann]).splitlines()
    assert lines[0] == results_table.CLASSIFY_HEADER and lines[1].count("|") == lines[0].count("|")
    acc = json.loads((ann / "eval.json").read_text())["test_acc"]
    assert lines[2].startswith(f"| ann | **{100 * acc:.2f}%** | — | 1 | ")
    assert lines[3] == "" and lines[4] == results_table.GENERATE_HEADER
    assert lines[5].count("|") == lines[4].count("|")
    ev = json.loads((vae / "eval.json").read_text())
    cells = [c.strip() for c in lines[6].split("|")[1:-1]]
    assert cells[:5] == ["vae", f"**{ev['neg_elbo_nats']:.2f}**", f"{ev['iw_nll_nats']:.2f} (k=10)",
                         f"{ev['kl_nats']:.2f}", f"{ev['recon_nats']:.2f}"]
    assert cells[5] == "1" and cells[-1] == "cpu"
    with pytest.raises(SystemExit, match="no eval.json"):
        results_table.tables([tmp_path])
