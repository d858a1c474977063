"""The s4d model: registry entry and views, config section and pixels preset, a short learning
test on real MNIST, and the kernel picture."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pyneuro.nn as pn
from pyneuro.data import to_view
from pyneuro.models import registry
from pyneuro.train import resolve, train
from pyneuro.train.config import read_config_file, validate_config
from pyneuro.viz.s4d import plot_kernels, s4d_pictures

REPO = Path(__file__).resolve().parents[2]
SMALL = {"d_model": 16, "n_layers": 2, "d_state": 8}


def _images(n=3):
    return torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_s4d_is_registered_on_rows_with_its_blocks_inside():
    spec = registry.get("s4d")
    assert spec.view == "rows" and spec.defaults["view"] == "rows"
    model = spec.build()
    layers = [m for m in model.modules() if isinstance(m, pn.S4D)]
    assert len(layers) == 4 and all((m.d_model, m.d_state) == (128, 64) for m in layers)
    assert model.encoder.in_features == 28
    assert model(to_view(_images(), "rows")).shape == (3, 10)


def test_pixels_view_reads_784_steps_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = registry.get("s4d").build(view="pixels", **SMALL)
    assert model.encoder.in_features == 1
    x = to_view(_images(2), "pixels")
    assert x.shape == (2, 784, 1)
    logits = model(x)
    assert logits.shape == (2, 10)
    logits.logsumexp(-1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_block_is_pre_norm_s4d_gelu_glu_with_a_residual():
    torch.manual_seed(0)
    block = registry.get("s4d").build(dropout=0.0, **SMALL).blocks[0].eval()
    h = torch.randn(2, 11, 16)
    inner = block.ssm(F.layer_norm(h, (16,), block.norm.weight, block.norm.bias))
    a, b = block.mix(F.gelu(inner)).chunk(2, dim=-1)
    torch.testing.assert_close(block(h), h + a * torch.sigmoid(b))


def test_mean_and_last_pooling_differ_and_bad_settings_are_named():
    torch.manual_seed(0)
    mean = registry.get("s4d").build(**SMALL).eval()
    last = registry.get("s4d").build(pool="last", **SMALL).eval()
    last.load_state_dict(mean.state_dict())
    x = to_view(_images(), "rows")
    h = mean.norm(mean.blocks[1](mean.blocks[0](mean.encoder(x))))
    torch.testing.assert_close(mean(x), mean.head(h.mean(1)))
    torch.testing.assert_close(last(x), mean.head(h[:, -1]))
    with pytest.raises(ValueError, match=r"s4d: pool must be one of \['mean', 'last'\], got 'max'"):
        registry.get("s4d").build(pool="max")
    with pytest.raises(ValueError, match=r"s4d: view must be one of \['rows', 'pixels'\], got 'image'"):
        registry.get("s4d").build(view="image")


def test_config_section_and_pixels_preset():
    config = validate_config(read_config_file(REPO / "config.json"))
    rows = resolve("s4d", config)
    assert rows["hyper"]["view"] == "rows" and rows["hyper"]["ssm_lr"] < rows["train"]["lr"]
    pixels = resolve("s4d", config, preset="pixels")
    assert pixels["hyper"]["view"] == "pixels" and pixels["train"]["grad_clip"] > 0
    registry.get("s4d").build(**{**pixels["hyper"], **SMALL})


# The bar of tests/models/test_models.py's learning table: on 8,192 images x 3 epochs a linear
# classifier reaches 0.910 on the test set, so 0.94 fails a model that degenerates to a linear
# read-out. Measured 0.963 (58 s on a loaded 2-core machine); d_model=32 gave only 0.914-0.941.
@pytest.mark.slow
def test_s4d_learns_an_mnist_subset(real_mnist, tmp_path, monkeypatch):
    monkeypatch.setattr("pyneuro.viz.plots.run_plots", lambda *args, **kwargs: [])
    settings = resolve("s4d", None, ["train.val_subset=500", "train.device=\"cpu\"", "train.augment_shift=0",
                                     "train.threads=1", "model.d_model=64", "model.n_layers=2", "model.d_state=16",
                                     "model.dropout=0.0", "train.lr=0.01", "train.train_subset=8192",
                                     "train.epochs=3", "train.batch_size=64"])
    threads = torch.get_num_threads()
    try:
        summary = train(settings, tmp_path, stream=io.StringIO())
    finally:
        torch.set_num_threads(threads)
    assert summary["test_acc"] > 0.94, f"s4d reached only {summary['test_acc']:.4f} (needs 0.94)"
    # the run's evaluation drew the kernels through the model's plots hook
    assert str(tmp_path / "kernels.png") in summary["plots"] and (tmp_path / "kernels.png").stat().st_size > 10_000


def test_kernel_picture_writes_a_png_for_each_view(tmp_path):
    torch.manual_seed(0)
    model = registry.get("s4d").build(**SMALL)
    (path,) = s4d_pictures(torch.nn.Sequential(model), _images(), torch.arange(3), tmp_path)
    assert path == tmp_path / "kernels.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = mpimg.imread(path)[..., :3]
    assert pixels.shape[0] > 400 and pixels.shape[1] > 400
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, "the plot is blank or nearly one colour"
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
    assert plot_kernels(model, tmp_path / "long.png", length=784).exists()
    with pytest.raises(ValueError, match="model: expected at least one pyneuro.nn.S4D layer inside, found 0"):
        plot_kernels(torch.nn.Linear(2, 2), tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"view: must be one of \['rows', 'pixels'\], got 'image'"):
        s4d_pictures(model, _images(), torch.arange(3), tmp_path, view="image")


def test_the_run_draws_the_kernel_picture_through_the_model_s_plots_hook(tmp_path):
    spec = registry.get("s4d")
    assert spec.plot_function() is s4d_pictures
