"""The mtrnn model, the pixel-by-pixel view of lstm/gru/mtrnn, their config.json sections, and the
MTRNN unit-activity plot."""
from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pyneuro.nn as pn
from pyneuro.data import to_view
from pyneuro.models import registry
from pyneuro.train.config import read_config_file, resolve, validate_config
from pyneuro.viz.mtrnn import plot_unit_activity

REPO = Path(__file__).resolve().parents[2]
SMALL = {"mtrnn": {"fast_size": 12, "slow_size": 6}, "lstm": {"hidden_size": 8}, "gru": {"hidden_size": 8}}


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these small recurrent steps gain nothing from two, and on a busy machine
    each step's thread barrier can stall for a whole scheduler slice."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_mtrnn_is_registered_on_rows_with_its_layer_inside():
    spec = registry.get("mtrnn")
    assert spec.view == "rows" and spec.defaults["view"] == "rows"
    model = spec.build()
    assert isinstance(model.rnn, pn.MTRNN) and model.rnn.batch_first
    assert (model.rnn.fast_tau, model.rnn.slow_tau) == (2.0, 16.0)
    assert model(to_view(torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8), "rows")).shape == (3, 10)


def test_mtrnn_classifies_from_the_final_state():
    """The logits depend on the steps only through the final state: equal final states, equal logits."""
    torch.manual_seed(0)
    model = registry.get("mtrnn").build(**SMALL["mtrnn"]).eval()
    x = torch.randn(2, 28, 28)
    h, u_n = model.rnn(x)
    torch.testing.assert_close(model(x), model.head(model.norm(torch.tanh(u_n))))


def test_mtrnn_trains_a_few_steps_on_random_data_and_the_loss_falls():
    torch.manual_seed(0)
    model = registry.get("mtrnn").build(**SMALL["mtrnn"])
    x, y = torch.randn(32, 28, 28), torch.randint(0, 10, (32,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], f"loss went {losses[0]:.3f} -> {losses[-1]:.3f}"


@pytest.mark.parametrize("name", ["lstm", "gru", "mtrnn"])
def test_pixels_view_builds_a_one_feature_input_and_reads_784_steps(name):
    torch.manual_seed(0)
    spec = registry.get(name)
    assert spec.defaults["view"] == "rows"
    model = spec.build(view="pixels", **SMALL[name])
    assert model.rnn.input_size == 1
    x = to_view(torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8), "pixels")
    assert x.shape == (2, 784, 1)
    logits = model(x)
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert spec.build(**SMALL[name]).rnn.input_size == 28  # rows stays the default


@pytest.mark.parametrize("name", ["lstm", "gru", "mtrnn"])
def test_a_view_that_is_no_sequence_is_refused_by_name(name):
    with pytest.raises(ValueError, match=f"{name}: view must be one of \\['rows', 'pixels'\\], got 'image'"):
        registry.get(name).build(view="image")


def test_config_sections_and_pixels_presets():
    raw = read_config_file(REPO / "config.json")
    config = validate_config(raw)
    rows = resolve("mtrnn", config)
    assert rows["hyper"]["view"] == "rows" and rows["hyper"]["slow_tau"] > rows["hyper"]["fast_tau"]
    for name in ("lstm", "gru", "mtrnn"):
        pixels = resolve(name, config, preset="pixels")
        assert pixels["hyper"]["view"] == "pixels"
        assert pixels["train"]["grad_clip"] > 0  # 784 steps: clipping is not optional
        registry.get(name).build(**{**pixels["hyper"], **SMALL[name]})


def _mnist_like(n=12):
    torch.manual_seed(0)
    images = torch.zeros(n, 28, 28, dtype=torch.uint8)
    labels = torch.arange(n) % 4
    for i, label in enumerate(labels.tolist()):  # a bar per class at its own height
        images[i, 4 + 5 * label:8 + 5 * label, 6:22] = 255
    return images, labels


def test_unit_activity_plot_writes_a_png(tmp_path):
    model = registry.get("mtrnn").build(**SMALL["mtrnn"])
    images, labels = _mnist_like()
    model.train()
    path = plot_unit_activity(model, images, labels, tmp_path / "units.png", count=3)
    assert path == tmp_path / "units.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = mpimg.imread(path)[..., :3]
    assert pixels.shape[0] > 400 and pixels.shape[1] > 600
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, "the plot is blank or nearly one colour"
    assert model.training, "the plot must leave the model in the mode it found it in"
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_unit_activity_plot_reads_the_pixels_view_and_refuses_models_without_an_mtrnn(tmp_path):
    images, labels = _mnist_like(4)
    model = registry.get("mtrnn").build(view="pixels", fast_size=4, slow_size=2)
    wrapped = torch.nn.Sequential(model)  # as under DDP: the view is found on the module inside
    assert plot_unit_activity(wrapped, images, labels, tmp_path / "pixels.png", count=2).exists()
    with pytest.raises(ValueError, match="model: expected exactly one pyneuro.nn.MTRNN layer inside, found 0"):
        plot_unit_activity(registry.get("gru").build(hidden_size=4), images, labels, tmp_path / "x.png")

