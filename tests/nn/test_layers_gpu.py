"""The layers on a GPU: each one, moved to CUDA with its backend chosen by ``auto`` (the cuda or
triton kernels where they exist), gives the outputs and gradients of the same layer on the CPU
reference. Marked ``cuda``; `make gpu-check` runs them (and fails if they are skipped)."""
from __future__ import annotations

import copy

import pytest
import torch

import pyneuro.nn as pn

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _with_backend(layer, backend):
    """A copy of ``layer`` whose every op-calling module uses ``backend``."""
    layer = copy.deepcopy(layer)
    for m in layer.modules():
        if hasattr(m, "backend"):
            m.backend = backend
    return layer


def _compare(layer, x, *, rtol, atol, gpu_backend="auto"):
    """Outputs and parameter/input gradients of ``layer`` on the GPU against a CPU reference copy."""
    ref = _with_backend(layer, "reference")
    gpu = _with_backend(layer, gpu_backend).cuda()
    x_ref = x.clone().requires_grad_()
    x_gpu = x.cuda().requires_grad_()
    y_ref, y_gpu = ref(x_ref), gpu(x_gpu)
    y_ref = y_ref[0] if isinstance(y_ref, tuple) else y_ref
    y_gpu = y_gpu[0] if isinstance(y_gpu, tuple) else y_gpu
    torch.testing.assert_close(y_gpu.cpu(), y_ref, rtol=rtol, atol=atol)
    w = torch.randn_like(y_ref)
    (y_ref * w).sum().backward()
    (y_gpu * w.cuda()).sum().backward()
    torch.testing.assert_close(x_gpu.grad.cpu(), x_ref.grad, rtol=rtol, atol=atol)
    for (name, p_ref), p_gpu in zip(ref.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(p_gpu.grad.cpu(), p_ref.grad, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend", ["auto", "cuda", "triton"])
def test_mamba_on_the_gpu_matches_the_cpu_reference(backend):
    torch.manual_seed(0)
    layer = pn.Mamba(32, d_state=16, backend="reference")
    _compare(layer, torch.randn(3, 70, 32), rtol=1e-4, atol=1e-5, gpu_backend=backend)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_recurrent_layers_on_the_gpu(kind):
    torch.manual_seed(0)
    layer = getattr(pn, kind)(28, 64, num_layers=2, batch_first=True, bidirectional=True)
    _compare(layer, torch.randn(4, 28, 28), rtol=1e-4, atol=1e-5)


def test_transformer_encoder_layer_on_the_gpu():
    torch.manual_seed(0)
    layer = pn.TransformerEncoderLayer(48, 4, dim_feedforward=96, dropout=0.0, batch_first=True)
    layer.eval()
    _compare(layer, torch.randn(4, 17, 48), rtol=1e-4, atol=1e-5)
