"""The op registry: which backends each op has, which one a call uses, and why.

Every op declares its backends once (:func:`register_op`), each a :class:`Backend` with

* ``devices``: the tensor device types it runs on;
* ``probe(device) -> None | reason``: can it run on this machine at all (extension built, triton
  installed, ...)? Answered once per device type and cached, so that backend choice stays cheap and
  safe to trace under ``torch.compile``;
* ``supports(*args) -> None | exception``: can it take *these* arguments (dtype, N, head dim, ...)?
  The exception (``TypeError``/``ValueError``) is raised when the backend was named explicitly and
  its message is the fallback reason under ``auto``;
* ``impl(*args)``: the implementation, called with the op's validated arguments;
* ``selfcheck``: GPU code that no machine here has run must not give silent wrong gradients, so the
  first call on each (device, dtype) compares it with the reference on a tiny input (see below).

This module alone owns: the read of ``PYNEURO_BACKEND`` (:func:`requested_backend`), the automatic
fallback with its reason (:meth:`Op.select`, :meth:`Op.explain`), the self-check, the autograd and
fake registrations of compiled kernel pairs (:func:`register_kernel_pair`), the wrapping of Triton
kernels as custom ops (:func:`triton_custom_op`) and the no-double-backward guard. An op's
``__init__.py`` keeps its validation, its fake and autograd formulas and its public function.

Auto order: CUDA tensors -> cuda, triton, reference; CPU tensors -> cpu, reference. The Triton
interpreter (``TRITON_INTERPRET=1``) runs Triton kernels on CPU tensors, but only when named: it
is for tests. A backend named explicitly (argument or ``PYNEURO_BACKEND``) that cannot run raises
:class:`BackendUnavailableError` with the reason and the fix.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import numbers
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

BACKENDS = ("reference", "cpu", "triton", "cuda")
AUTO_ORDER = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here (or failed its self-check)."""


class BackendSelfCheckError(BackendUnavailableError):
    """A GPU backend disagreed with the reference on its first-use self-check."""


# ----------------------------------------------------------------------------------------------
# The compiled extension and Triton: loaded once, with the reason when they are missing
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def extension():
    """(module, None) when pyneuro._C loads, else (None, reason).

    ``PYNEURO_EXTENSION=/path/to/_C.so`` loads that file instead of the installed one (used by
    ``make sanitize`` to run the tests on an ASan/UBSan build)."""
    path = os.environ.get("PYNEURO_EXTENSION", "")
    try:
        if path:
            spec = importlib.util.spec_from_file_location("pyneuro._C", path)
            if spec is None or spec.loader is None:
                raise ImportError(f"PYNEURO_EXTENSION={path!r} is not a loadable extension module")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules["pyneuro._C"] = module
            return module, None
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


def limits(op: str) -> dict:
    """The compiled kernels' published limits for ``op`` (build_info()["limits"][op]), or {}."""
    return build_info().get("limits", {}).get(op, {})


def triton_interpret() -> bool:
    return env("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _triton_import() -> Optional[str]:
    try:
        import triton  # noqa: F401

        return None
    except ImportError as exc:
        return f"triton is not installed ({exc}); `pip install triton`"


# ----------------------------------------------------------------------------------------------
# Probes (machine-level availability), cached per device type
# ----------------------------------------------------------------------------------------------
def always(_device: torch.device) -> Optional[str]:
    return None


def compiled_probe(qualname: str) -> Callable[[torch.device], Optional[str]]:
    """Probe for torch.ops.pyneuro.<qualname>: has the extension a kernel for this device type?"""

    def probe(device: torch.device) -> Optional[str]:
        ext, reason = extension()
        if ext is None:
            return reason
        if not hasattr(torch.ops.pyneuro, qualname):
            return f"pyneuro._C has no op {qualname!r} (rebuild the extension)"
        key = "CUDA" if device.type == "cuda" else "CPU"
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"pyneuro::{qualname}", key):
            if key == "CUDA":
                return "pyneuro._C was built without CUDA (torch without CUDA, or nvcc missing)"
            return f"pyneuro._C has no {key} kernel for {qualname!r}"
        if key == "CPU":
            refusal = build_info().get("cpu_isa_error")
            if refusal:
                return refusal
        return None

    return probe


