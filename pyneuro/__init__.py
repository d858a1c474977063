"""pyneuro: compiled kernels for selective scan, attention and recurrent cells, and the MNIST
models built on them.

``import pyneuro`` always works: the pure-PyTorch reference backends need nothing else.
:func:`pyneuro.info` (or ``pyneuro info``) says which compiled or Triton backends are missing here
and why.
"""
from __future__ import annotations

__version__ = "0.1.0"

from . import _backends
from . import ops  # noqa: E402  (registers the ops' backends)
from .runtime import retain_freed_memory  # noqa: E402


def info() -> dict:
    """Build information and, per op and device (cpu, cuda), each backend's availability or why not."""
    import torch

    out = {
        "pyneuro": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "extension": _backends.build_info(),
        "triton": _backends._triton_import() or "importable",
        "backends": {device: _backends.report(torch.device(device)) for device in ("cpu", "cuda")},
    }
    return out


__all__ = ["info", "ops", "retain_freed_memory", "__version__"]
