"""Every registered model: output shape, gradient flow, and that each family learns MNIST."""
from __future__ import annotations

import json

import pytest
import torch

from pyneuro.data import to_view
from pyneuro.models import registry
from pyneuro.train import resolve, train


@pytest.mark.parametrize("name", registry.names())
def test_output_shape_and_gradient_flow(name):
    torch.manual_seed(0)
    spec = registry.get(name)
    model = spec.build()
    images = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    x = to_view(images, spec.view, patch_size=spec.defaults.get("patch_size", 7))
    logits = model(x)
    assert logits.shape == (4, 10)
    logits.logsumexp(-1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient reached {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient in {pname}"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


def test_registry_rejects_unknown_names_and_hyper_parameters():
    with pytest.raises(ValueError, match="unknown model 'nope'.*cnn"):
        registry.get("nope")
    with pytest.raises(ValueError, match="unknown hyper-parameter.*'widht'.*valid"):
        registry.get("cnn").build(widht=3)


# One learning test per family, on a real MNIST subset: well above the 10% of chance after a
# bounded number of steps (2 epochs over 4,096 images at batch 64: 128 steps).
SEQ = ["train.batch_size=64", "train.train_subset=4096"]
LEARNING = [
    ("cnn", ["model.channels=[16,32]", "model.convs_per_block=1"], 2, 0.85),
    ("ann", ["model.hidden=[256]"], 2, 0.80),
    ("lstm", ["model.hidden_size=64", "train.lr=0.01", *SEQ], 2, 0.80),
    ("gru", ["model.hidden_size=64", "train.lr=0.01", *SEQ], 2, 0.80),
    ("rnn", ["model.hidden_size=64", "model.num_layers=1", "train.lr=0.005", *SEQ], 2, 0.60),
    ("transformer", ["model.d_model=48", "model.num_layers=2", "model.dim_feedforward=96", "train.lr=0.005", *SEQ],
     3, 0.75),
]


@pytest.mark.parametrize("name,overrides,epochs,min_acc", LEARNING, ids=[c[0] for c in LEARNING])
def test_family_learns_mnist_subset(name, overrides, epochs, min_acc, real_mnist, tmp_path):
    settings = resolve(name, None, [f"train.epochs={epochs}", "train.train_subset=2048", "train.val_subset=500",
                                    "train.device=\"cpu\"", "train.augment_shift=0", *overrides])
    summary = train(settings, tmp_path)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["test_acc"] == summary["test_acc"]
    assert saved["n_test"] == 10_000
    assert summary["test_acc"] > min_acc, f"{name} reached only {summary['test_acc']:.3f}"