def triton_probe(module: str) -> Callable[[torch.device], Optional[str]]:
    """Probe for a Triton kernel module: triton importable, a GPU (or the interpreter), module shipped."""

    def probe(device: torch.device) -> Optional[str]:
        reason = _triton_import()
        if reason:
            return reason
        if device.type != "cuda" and not triton_interpret():
            return "Triton kernels need a CUDA tensor, or TRITON_INTERPRET=1 to run on the CPU"
        if importlib.util.find_spec(module) is None:
            return f"{module} is missing from this install"
        return None

    return probe


# ----------------------------------------------------------------------------------------------
# Backends and ops
# ----------------------------------------------------------------------------------------------
def _supports_anything(*_args) -> Optional[Exception]:
    return None


@dataclass
class Backend:
    name: str
    devices: tuple[str, ...]
    impl: Callable
    probe: Callable[[torch.device], Optional[str]] = always
    supports: Callable[..., Optional[Exception]] = _supports_anything
    selfcheck: bool = False  # check against the reference on first use (per device and dtype)


class Op:
    """One op's backends, with the choice among them.

    ``self_check(backend, device, dtype) -> None | reason`` is the op's tiny-input comparison with
    its reference (forward and backward); the registry calls it once per (backend, device, dtype)
    for backends declared with ``selfcheck=True``. ``example(dtype=..., device=..., **sizes)``
    builds shape-only arguments for ``pyneuro explain``."""

    def __init__(self, name: str, backends: dict[str, Backend], self_check: Optional[Callable] = None,
                 example: Optional[Callable] = None):
        unknown = set(backends) - set(BACKENDS)
        if unknown:
            raise ValueError(f"unknown backend names {sorted(unknown)}; valid: {BACKENDS}")
        self.name = name
        self.backends = backends
        self.self_check = self_check
        self.example = example
        self._probed: dict[tuple, Optional[str]] = {}
        self._checked: dict[tuple, Optional[str]] = {}
        # Per device type, the names of the auto order's backends whose machine-level status is
        # None: a call then asks only ``supports`` (and the self-check) of them, in order. Small
        # ops run in microseconds, so the choice must cost little more than a dict lookup.
        self._auto_chains: dict[str, tuple[str, ...]] = {}

    # -- machine level -------------------------------------------------------------------------
    def status(self, backend: str, device: torch.device) -> Optional[str]:
        """None when ``backend`` can run on ``device`` tensors here, else the reason."""
        b = self.backends.get(backend)
        if b is None:
            return f"{self.name} has no {backend!r} backend (it has {sorted(self.backends)})"
        if device.type not in b.devices:
            return f"the {backend!r} backend of {self.name} does not run on {device.type} tensors"
        if device.type == "cuda" and not torch.cuda.is_available():
            return "no CUDA device is visible"
        # Only Triton's probe depends on the interpreter setting (it may run on CPU tensors).
        key = (backend, device.type, backend == "triton" and triton_interpret())
        if key not in self._probed:
            self._probed[key] = b.probe(device)
        return self._probed[key]

    def available(self, device: torch.device) -> list[str]:
        return [b for b in BACKENDS if b in self.backends and self.status(b, device) is None]

    # -- per call ------------------------------------------------------------------------------
    def _why_not(self, backend: str, device: torch.device, args: tuple) -> Optional[Exception]:
        reason = self.status(backend, device)
        if reason is not None:
            return BackendUnavailableError(f"{self.name}: backend {backend!r} is unavailable: {reason}")
        return self._call_problem(backend, device, args)

    def _call_problem(self, backend: str, device: torch.device, args: tuple) -> Optional[Exception]:
        """What keeps a backend the machine can run from taking these arguments, or None."""
        b = self.backends[backend]
        problem = b.supports(*args)
        if problem is None and b.selfcheck:
            problem = self._self_check_problem(backend, device, args)
        return problem

    def _self_check_problem(self, backend: str, device: torch.device, args: tuple) -> Optional[Exception]:
        b = self.backends[backend]
        if not b.selfcheck or self.self_check is None or not selfcheck_enabled():
            return None
        dtype = _first_tensor_dtype(args)
        key = (backend, device, dtype)
        if key not in self._checked:
            if torch.compiler.is_compiling():
                return None  # runs at the first eager call; tracing must not launch kernels
            self._checked[key] = None  # the check calls the backend itself: do not recurse
            try:
                with _plain_autograd(device):
                    failure = self.self_check(backend, device, dtype)
            except Exception as exc:  # a crash is a failed check too
                failure = f"{type(exc).__name__}: {exc}"
            self._checked[key] = failure
        failure = self._checked[key]
        if failure is None:
            return None
        return BackendSelfCheckError(
            f"{self.name}: backend {backend!r} failed its first-use self-check on {device} "
            f"{str(dtype).replace('torch.', '')}: {failure} (PYNEURO_SELFCHECK=0 turns the check off)")

    def runs(self, backend: str, device: torch.device, *args) -> bool:
        """Whether ``backend`` can take this call (available, supports the arguments, passed its
        self-check): select(backend, ...) without the error."""
        return self._why_not(backend, device, args) is None

    def select(self, backend: str, device: torch.device, *args) -> Backend:
        """The backend a call with ``args`` on ``device`` runs on (``backend``: "auto" or a name)."""
        wanted = requested_backend(backend)
        if wanted != "auto":
            problem = self._why_not(wanted, device, args)
            if problem is not None:
                raise problem
            return self.backends[wanted]
        chain = self._auto_chains.get(device.type)
        if chain is None:
            chain = self._auto_chains[device.type] = tuple(
                name for name in AUTO_ORDER.get(device.type, ("reference",))
                if name in self.backends and self.status(name, device) is None)
        for name in chain:  # the same answers as _auto_candidates, without re-asking the machine
            problem = self._call_problem(name, device, args)
            if problem is None:
                return self.backends[name]  # looked up per call: a test may swap a backend in
            if isinstance(problem, BackendSelfCheckError):
                _warn_once(str(problem) + "; falling back to the next backend")
        raise BackendUnavailableError(f"{self.name}: no backend can run on {device.type} tensors here")

    def _auto_candidates(self, device: torch.device, args: tuple):
        for name in AUTO_ORDER.get(device.type, ("reference",)):
            if name in self.backends:
                yield name, self._why_not(name, device, args)

    def explain(self, device: torch.device, *args) -> list[tuple[str, str]]:
        """[(backend, "chosen" | "not tried" | why it was passed over)] in auto order, for
        ``pyneuro explain``: what ``auto`` would do with these arguments and why."""
        rows, chosen = [], None
        for name, problem in self._auto_candidates(device, args):
            if chosen is None and problem is None:
                chosen = name
                rows.append((name, "chosen"))
            elif problem is None:
                rows.append((name, "available (lower in the auto order)"))
            else:
                rows.append((name, self.status(name, device) or str(problem)))
        for name in BACKENDS:  # those auto never tries on this device, with the reason
            if name in self.backends and all(name != r[0] for r in rows):
                reason = self.status(name, device)
                rows.append((name, reason or "runs only when named (not in the auto order for "
                                             f"{device.type} tensors)"))
        return rows

    def __call__(self, backend: str, device: torch.device, *args):
        return self.select(backend, device, *args).impl(*args)


