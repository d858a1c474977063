"""The targets of an op's conformance suite: every backend variant this machine may run, as pytest
params, skipped with the reason where one cannot run here. Shared by tests/ops/<op>/<op>_cases.py.

A target is (backend, device, CPU ISA variant): the reference (on the GPU when there is one); cpu
once per ISA variant the extension was built with (baseline/avx2/avx512, switched with
``activated``); triton on the GPU, or on the CPU under TRITON_INTERPRET=1; cuda. Triton targets
are marked ``triton``, GPU ones ``cuda``, so ``make gpu-check`` can insist that none is skipped;
reference ones ``reference``, so ``make sanitize`` can leave out what runs no compiled code of ours.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from dataclasses import dataclass
from typing import ClassVar, Optional

import pytest
import torch

from pyneuro import _backends

HAS_GPU = torch.cuda.is_available()
COMPILED = ("cpu", "triton", "cuda")


@dataclass(frozen=True)
class Target:
    """One backend variant. Each suite subclasses it with its op's TOLERANCE table."""

    backend: str
    device: str
    isa: Optional[str] = None  # cpu only: the ISA variant the C++ kernels run in

    TOLERANCE: ClassVar[dict] = {}

    def __str__(self) -> str:
        return f"{self.backend}-{self.isa}" if self.isa else self.backend

    def tolerance(self, dtype: torch.dtype) -> float:
        return self.TOLERANCE[self.backend][dtype]

    @property
    def compiled(self) -> bool:
        return self.backend in COMPILED


def cpu_isas() -> list[Optional[str]]:
    """The CPU ISA variants of the extension this machine runs (None: no extension)."""
    ext, _ = _backends.extension()
    if ext is None or not hasattr(ext, "cpu_isas"):
        return [None]
    return list(ext.cpu_isas())


def param(target: Target, reason: Optional[str]):
    marks = [pytest.mark.skipif(reason is not None, reason=f"{target}: {reason}")]
    if target.backend == "triton":
        marks.append(pytest.mark.triton)
    if target.backend == "reference":
        marks.append(pytest.mark.reference)
    if target.device == "cuda" or target.backend == "cuda":
        marks.append(pytest.mark.cuda)
    return pytest.param(target, marks=marks, id=str(target))


class TargetSet:
    """The targets of the ops ``ops`` (registry Op objects), built as ``target_cls``."""

    def __init__(self, target_cls: type, ops: list):
        self.target_cls = target_cls
        self.ops = ops

    def why_not(self, backend: str, device: str) -> Optional[str]:
        """None when every op runs on ``backend`` here, else the first reason."""
        for op in self.ops:
            reason = op.status(backend, torch.device(device))
            if reason is not None:
                return f"{op.name}: {reason}"
        return None

    def _triton(self):
        device = "cuda" if HAS_GPU else "cpu"
        reason = self.why_not("triton", device)
        if reason is None and not HAS_GPU and not _backends.triton_interpret():
            reason = "TRITON_INTERPRET=1 must be set before triton is imported (tests/conftest.py does it)"
        return param(self.target_cls("triton", device), reason)

    def _cuda(self):
        reason = self.why_not("cuda", "cuda") if HAS_GPU else "no CUDA GPU on this machine"
        return param(self.target_cls("cuda", "cuda"), reason)

    def _declared(self, params: list) -> list:
        """Only the backends every op declares: a target of a backend an op does not have would be
        skipped on a GPU machine too, and `make gpu-check` fails on any skipped cuda/triton test."""
        return [p for p in params if all(p.values[0].backend in op.backends for op in self.ops)]

    def compiled(self) -> list:
        """Every compiled backend in every variant (cpu per ISA, triton, cuda)."""
        cpu_reason = self.why_not("cpu", "cpu")
        return self._declared([param(self.target_cls("cpu", "cpu", isa), cpu_reason) for isa in cpu_isas()]
                              + [self._triton(), self._cuda()])

    def per_backend(self) -> list:
        """One compiled target per backend (cpu in its default ISA): for what does not depend on
        the ISA variant (op registration, opcheck, torch.compile tracing)."""
        return self._declared([param(self.target_cls("cpu", "cpu"), self.why_not("cpu", "cpu")), self._triton(),
                               self._cuda()])

    def reference(self):
        return param(self.target_cls("reference", "cuda" if HAS_GPU else "cpu"), None)

    def all(self) -> list:
        """The reference and every compiled target."""
        return [self.reference()] + self.compiled()


