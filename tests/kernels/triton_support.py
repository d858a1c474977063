"""What the Triton kernel tests share: whether the kernels run in Triton's interpreter, on which
device, and the kernel module itself, skipped with the reason where it cannot run.

tests/conftest.py sets TRITON_INTERPRET=1 on a machine without a GPU before triton is first
imported (Triton reads it when @triton.jit decorates, its own standard library included).
"""
from __future__ import annotations

import importlib
import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEVICE = "cpu" if INTERPRET else "cuda"


def kernels(name: str):
    """pyneuro.kernels.<name>; skips the importing test module when triton is missing, or when
    there is neither a GPU nor the interpreter."""
    pytest.importorskip("triton", reason="the triton backend needs the triton package")
    if not INTERPRET and not torch.cuda.is_available():
        pytest.skip("Triton kernels need a CUDA GPU or TRITON_INTERPRET=1 (it is set to 0 here)",
                    allow_module_level=True)
    return importlib.import_module(f"pyneuro.kernels.{name}")