OPS: dict[str, Op] = {}


@contextlib.contextmanager
def _plain_autograd(device: torch.device):
    """The self-check's mode: gradients on and no autocast, whatever the first call ran under. The
    check compares gradients in the call's dtype; a first call under inference_mode (no autograd
    at all) or autocast (the reference's fp32 matmuls in bf16) would fail a correct backend, and
    the failure is kept for the process."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        for kind in {"cpu", device.type}:
            stack.enter_context(torch.autocast(kind, enabled=False))
        yield


def register_op(name: str, backends: dict[str, Backend], self_check: Optional[Callable] = None,
                example: Optional[Callable] = None) -> Op:
    op = Op(name, backends, self_check, example)
    OPS[name] = op
    return op


def reference_only(name: str, impl: Callable) -> Op:
    """An op that so far has only its PyTorch reference (runs on any device)."""
    return register_op(name, {"reference": Backend("reference", ("cpu", "cuda"), impl)})


# ----------------------------------------------------------------------------------------------
# Settings read from the environment (here only)
# ----------------------------------------------------------------------------------------------
# os.environ.get costs ~1.3 µs (key encoding through the Mapping ABC), a tenth of a small op's
# kernel; the variables are read at every call (tests and users change them at run time), so read
# the dict that os.environ keeps in step with the process environment, where CPython has one.
_ENVIRON_BYTES = os.environ._data if os.name == "posix" and isinstance(getattr(os.environ, "_data", None), dict) else None


def env(name: str, default: str) -> str:
    """os.environ.get(name, default), cheaply."""
    if _ENVIRON_BYTES is None:
        return os.environ.get(name, default)
    value = _ENVIRON_BYTES.get(name.encode())
    return default if value is None else os.fsdecode(value)


def requested_backend(backend: str) -> str:
    """The backend a call asks for: its argument, or PYNEURO_BACKEND when the argument is "auto"."""
    if backend == "auto":
        backend = env("PYNEURO_BACKEND", "auto") or "auto"
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    return backend


def selfcheck_enabled() -> bool:
    return env("PYNEURO_SELFCHECK", "1") not in ("0", "")


def real_number(value) -> bool:
    """A real number that is not a bool (the type checks of float arguments), fast for float/int."""
    kind = type(value)
    return kind is float or kind is int or (kind is not bool and isinstance(value, numbers.Real))


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _first_tensor_dtype(args) -> Optional[torch.dtype]:
    for a in args:
        if isinstance(a, Tensor):
            return a.dtype
    return None


def report(device: torch.device | None = None) -> dict[str, dict[str, str]]:
    """{op: {backend: "available" | reason}} for `pyneuro info`."""
    device = device or torch.device("cpu")
    return {name: {b: op.status(b, device) or "available" for b in BACKENDS if b in op.backends}
            for name, op in OPS.items()}


# ----------------------------------------------------------------------------------------------
# Dispatcher registrations shared by every op with compiled kernels
# ----------------------------------------------------------------------------------------------
def _has_autograd_kernel(op) -> bool:
    """Whether ``op`` (a "pyneuro::x" qualname) already has an Autograd kernel. Before Python has
    registered a derivative for it (register_kernel_pair asks first), only the extension's C++
    registration (csrc/autograd/) can have put one there; afterwards the answer is always yes."""
    return isinstance(op, str) and torch._C._dispatch_has_kernel_for_dispatch_key(op, "Autograd")


def register_kernel_pair(op_name: str, fwd, bwd, *, fake_fwd: Optional[Callable], fake_bwd: Optional[Callable],
                         setup_context: Optional[Callable] = None, backward: Optional[Callable] = None) -> None:
    """Make the forward op ``fwd`` differentiable with ``backward`` (which calls the op ``bwd``),
    and give both ops fake (shape-only) implementations so they trace under torch.compile.
    ``fwd``/``bwd`` are qualnames ("pyneuro::x") or custom-op objects. The backward op itself
    gets no derivative: differentiating through it raises instead of silently returning zeros.
    A forward op whose derivative the extension registers in C++ (csrc/autograd/, the same formula
    with less per-call overhead) keeps that one; ``backward`` then serves the ops without it, and a
    pair whose derivative exists only in C++ passes none (it is an error if the C++ one is missing)."""
    if fake_fwd is not None:
        torch.library.register_fake(fwd)(fake_fwd)
    if fake_bwd is not None:
        torch.library.register_fake(bwd)(fake_bwd)
    if not _has_autograd_kernel(fwd):  # the C++ one; a Python registration would replace it
        if backward is None:
            raise RuntimeError(f"{op_name}: {fwd} has no derivative: the extension registers none in C++ "
                               "and no Python backward was given")
        torch.library.register_autograd(fwd, backward, setup_context=setup_context)

    def no_double_backward(ctx, *grads):
        raise RuntimeError(f"{op_name}: the compiled backends have no double backward (second "
                           "derivatives); use backend='reference' for those")

    torch.library.register_autograd(bwd, no_double_backward, setup_context=lambda ctx, inputs, output: None)


def _fresh(outputs, inputs):
    """custom_op outputs may alias neither an input nor each other: copy any that do (a state
    passed through, a final state returned as a view of the sequence output)."""
    seen = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, Tensor) and t.numel()}
    fresh = []
    for o in outputs:
        if isinstance(o, Tensor) and o.numel():
            if o.untyped_storage().data_ptr() in seen:
                o = o.clone()
            seen.add(o.untyped_storage().data_ptr())
        fresh.append(o)
    return tuple(fresh)


def triton_custom_op(qualname: str, schema: str, module: str, function: str):
    """Wrap ``module.function`` (a Triton launcher, imported on first use) as the custom op
    ``qualname`` with ``schema`` (argument list and returns, as in TORCH_LIBRARY), so that it
    traces under torch.compile and passes opcheck like the C++ ops."""

    def impl(*args):
        kernel = getattr(importlib.import_module(module), function)
        # Triton launches on the current device and its stream; a Python custom op gets no device
        # guard (C++ ops do), so make the operands' device current, as torch's own ops would.
        device = next((a.device for a in args if isinstance(a, Tensor) and a.is_cuda), None)
        with contextlib.nullcontext() if device is None else torch.cuda.device(device):
            return _fresh(kernel(*args), args)

    return torch.library.custom_op(qualname, impl, mutates_args=(), schema=schema)
