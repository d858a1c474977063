"""The cnn on fused BatchNormReLU2d layers: the same function as torch.nn's conv, BatchNorm2d, ReLU
and MaxPool2d, and checkpoints of that earlier layout still load."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pyneuro.models.cnn import CNN
from pyneuro.nn import BatchNormReLU2d


def _unfused_twin(model: CNN, channels, convs_per_block) -> nn.Module:
    """The earlier layout (separate BatchNorm2d, ReLU, MaxPool2d), sharing the classifier."""
    layers, c_in = [], 1
    for c in channels:
        for i in range(convs_per_block):
            layers += [nn.Conv2d(c_in if i == 0 else c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        layers.append(nn.MaxPool2d(2))
        c_in = c
    twin = nn.Module()
    twin.features = nn.Sequential(*layers)
    twin.classifier = model.classifier
    twin.forward = lambda x: twin.classifier(twin.features(x))
    return twin


@pytest.mark.parametrize("channels,convs_per_block", [((32, 64), 2), ((24, 32), 1), ((8,), 3)])
def test_checkpoint_of_the_unfused_layout_loads_and_computes_the_same(channels, convs_per_block):
    torch.manual_seed(0)
    model = CNN(channels, convs_per_block, 64, 0.0)
    old = _unfused_twin(model, channels, convs_per_block)
    for m in old.features.modules():  # statistics and affine parameters that are not the init
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(), m.running_var.uniform_(0.5, 2.0), m.weight.data.normal_(), m.bias.data.normal_()
    state = {k: v.clone() for k, v in old.state_dict().items()}
    numbers = {int(k.split(".")[1]) for k in state if k.startswith("features.")}
    assert max(numbers) >= len(model.features)  # the old numbering: renumbering is needed
    model.load_state_dict(state)  # strict: every key found, none left over
    x = torch.randn(3, 1, 28, 28)
    old.eval(), model.eval()
    torch.testing.assert_close(model(x), old.forward(x))
    # And training mode: batch statistics, then the same running statistics afterwards.
    old.train(), model.train()
    torch.testing.assert_close(model(x), old.forward(x), rtol=1e-4, atol=1e-5)
    fused = [m for m in model.features if isinstance(m, BatchNormReLU2d)]
    unfused = [m for m in old.features if isinstance(m, nn.BatchNorm2d)]
    assert len(fused) == len(unfused) == len(channels) * convs_per_block
    for a, b in zip(fused, unfused):
        torch.testing.assert_close(a.running_mean, b.running_mean)
        torch.testing.assert_close(a.running_var, b.running_var)
        assert a.num_batches_tracked == b.num_batches_tracked == 1


def test_the_block_pools_after_its_last_conv_only():
    model = CNN((8, 16), 2, 32, 0.0)
    pools = [m.pool for m in model.features if isinstance(m, BatchNormReLU2d)]
    assert pools == [1, 2, 1, 2]
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_sync_conversion_keeps_relu_pool_and_state_dict():
    """DDP on GPUs converts batch norms to SyncBatchNorm; torch's converter would drop the fused
    ReLU and pool (BatchNormReLU2d is a BatchNorm2d). Outside a process group SyncBatchNorm
    computes plain batch norm, so the converted model must compute what the model did."""
    from pyneuro.nn.norm import SyncBatchNormReLU2d, convert_sync_batchnorm

    torch.manual_seed(0)
    model = CNN((8, 16), 2, 32, 0.0)
    model.features.append(nn.BatchNorm2d(16))  # a plain batch norm goes to torch's converter
    model.classifier[2] = nn.Linear(16 * 7 * 7, 32)
    keys = list(model.state_dict())
    x = torch.randn(4, 1, 28, 28)
    reference = copy.deepcopy(model)
    converted = convert_sync_batchnorm(model)
    assert list(converted.state_dict()) == keys
    assert [type(m) for m in converted.features if isinstance(m, nn.modules.batchnorm._BatchNorm)] == \
        [SyncBatchNormReLU2d] * 4 + [nn.SyncBatchNorm]
    assert [m.pool for m in converted.features if isinstance(m, SyncBatchNormReLU2d)] == [1, 2, 1, 2]
    for mode in ("train", "eval"):
        getattr(converted, mode)(), getattr(reference, mode)()
        torch.testing.assert_close(converted(x), reference(x), rtol=1e-4, atol=1e-5, msg=mode)
    torch.testing.assert_close(converted.state_dict(), reference.state_dict())  # the same running statistics
