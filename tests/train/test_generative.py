"""The training path for generative models (registry task "generate"), on a tiny random MNIST: the
loss terms in the metrics and eval.json instead of accuracy, the model's own evaluation and pictures,
re-evaluation and resume giving the same figures, and a second generative model plugging in."""
from __future__ import annotations

import io
import json
import shutil

import pytest
import torch
import torch.nn as nn

from pyneuro.models import registry
from pyneuro.train import loop
from pyneuro.train.config import ConfigError, resolve

VAE_FIGURES = ("neg_elbo_nats", "iw_nll_nats", "kl_nats", "recon_nats")
TERMS = ("neg_elbo_nats", "recon_nats", "kl_nats")


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def tiny_vae(data, *extra) -> dict:
    return resolve("vae", None, ["model.hidden=[16]", "model.latent_dim=2", "model.iw_samples=20", "model.iw_batch=7",
                                 "train.batch_size=32", "train.epochs=2", "train.threads=1", 'train.device="cpu"',
                                 f"train.data_dir={json.dumps(str(data))}", *extra])


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_vae_run_end_to_end(tiny_data, tmp_path):
    stream = io.StringIO()
    summary = loop.train(tiny_vae(tiny_data), tmp_path, stream=stream)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["task"] == "generate" and saved["model"] == "vae" and saved["n_test"] == 60
    assert not {"test_acc", "report", "confusion_matrix"} & set(saved)
    for key in VAE_FIGURES:
        assert 0 < saved[key] < 1000, key  # positive nats per image; ~543 for an untrained model
    assert saved["recon_nats"] + saved["kl_nats"] == pytest.approx(saved["neg_elbo_nats"])
    # The k-sample bound is tighter than the ELBO (up to the ELBO's own sampling error).
    assert saved["iw_nll_nats"] < saved["neg_elbo_nats"] + 0.5 and saved["iw_samples"] == 20
    assert set(saved["test_terms"]) == set(TERMS) and saved["test_loss"] == pytest.approx(
        saved["test_terms"]["neg_elbo_nats"])
    assert summary["neg_elbo_nats"] == saved["neg_elbo_nats"]

    records = _records(tmp_path)
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert {"train_loss", *(f"train_{t}" for t in TERMS), "val_loss", *(f"val_{t}" for t in TERMS)} <= set(r)
        assert "train_acc" not in r and "val_acc" not in r
        assert r["train_recon_nats"] + r["train_kl_nats"] == pytest.approx(r["train_neg_elbo_nats"])

    names = {p.rsplit("/", 1)[-1] for p in summary["plots"]}
    assert names == {"curves.png", "architecture.png", "reconstructions.png", "samples.png", "latent.png", "manifold.png"}
    assert all((tmp_path / n).stat().st_size > 1000 for n in names)
    text = stream.getvalue()
    assert "evaluating vae" in text and "iw_nll_nats" in text and "acc" not in text


