"""Which backends exist on this machine, and which one an op call uses.

Backends, fastest first: ``cuda`` (pyneuro._C built with CUDA), ``triton`` (pyneuro.kernels on a
GPU, or on the CPU under ``TRITON_INTERPRET=1``), ``cpu`` (pyneuro._C's C++ kernels) and
``reference`` (pure PyTorch, always present). ``backend="auto"`` picks the first one available for
the tensors' device and falls back quietly; a backend named explicitly (argument or
``PYNEURO_BACKEND``) that is missing raises :class:`BackendUnavailableError` with the reason.
"""
from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass, field
from typing import Callable

import torch

BACKENDS = ("reference", "cpu", "triton", "cuda")


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here."""


@functools.lru_cache(maxsize=None)
def extension():
    """(module, None) when pyneuro._C loads, else (None, reason)."""
    try:
        return importlib.import_module("pyneuro._C"), None
    except ImportError as exc:  # not built, or built against another torch
        return None, (
            f"pyneuro._C did not load ({exc}); build it with "
            "`pip install --no-build-isolation -e .` (needs a C++ compiler and CMake)"
        )


def build_info() -> dict:
    ext, reason = extension()
    if ext is None:
        return {"built": False, "reason": reason}
    return {"built": True, **ext.build_info()}


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _triton_import():
    try:
        import triton  # noqa: F401

        return True, None
    except ImportError as exc:
        return False, f"triton is not installed ({exc}); `pip install triton`"


def triton_status(device: torch.device) -> tuple[bool, str | None]:
    ok, reason = _triton_import()
    if not ok:
        return False, reason
    if device.type == "cuda" or triton_interpret():
        return True, None
    return False, "Triton kernels need a CUDA tensor, or TRITON_INTERPRET=1 to run on the CPU"


def compiled_op_status(qualname: str, device: torch.device) -> tuple[bool, str | None]:
    """Whether torch.ops.pyneuro.<qualname> has a kernel for this device type."""
    ext, reason = extension()
    if ext is None:
        return False, reason
    key = "CUDA" if device.type == "cuda" else "CPU"
    if not hasattr(torch.ops.pyneuro, qualname):
        return False, f"pyneuro._C has no op {qualname!r} (rebuild the extension)"
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"pyneuro::{qualname}", key):
        if key == "CUDA":
            return False, "pyneuro._C was built without CUDA (torch without CUDA, or nvcc missing)"
        return False, f"pyneuro._C has no {key} kernel for {qualname!r}"
    return True, None


@dataclass
class OpBackends:
    """The backends one op implements, with a probe per backend: probe(device) -> (ok, reason)."""

    name: str
    probes: dict[str, Callable[[torch.device], tuple[bool, str | None]]] = field(default_factory=dict)
    devices: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def status(self, backend: str, device: torch.device) -> tuple[bool, str | None]:
        if backend not in self.probes:
            return False, f"{self.name} has no {backend!r} backend (it has {sorted(self.probes)})"
        if device.type not in self.devices[backend]:
            return False, f"the {backend!r} backend of {self.name} does not run on {device.type} tensors"
        return self.probes[backend](device)

    def available(self, device: torch.device) -> list[str]:
        return [b for b in BACKENDS if b in self.probes and self.status(b, device)[0]]


OPS: dict[str, OpBackends] = {}

# Triton is absent from the CPU order on purpose: its interpreter (TRITON_INTERPRET=1) is for
# tests and is only ever used when named.
_AUTO_ORDER = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}


def register_op(name: str, **backends: tuple[Callable, tuple[str, ...]]) -> OpBackends:
    """Declare an op's backends: register_op("x", reference=(probe, ("cpu", "cuda")), ...)."""
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        raise ValueError(f"unknown backend names {sorted(unknown)}; valid: {BACKENDS}")
    op = OpBackends(name)
    for b, (probe, devices) in backends.items():
        op.probes[b] = probe
        op.devices[b] = tuple(devices)
    OPS[name] = op
    return op


def always(_device):
    return True, None


def choose(op_name: str, device: torch.device, backend: str = "auto") -> str:
    """Resolve ``backend`` ("auto" or a name) for a call of ``op_name`` on ``device``."""
    op = OPS[op_name]
    if backend == "auto":
        backend = os.environ.get("PYNEURO_BACKEND", "auto") or "auto"
    if backend == "auto":
        for b in _AUTO_ORDER.get(device.type, ("reference",)):
            if b in op.probes and op.status(b, device)[0]:
                return b
        return "reference"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    ok, reason = op.status(backend, device)
    if not ok:
        raise BackendUnavailableError(f"{op_name}: backend {backend!r} is unavailable: {reason}")
    return backend


def report(device: torch.device | None = None) -> dict[str, dict[str, str]]:
    """{op: {backend: "available" | reason}} for `pyneuro info`."""
    device = device or torch.device("cpu")
    out = {}
    for name, op in OPS.items():
        out[name] = {}
        for b in BACKENDS:
            if b in op.probes:
                ok, reason = op.status(b, device)
                out[name][b] = "available" if ok else reason
    return out
