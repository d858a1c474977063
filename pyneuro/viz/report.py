"""A run folder as one static web page: report.html beside the run's pictures.

The page is for reading a run without Python or a network: the result first, then the pictures,
the per-class report, the metrics of every epoch and the settings. Everything it needs is in the
file (an inline stylesheet, no scripts, fonts or CDNs) or beside it (the PNGs, by relative path),
so the folder can be copied, zipped or served as it is. Every text taken from the run is escaped:
settings are user input. A run still training, or never evaluated, still gets a page that says so.
"""
from __future__ import annotations

import datetime
import html
import json
import math
import re
from pathlib import Path
from urllib.parse import quote

from ..train.checkpoint import atomic_write_text
from ..train.metrics import MetricsLog

REPORT_NAME = "report.html"

# The pictures every run draws, in reading order; a model's own pictures follow alphabetically.
LEADING_PICTURES = ("curves", "confusion", "predictions")
CAPTIONS = {
    "curves": "Training curves: loss (and accuracy or the loss terms) per epoch, train and validation.",
    "confusion": "Confusion matrix on the test set: rows are the true digits, columns the predictions.",
    "predictions": "Test digits with their predictions; wrong ones are framed in red.",
    "architecture": "The model's layers in the order the forward pass calls them, with their output shapes.",
    "attention": "Attention from the class token over the patches, per layer and head.",
    "completions": "Half-seen test digits, completed by the model, beside the originals.",
    "embedding": "Test digits' penultimate features projected to 2-D, coloured by class.",
    "feature_maps": "The activation maps of each convolutional layer for one test digit.",
    "filters": "The first convolutional layer's filters.",
    "gates": "The first recurrent layer's hidden state and gates at every step of a few digits.",
    "generations": "Digits generated from the prior, one row per class.",
    "kernels": "The learned S4D convolution kernels and how fast they decay.",
    "latent": "The test set in latent space, coloured by class.",
    "manifold": "The decoder over a grid of the 2-D latent space.",
    "meta_prior": "Meta-prior sweep: reconstruction against KL, and generations per weight.",
    "reconstructions": "Test inputs above their reconstructions.",
    "samples": "Digits sampled from the prior.",
    "selectivity": "Mamba's input-dependent step size per channel over the rows, and the size of its state.",
    "units": "Activity of the fast and slow units while the model reads a few digits.",
    "weights": "Each first-layer unit's 784 input weights as a 28×28 image: the template it matches.",
}

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328; margin: 0;
       background: #f6f8fa; }
