"""Training on a GPU: one epoch of a model per kind of kernel (the CNN on cuDNN, mamba on the
selective-scan CUDA kernel, the transformer on the attention op), evaluated on the full test set.
Marked ``cuda``; `make gpu-check` runs them (and fails if they are skipped)."""
from __future__ import annotations

import json

import pytest
import torch

from pyneuro.train import resolve, train

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

# One epoch over 8,192 images: every one of these is far above the 10% of chance by then.
CASES = [
    ("cnn", ["model.channels=[16,32]", "model.convs_per_block=1"], 0.90),
    ("mamba", ["train.batch_size=64"], 0.80),
    ("transformer", ["model.d_model=48", "model.num_layers=2", "model.dim_feedforward=96", "train.lr=0.005",
                     "train.batch_size=64"], 0.70),
]


@pytest.mark.parametrize("name,overrides,min_acc", CASES, ids=[c[0] for c in CASES])
def test_one_epoch_on_the_gpu(name, overrides, min_acc, real_mnist, tmp_path):
    settings = resolve(name, None, ["train.epochs=1", "train.train_subset=8192", "train.val_subset=500",
                                    "train.device=\"cuda\"", "train.augment_shift=0", *overrides])
    summary = train(settings, tmp_path)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["device"].startswith("cuda")
    assert saved["n_test"] == 10_000
    assert summary["test_acc"] > min_acc, f"{name} reached only {summary['test_acc']:.3f} on the GPU"