def test_reevaluation_writes_the_same_figures(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr("pyneuro.viz.plots.generative_run_plots", lambda *a, **k: [])
    monkeypatch.setattr("pyneuro.viz.vae.vae_pictures", lambda *a, **k: [])
    loop.train(tiny_vae(tiny_data, "train.epochs=1"), tmp_path / "run", stream=io.StringIO())
    again = loop.evaluate_run(tmp_path / "again", checkpoint=tmp_path / "run" / "last.pt", stream=io.StringIO())
    first = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert json.loads((tmp_path / "again" / "eval.json").read_text()) == first
    assert again["iw_nll_nats"] == first["iw_nll_nats"]


def test_resume_mid_epoch_matches_the_uninterrupted_run(tiny_data, tmp_path, monkeypatch):
    """The epoch's running loss terms are part of the checkpoint: a run resumed from a mid-epoch
    checkpoint logs and evaluates exactly what the uninterrupted one did."""
    monkeypatch.setattr("pyneuro.viz.plots.generative_run_plots", lambda *a, **k: [])
    monkeypatch.setattr("pyneuro.viz.vae.vae_pictures", lambda *a, **k: [])
    kept = tmp_path / "step10.pt"
    real_save = loop.save_checkpoint

    def keep_step_10(state, path):
        real_save(state, path)
        if state["step"] == 10:
            shutil.copy(path, kept)

    monkeypatch.setattr(loop, "save_checkpoint", keep_step_10)
    settings = tiny_vae(tiny_data, "train.checkpoint_every=5", "train.eval_every=0")
    loop.train(settings, tmp_path / "straight", stream=io.StringIO())
    state = torch.load(kept, weights_only=True)
    assert (state["epoch"], state["batch_in_epoch"]) == (1, 3) and set(state["partial_epoch"]["terms"]) == set(TERMS)

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(kept, resumed / "last.pt")
    (resumed / "metrics.jsonl").write_text((tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    loop.train(None, resumed, resume=True, stream=io.StringIO())
    straight, again = _records(tmp_path / "straight"), _records(resumed)
    drop = ("epoch_time_s", "samples_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in again] == \
        [{k: v for k, v in r.items() if k not in drop} for r in straight]
    assert json.loads((resumed / "eval.json").read_text()) == json.loads(
        (tmp_path / "straight" / "eval.json").read_text())


# -- the interface, with a second generative model --------------------------------------------------
class PixelPrior(nn.Module):
    """Independent Bernoulli pixels with learned logits: the smallest generative model, standing in
    for the next one (e.g. PV-RNN) to show what the trainer asks of it."""

    def __init__(self, width=1):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(784 * width))
        self.seen_prepare = []

    def prepare(self, images, train):
        self.seen_prepare.append(train)
        return images.reshape(len(images), 784).float() / 255

    def forward(self, x):
        nll = nn.functional.binary_cross_entropy_with_logits(self.logits.expand_as(x), x, reduction="none").sum(-1)
        return nll.mean(), {"nll_nats": nll.mean(), "mean_logit": self.logits.mean()}

    def evaluate(self, images, labels, progress=None):
        bar = progress(2)
        bar.update(len(images) // 2, {"half": 1})
        bar.update(len(images) - len(images) // 2)
        bar.close()
        return {"completion_acc": 0.5, "n_labels": len(labels)}


@pytest.fixture
def pixel_prior(monkeypatch):
    drawn = []

    def pictures(model, images, labels, out_dir, title, view):
        drawn.append((title, view, len(images)))
        path = out_dir / "own.png"
        path.write_bytes(b"png")
        return [path]

    registry.register("pixelprior", view="rows", task="generate", description="test model",
                      defaults={"width": 1}, plots=pictures)(PixelPrior)
    yield drawn
    del registry.MODELS["pixelprior"]


def test_a_second_generative_model_plugs_in(pixel_prior, tiny_data, tmp_path):
    settings = resolve("pixelprior", None, ["train.batch_size=32", "train.epochs=1", "train.threads=1",
                                            'train.device="cpu"', f"train.data_dir={json.dumps(str(tiny_data))}"])
    stream = io.StringIO()
    summary = loop.train(settings, tmp_path, stream=stream)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["completion_acc"] == 0.5 and saved["n_labels"] == 60
    assert set(saved["test_terms"]) == {"nll_nats", "mean_logit"}
    record = _records(tmp_path)[0]
    assert {"train_nll_nats", "train_mean_logit", "val_nll_nats"} <= set(record)
    assert pixel_prior == [("pixelprior", "rows", 60)] and str(tmp_path / "own.png") in summary["plots"]
    assert "completion_acc 0.50" in stream.getvalue()


def test_a_generative_forward_must_return_loss_and_terms(monkeypatch):
    class Logits(PixelPrior):
        def forward(self, x):
            return x

    class VectorTerms(PixelPrior):
        def forward(self, x):
            return x.sum(), {"per_image": x.sum(-1)}

    for cls, message in ((Logits, "returns Tensor, expected a \\(loss, terms dict\\) pair"),
                         (VectorTerms, "not scalar: \\['per_image'\\]")):
        spec = registry.ModelSpec("bad", cls, "rows", "bad", {"width": 1}, {}, "generate")
        with pytest.raises(ConfigError, match=message):
            loop.build_model(spec, {"width": 1}, torch.device("cpu"))


def test_registry_task_kinds():
    assert "vae" in registry.names(task="generate") and "vae" not in registry.names(task="classify")
    assert "cnn" in registry.names(task="classify")
    assert set(registry.names()) == set(registry.names(task="classify")) | set(registry.names(task="generate"))
    assert registry.get("vae").generative and not registry.get("cnn").generative
    with pytest.raises(ValueError, match="task must be one of"):
        registry.register("x", view="rows", description="", defaults={}, task="cluster")
    with pytest.raises(ValueError, match="task: expected one of"):
        registry.names(task="cluster")
    with pytest.raises(ValueError, match="plots must be 'module:function'"):
        registry.register("x", view="rows", description="", defaults={}, plots="pyneuro.viz.vae")
