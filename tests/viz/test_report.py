"""report.html of a run folder: self-contained, escaped, complete, and written for any folder state.

The run folders here are fakes in the formats pyneuro/train/loop.py writes (settings.json,
metrics.jsonl, eval.json, PNGs), small enough to build in milliseconds; the browser test
(test_report_browser.py) reuses them."""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pyneuro.viz.report import REPORT_NAME, format_number, run_pictures, write_report  # noqa: E402

HOSTILE = "<script>alert('x')</script> & \"quoted\""


def tiny_png(path: Path, seed: int = 0) -> Path:
    """A real (decodable) 20x20 PNG, as a plot would leave it."""
    fig = plt.figure(figsize=(1, 1), dpi=20)
    fig.figimage(np.random.default_rng(seed).random((20, 20)), cmap="gray")
    fig.savefig(path, dpi=20)
    plt.close(fig)
    return path


def _settings(model: str, preset) -> dict:
    return {"model": model, "preset": preset,
            "hyper": {"hidden_size": 16, "sizes": [8, 4], "note": HOSTILE},
            "train": {"epochs": 3, "batch_size": 32, "lr": 0.001, "data_dir": None, "compile": False},
            "world_size": 1}


def _write_metrics(run: Path, records: list[dict]) -> None:
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def classifier_run(folder: Path, epochs: int = 3, pictures=("predictions", "curves", "units", "confusion",
                                                             "attention")) -> Path:
    """A finished classifier run: settings, ``epochs`` metrics records, eval.json and pictures."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps(_settings("gru", "pixels")), encoding="utf-8")
    _write_metrics(folder, [{"epoch": e, "step": 100 * e, "train_loss": 1.0 / e, "train_acc": 0.5 + 0.1 * e,
                             "val_loss": 1.1 / e, "val_acc": 0.45 + 0.1 * e, "lr": 1e-3 / e,
                             "epoch_time_s": 12.5, "samples_per_s": 2500.0, "world_size": 1}
                            for e in range(1, epochs + 1)])
    per_class = {str(c): {"precision": 0.97, "recall": 0.98, "f1": 0.975, "support": 1000} for c in range(10)}
    evaluation = {"model": "gru", "test_acc": 0.975, "test_loss": 0.08, "n_test": 10000, "device": "cpu",
                  "world_size": 1, "report": {"per_class": per_class,
                                              "macro_avg": {"precision": 0.97, "recall": 0.98, "f1": 0.975},
                                              "accuracy": 0.975},
                  "confusion_matrix": [[1000 if i == j else 0 for j in range(10)] for i in range(10)],
                  "settings": _settings("gru", "pixels")}
    (folder / "eval.json").write_text(json.dumps(evaluation), encoding="utf-8")
    for seed, name in enumerate(pictures):
        tiny_png(folder / f"{name}.png", seed)
    return folder


def generative_run(folder: Path, epochs: int = 2) -> Path:
    """A finished VAE-like run: loss terms in nats instead of an accuracy."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps(_settings("vae", None)), encoding="utf-8")
    _write_metrics(folder, [{"epoch": e, "step": 50 * e, "train_loss": 120.0 - e, "train_recon_nats": 90.0 - e,
                             "train_kl_nats": 30.0, "lr": 1e-3, "epoch_time_s": 3.0, "samples_per_s": 900.0,
                             "world_size": 1} for e in range(1, epochs + 1)])
    evaluation = {"model": "vae", "task": "generate", "test_loss": 94.19,
                  "test_terms": {"neg_elbo_nats": 94.18, "recon_nats": 72.42, "kl_nats": 21.76},
                  "n_test": 10000, "device": "cpu", "world_size": 1,
                  "iw_nll_nats": 90.55, "neg_elbo_nats": 94.18, "iw_samples": 1000}
    (folder / "eval.json").write_text(json.dumps(evaluation), encoding="utf-8")
    for seed, name in enumerate(("curves", "samples", "latent", "reconstructions")):
        tiny_png(folder / f"{name}.png", seed)
    return folder


class PageParts(HTMLParser):
    """What the tests look at in a report: image sources, every URL-like attribute, the number of
    body rows of each table (by id) and the visible text."""

    def __init__(self, page: str):
        super().__init__()
        self.images, self.references, self.text = [], [], []
        self.rows: dict[str, int] = {}
        self._table, self._in_body = None, False
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.references += [v for k, v in attrs.items() if k in ("src", "href", "action", "data") and v]
        if tag == "img":
            self.images.append(attrs.get("src"))
        elif tag == "table":
            self._table = attrs.get("id", "")
            self.rows[self._table] = 0
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._table is not None:
            self.rows[self._table] += 1

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        self.text.append(data)


def _read(report: Path) -> tuple[str, PageParts]:
    page = report.read_text(encoding="utf-8")
    return page, PageParts(page)


