"""The transformer's attention picture: the class token's weights it draws are the model's."""
from __future__ import annotations

import torch

from pyneuro.data import to_view
from pyneuro.models import registry
from pyneuro.viz.transformer import plots


def test_class_token_attention_is_the_models_own():
    torch.manual_seed(0)
    model = registry.get("transformer").build(d_model=32, nhead=2, num_layers=2, dim_feedforward=32).eval()
    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8)
    x = to_view(images, "patches", patch_size=7)
    weights, logits = model.class_token_attention(x)
    assert weights.shape == (2, 6, 2, 16)
    torch.testing.assert_close(logits, model(x))  # the same forward pass
    # Each row is the class token's softmax over all 17 tokens, minus its weight on itself.
    total = weights.sum(-1)
    assert ((total > 0) & (total < 1)).all()
    # Layer 1's weights, recomputed by hand from its projections.
    layer = model.layers[0]
    h = layer.norm1(model._tokens(x))
    q, k, _ = (layer.self_attn._split_heads(t) for t in layer.self_attn._project(h, h, h))
    probs = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, -1)
    torch.testing.assert_close(weights[0], probs[:, :, 0, 1:])


def test_plots_hook_writes_the_picture(tmp_path):
    model = registry.get("transformer").build(d_model=16, nhead=2, num_layers=1, dim_feedforward=16)
    images = torch.randint(0, 256, (30, 28, 28), dtype=torch.uint8)
    labels = torch.arange(30) % 10
    (path,) = registry.get("transformer").plot_function()(model, images, labels, tmp_path, title="t")
    assert path == tmp_path / "attention.png" and path.stat().st_size > 10_000
    assert model.training  # the picture leaves the model's mode as it found it
