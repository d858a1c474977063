"""scripts/check_vectorised.py (`make vectorise-check`, a CI step): every `#pragma omp simd` loop of
the CPU kernels must be reported vectorised by GCC for AVX2. Here: that the check itself sees a
loop GCC leaves scalar, and passes one it vectorises; compiling every kernel file is the CI step's
job (about a minute), not the unit tests'."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("check_vectorised", ROOT / "scripts" / "check_vectorised.py")
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)

pytestmark = pytest.mark.skipif(shutil.which("g++") is None,
                                reason="needs g++ (the compiler the extension is built with)")


def test_the_check_tells_a_scalar_loop_from_a_vectorised_one(tmp_path):
    # The batch-norm backward's old pattern: a float compare, then selects on an integer saying where
    # the gradient goes. GCC leaves that loop scalar for AVX2 (it ran 3x slower than torch there).
    source = tmp_path / "routing.cpp"
    source.write_text(
        "void f(const float* x, float* y, const int* w, int n) {\n"
        "#pragma omp simd\n"
        "  for (int i = 0; i < n; ++i) {\n"
        "    const float g = x[i] > 0.f ? x[i] : 0.f;\n"
        "    y[i] = (w[i] == 0 ? g : 0.f) + (w[i] == 1 ? 2.f * g : 0.f);\n"
        "  }\n"
        "}\n"
        "void g(const float* x, float* y, int n) {\n"
        "#pragma omp simd\n"
        "  for (int i = 0; i < n; ++i) y[i] = x[i] * 2.f;\n"
        "}\n")
    lines = source.read_text().splitlines()
    assert check.simd_loops(lines) == [3, 10]
    assert check.vectorised_loops(source, lines) == {10}
    assert check.missed_loops(source) == (2, ["routing.cpp:3: for (int i = 0; i < n; ++i) {"])
    assert check.main([str(source)]) == 1
