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


def info() -> dict:
    """Build information and, per op, each backend's availability on CPU (and CUDA if present)."""
    import torch

    out = {
        "pyneuro": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "extension": _backends.build_info(),
        "triton": _backends._triton_import()[1] or "importable",
        "backends": {"cpu": _backends.report(torch.device("cpu"))},
    }
    if torch.cuda.is_available():
        out["backends"]["cuda"] = _backends.report(torch.device("cuda"))
    return out


__all__ = ["info", "ops", "__version__"]