def interpreted(target: Target) -> bool:
    """The Triton target run by the interpreter on the CPU (every tile operation in Python)."""
    return target.backend == "triton" and target.device == "cpu"


def suite_items(items, folder: Path):
    """(item, target, params) of the collected tests under ``folder`` parametrised by a target (a
    fixture whose name ends in "target"): what a suite's conftest marks slow."""
    for item in items:
        if folder not in Path(str(item.path)).resolve().parents or not hasattr(item, "callspec"):
            continue
        params = item.callspec.params
        target = next((v for k, v in params.items() if k.endswith("target")), None)
        if target is not None and hasattr(target, "backend"):
            yield item, target, params


def slow_isa_variant(item, target: Target) -> bool:
    """A cpu target in an ISA variant other than the one in use, for a test not decorated
    ``every_isa``: slow (it runs in the slow run, the default variant in `make test`)."""
    if target.backend != "cpu" or target.isa is None:
        return False
    ext, _ = _backends.extension()
    return target.isa != ext.cpu_isa() and not getattr(item.function, "every_isa", False)


def every_isa(fn):
    """Run this test on every CPU ISA variant in `make test` (the others run there in the default
    variant only, every variant in the slow run; a suite's conftest applies the rule)."""
    fn.every_isa = True
    return fn


@contextlib.contextmanager
def activated(target: Target):
    """Run the C++ CPU kernels in the target's ISA variant for the duration of a test."""
    if target.isa is None:
        yield target
        return
    ext, _ = _backends.extension()
    before = ext.cpu_isa()
    ext.set_cpu_isa(target.isa)
    try:
        yield target
    finally:
        ext.set_cpu_isa(before)


def target_fixtures(targets: TargetSet):
    """The suite fixtures over ``targets``, each running its test in the target's ISA variant:
    ``target`` (every compiled variant), ``cxx_target`` (the C++ dispatcher ops: cpu per ISA,
    cuda) and ``any_target`` (the reference too). A conftest binds them to those names."""

    @pytest.fixture(params=targets.compiled())
    def target(request):
        with activated(request.param) as t:
            yield t

    @pytest.fixture(params=[p for p in targets.compiled() if p.values[0].backend in ("cpu", "cuda")])
    def cxx_target(request):
        with activated(request.param) as t:
            yield t

    @pytest.fixture(params=targets.all())
    def any_target(request):
        with activated(request.param) as t:
            yield t

    return target, cxx_target, any_target


def cpu_target_fixture(targets: TargetSet):
    """``cpu_target``: the cpu backend in each ISA variant, for what only the CPU kernels do. Not
    ``target`` with a skip for the others: `make gpu-check` fails on any skipped cuda/triton test."""

    @pytest.fixture(params=[p for p in targets.compiled() if p.values[0].backend == "cpu"])
    def cpu_target(request):
        with activated(request.param) as t:
            yield t

    return cpu_target


def normwise_error(actual, expected) -> float:
    """max |actual - expected| / max |expected| (absolute when expected is all zero; inf on NaN):
    the error measure of the conformance suites' tolerance tables."""
    expected = expected.detach().double().cpu()
    if not expected.numel():
        return 0.0
    diff = (actual.detach().double().cpu() - expected).abs().max().item()
    if diff != diff:
        return float("inf")
    scale = expected.abs().max().item()
    return diff / scale if scale > 0 else diff


def assert_matches(actual, expected, tol, what):
    assert tuple(actual.shape) == tuple(expected.shape), \
        f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = normwise_error(actual, expected)
    assert err <= tol, f"{what}: normwise error {err:.3g} > {tol:.3g}"