def test_classifier_report(tmp_path):
    run = classifier_run(tmp_path / "run")
    tiny_png(run / ".curves.png.tmp.png")  # a plot mid-write: not a picture of the run
    report = write_report(run)
    assert report == run / REPORT_NAME and report.is_file()
    page, parts = _read(report)
    text = " ".join(parts.text)
    assert "gru (preset pixels)" in text
    assert "97.50%" in text
    assert parts.rows["epochs"] == 3
    assert parts.rows["class-report"] == 10 + 2  # ten digits, macro average, accuracy
    assert (parts.rows["settings-run"], parts.rows["settings-hyper"], parts.rows["settings-train"]) == (3, 3, 5)
    assert parts.images == ["curves.png", "confusion.png", "predictions.png", "attention.png", "units.png"]
    assert not list(run.glob(f".{REPORT_NAME}*")), "the temporary file of the atomic write was left behind"


def test_every_image_resolves_beside_the_report(tmp_path):
    run = classifier_run(tmp_path / "run")
    tiny_png(run / "my picture #2.png")  # a name that must be quoted in a URL
    report = write_report(run)
    _, parts = _read(report)
    assert len(parts.images) == 6
    for src in parts.images:
        assert not Path(src).is_absolute() and "/" not in src, src
        assert (report.parent / unquote(src)).is_file(), src


@pytest.mark.parametrize("make_run", [classifier_run, generative_run])
def test_fully_offline(tmp_path, make_run):
    """No reference leaves the folder: no http(s) anywhere, no scripts, no external stylesheets."""
    page, parts = _read(write_report(make_run(tmp_path / "run")))
    assert not re.search(r"https?://", page, re.IGNORECASE)
    assert not [r for r in parts.references if r.startswith("//") or ":" in r]
    assert "<script" not in page and "<link" not in page and "@import" not in page


def test_text_from_the_run_is_escaped(tmp_path):
    run = classifier_run(tmp_path / "run")
    page, parts = _read(write_report(run))
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quoted&quot;" in page
    assert HOSTILE in " ".join(parts.text)  # and reads back as written


def test_generative_report(tmp_path):
    page, parts = _read(write_report(generative_run(tmp_path / "run", epochs=2)))
    text = " ".join(parts.text)
    assert "Test loss" in text and "94.19" in text
    for figure in ("iw_nll_nats", "neg_elbo_nats", "recon_nats", "kl_nats"):
        assert figure in text
    assert parts.rows["nats"] == 4  # the model's own figures and the loss terms, each once
    assert "class-report" not in parts.rows
    assert parts.rows["epochs"] == 2
    assert parts.images[0] == "curves.png" and parts.images[1:] == ["latent.png", "reconstructions.png",
                                                                     "samples.png"]


def test_not_evaluated_yet(tmp_path):
    """A run still training: no eval.json, no pictures; the page says so instead of failing."""
    run = classifier_run(tmp_path / "run", pictures=())
    (run / "eval.json").unlink()
    page, parts = _read(write_report(run))
    text = " ".join(parts.text)
    assert "not evaluated yet" in text.lower()
    assert parts.rows["epochs"] == 3 and parts.images == []
    assert "class-report" not in parts.rows


def test_an_empty_folder_and_damaged_files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    text = " ".join(_read(write_report(empty))[1].text)
    assert "not evaluated yet" in text.lower() and "No metrics yet" in text

    run = classifier_run(tmp_path / "run")
    (run / "eval.json").write_text("{ cut short", encoding="utf-8")
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"epoch": 4, "trai')  # a line cut by a crash
    page, parts = _read(write_report(run))
    assert "eval.json could not be read" in " ".join(parts.text)
    assert parts.rows["epochs"] == 3


def test_settings_from_eval_json(tmp_path):
    """eval.json keeps a copy of the settings: a folder that lost settings.json still shows them."""
    run = classifier_run(tmp_path / "run")
    (run / "settings.json").unlink()
    _, parts = _read(write_report(run))
    assert parts.rows["settings-hyper"] == 3 and "gru (preset pixels)" in parts.text


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_run_dir_must_be_a_folder(tmp_path, kind):
    target = tmp_path / "nowhere"
    if kind == "file":
        target.write_text("not a run", encoding="utf-8")
    with pytest.raises(ValueError, match="run_dir=.*nowhere.* is not a directory"):
        write_report(target)


def test_pictures_order(tmp_path):
    for name in ("zeta", "confusion", "alpha", "curves"):
        tiny_png(tmp_path / f"{name}.png")
    assert [p.name for p in run_pictures(tmp_path)] == ["curves.png", "confusion.png", "alpha.png", "zeta.png"]


@pytest.mark.parametrize("value, shown", [
    (7800, "7,800"), (0.975, "0.9750"), (2.3352894, "2.335"), (208.249, "208.2"), (2559.47, "2,559.5"),
    (1e-6, "1e-06"), (0.00036, "0.00036"), (0.001, "0.001"), (0.0993, "0.09930"), (0.0, "0"),
    (999.99, "1000"), (float("nan"), "nan"), (True, "true"),
])
def test_format_number(value, shown):
    assert format_number(value) == shown