main { max-width: 1100px; margin: 0 auto; padding: 1.5em 2em 3em; background: #fff; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: 0.2em; margin-top: 1.8em; }
.meta, .note, figcaption { color: #59636e; }
.headline { font-size: 1.3em; }
.headline strong { font-size: 1.4em; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #d0d7de; padding: 0.25em 0.6em; text-align: left; }
thead th { background: #f6f8fa; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.summary td { font-weight: 600; background: #f6f8fa; }
.scroll { overflow-x: auto; }
.settings { display: flex; flex-wrap: wrap; gap: 0 2.5em; align-items: flex-start; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
code { font-size: 0.92em; }
"""


def write_report(run_dir) -> Path:
    """Write ``report.html`` into the run folder ``run_dir`` (atomically) and return its path."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ValueError(f"run_dir={str(run_dir)!r} is not a directory (expected a run folder "
                         f"written by `pyneuro train`)")
    evaluation, eval_problem = _read_json(run / "eval.json")
    settings, settings_problem = _read_json(run / "settings.json")
    if settings is None and evaluation is not None:  # eval.json keeps a copy of the settings
        settings = evaluation.get("settings")
    records = MetricsLog(run / "metrics.jsonl").read()
    pictures = run_pictures(run)

    evaluated_on = None
    if evaluation is not None:
        evaluated_on = datetime.datetime.fromtimestamp((run / "eval.json").stat().st_mtime)
    title = _title(run, settings, evaluation)
    sections = [
        _section("result", "Result", _result(evaluation, eval_problem)),
        _section("pictures", "Pictures", _pictures(pictures)),
    ]
    if evaluation is not None and isinstance(evaluation.get("report"), dict):
        sections.append(_section("per-class", "Per-class report (test set)", _class_report(evaluation["report"])))
    sections += [
        _section("metrics", "Metrics per epoch", _metrics(records)),
        _section("settings", "Settings", _settings(settings, settings_problem)),
    ]
    when = f"evaluated {evaluated_on:%Y-%m-%d %H:%M}" if evaluated_on else "not evaluated yet"
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{_e(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n"
        f"<h1>{_e(title)}</h1>\n<p class=\"meta\">Run folder <code>{_e(run.resolve().name)}</code> &middot; "
        f"{_e(when)}</p>\n" + "".join(sections) + "</main>\n</body>\n</html>\n"
    )
    path = run / REPORT_NAME
    atomic_write_text(path, page)
    return path


def run_pictures(run: Path) -> list[Path]:
    """The run's PNGs: the standard ones first, then the rest by name. Hidden files are a plot's
    temporary file mid-write, not a picture."""
    found = {p.stem: p for p in run.glob("*.png") if p.is_file() and not p.name.startswith(".")}
    leading = [found.pop(stem) for stem in LEADING_PICTURES if stem in found]
    return leading + sorted(found.values(), key=lambda p: p.name)


def format_number(value) -> str:
    """Numbers as a reader wants them: integers whole (thousands separated); floats to four
    significant digits, trailing zeros kept so a column's digits line up; small ones (learning
    rates) to three, without padding; non-finite ones spelled out."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.1f}"
    if abs(value) >= 0.01:
        return f"{value:#.4g}".rstrip(".")  # 999.99 rounds to "1000."
    return f"{value:.3g}"


# -- reading -----------------------------------------------------------------------------------

def _read_json(path: Path) -> tuple[dict | None, str | None]:
    """(contents, None), or (None, why not): a missing or damaged file is reported, not raised."""
    if not path.exists():
        return None, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{path.name} could not be read: {exc}"
    if not isinstance(data, dict):
        return None, f"{path.name} does not hold a JSON object"
    return data, None


def _title(run: Path, settings: dict | None, evaluation: dict | None) -> str:
    model = (settings or {}).get("model") or (evaluation or {}).get("model") or run.resolve().name
    preset = (settings or {}).get("preset")
    return f"{model} (preset {preset})" if preset else str(model)


# -- rendering ---------------------------------------------------------------------------------

def _e(value) -> str:
    return html.escape(str(value))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value, exact: bool = False) -> str:
    """One table cell: numbers right-aligned (``exact``: as written, for settings a user typed),
    lists and the like as JSON, None as a dash."""
    if value is None:
        return "<td>&ndash;</td>"
    if isinstance(value, bool):
        return f"<td>{_e(format_number(value))}</td>"
    if _is_number(value):
        return f"<td class=\"num\">{_e(json.dumps(value) if exact else format_number(value))}</td>"
    if isinstance(value, str):
        return f"<td>{_e(value)}</td>"
    return f"<td><code>{_e(json.dumps(value))}</code></td>"


def _table(header: list[str], rows: list[list], table_id: str = "", summary_rows: int = 0,
           exact: bool = False) -> str:
    """A table; the last ``summary_rows`` rows are set off as totals; ``exact``: see _cell."""
    ident = f" id=\"{_e(table_id)}\"" if table_id else ""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        css = " class=\"summary\"" if i >= len(rows) - summary_rows else ""
        body.append(f"<tr{css}>" + "".join(_cell(v, exact) for v in row) + "</tr>")
    return (f"<div class=\"scroll\"><table{ident}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n"
            + "\n".join(body) + "\n</tbody>\n</table></div>\n")


def _section(ident: str, heading: str, body: str) -> str:
    return f"<section id=\"{_e(ident)}\">\n<h2>{_e(heading)}</h2>\n{body}</section>\n"


def _note(text: str) -> str:
    return f"<p class=\"note\">{_e(text)}</p>\n"


def _result(evaluation: dict | None, problem: str | None) -> str:
    if evaluation is None:
        return _note(problem or "Not evaluated yet: the run folder holds no eval.json "
                                "(`pyneuro eval --checkpoint RUN_DIR` writes it from last.pt).")
    n_test = evaluation.get("n_test")
    images = f" on {format_number(n_test)} test images" if _is_number(n_test) else ""
    if _is_number(evaluation.get("test_acc")):
        loss = evaluation.get("test_loss")
        loss_text = f", test loss {format_number(loss)}" if _is_number(loss) else ""
        out = (f"<p class=\"headline\">Test accuracy <strong>{evaluation['test_acc'] * 100:.2f}%</strong>"
               f"{_e(images)}{_e(loss_text)}</p>\n")
        shown = {"test_acc", "test_loss", "n_test"}
    else:
        figures = _nats_figures(evaluation)
        loss = evaluation.get("test_loss")
        out = "<p class=\"headline\">Test loss "
        out += f"<strong>{_e(format_number(loss))}</strong> nats per image" if _is_number(loss) else "missing"
        out += f"{_e(images)}</p>\n"
        if figures:
            out += _table(["figure (test set)", "nats per image"], [[k, v] for k, v in figures.items()], "nats")
        shown = {"test_loss", "n_test", "test_terms", *figures}
    details = {k: v for k, v in evaluation.items()
               if k not in shown and k not in ("model", "settings", "report", "confusion_matrix")
               and not isinstance(v, (dict, list))}
    if details:
        out += "<h3>Evaluation details</h3>\n" + _table(["key", "value"], [[k, v] for k, v in details.items()],
                                                        "details")
    return out


def _nats_figures(evaluation: dict) -> dict:
    """A generative run's figures in nats: those the model reported itself, then the loss terms."""
    figures = {k: v for k, v in evaluation.items() if k.endswith("_nats") and _is_number(v)}
    terms = evaluation.get("test_terms")
    if isinstance(terms, dict):
        figures.update({k: v for k, v in terms.items() if k not in figures and _is_number(v)})
    return figures


def _pictures(pictures: list[Path]) -> str:
    if not pictures:
        return _note("No pictures yet: they are drawn when the run is evaluated.")
    out = []
    for picture in pictures:
        caption = CAPTIONS.get(picture.stem, picture.stem.replace("_", " ").capitalize() + ".")
        anchor = "picture-" + re.sub(r"[^A-Za-z0-9_-]+", "-", picture.stem)
        out.append(f"<figure id=\"{anchor}\">\n"
                   f"<img src=\"{_e(quote(picture.name))}\" alt=\"{_e(caption)}\">\n"
                   f"<figcaption>{_e(caption)} <code>{_e(picture.name)}</code></figcaption>\n</figure>\n")
    return "".join(out)


def _class_report(report: dict) -> str:
    """Per-digit precision, recall, F1 and support; the macro averages and the accuracy below
    (the accuracy in the F1 column, as scikit-learn prints it)."""
    per_class = report.get("per_class", {})
    rows = [[digit, r.get("precision"), r.get("recall"), r.get("f1"), r.get("support")]
            for digit, r in per_class.items()]
    supports = [r.get("support") for r in per_class.values()]
    total = sum(supports) if supports and all(_is_number(s) for s in supports) else None
    summary = []
    macro = report.get("macro_avg")
    if isinstance(macro, dict):
        summary.append(["macro average", macro.get("precision"), macro.get("recall"), macro.get("f1"), total])
    if _is_number(report.get("accuracy")):
        summary.append(["accuracy", None, None, report["accuracy"], total])
    return _table(["class", "precision", "recall", "F1", "support"], rows + summary, "class-report", len(summary))


def _metrics(records: list[dict]) -> str:
    if not records:
        return _note("No metrics yet: metrics.jsonl is missing or empty (the first epoch has not ended).")
    columns = list(dict.fromkeys(k for r in records for k in r))
    return _table(columns, [[r.get(k) for k in columns] for r in records], "epochs")


def _settings(settings: dict | None, problem: str | None) -> str:
    """The run's settings as written: the top-level ones, the model's hyper-parameters and the
    training settings, side by side."""
    if settings is None:
        return _note(problem or "No settings.json in the run folder.")
    groups = {"hyper": "Model hyper-parameters", "train": "Training"}
    nested = {key for key in groups if isinstance(settings.get(key), dict)}
    tables = [("Run", "run", {k: v for k, v in settings.items() if k not in nested})]
    tables += [(groups[key], key, settings[key]) for key in groups if key in nested]
    out = [f"<div>\n<h3>{_e(heading)}</h3>\n"
           + _table(["setting", "value"], [[k, v] for k, v in values.items()], f"settings-{ident}", exact=True)
           + "</div>\n" for heading, ident, values in tables if values]
    return "<div class=\"settings\">\n" + "".join(out) + "</div>\n"
