"""Every `#pragma omp simd` loop of the CPU kernels (csrc/cpu/isa/*.cpp) must be vectorised by GCC
for AVX2, as the kernels' speed assumes (`make vectorise-check`; CI runs it).

The pragma does not force vectorisation. For AVX2 and SSE, GCC gives up on a loop ("control flow
in loop") when a load or store sits under a condition, or when selects on compares are more than it
if-converts; with AVX-512's masked loads and stores the same loop goes through. Such a loop quietly
runs scalar on AVX2-only machines: the batch-norm backward ran 3x slower than torch there while it
was 2x faster on AVX-512. Each kernel file is compiled as CMake builds its avx2 variant (-O3
-march=x86-64-v3 -fopenmp) with GCC's vectorisation report, and every loop under the pragma must be
reported vectorised.

    python scripts/check_vectorised.py [FILE.cpp ...]     (default: every csrc/cpu/isa/*.cpp)
Exit status 1 when a loop is not vectorised, 2 when g++ is missing.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def simd_loops(lines: list[str]) -> list[int]:
    """1-based line of the `for` under each `#pragma omp simd`."""
    loops = []
    for i, line in enumerate(lines):
        if line.strip().startswith("#pragma omp simd"):
            j = i + 1
            while "for (" not in lines[j]:
                j += 1
            loops.append(j + 1)
    return loops


def vectorised_loops(source: Path, lines: list[str], gxx: str = "g++") -> set[int]:
    """1-based lines of the `for` statements that GCC reports vectorised for AVX2."""
    from torch.utils.cpp_extension import include_paths

    includes = [arg for path in include_paths() for arg in ("-isystem", path)]
    report = subprocess.run(
        [gxx, "-O3", "-DNDEBUG", "-std=gnu++17", "-march=x86-64-v3", "-mtune=generic", "-fopenmp",
         "-DPYNEURO_CPU_ISA=avx2", "-DPYNEURO_CPU_MULTI_ISA=1", f"-I{ROOT / 'csrc'}", *includes,
         "-fopt-info-vec-optimized", "-c", str(source), "-o", "/dev/null"],
        capture_output=True, text=True, check=True).stderr
    found = set()
    for match in re.finditer(re.escape(source.name) + r":(\d+):\d+: optimized: loop vectorized", report):
        k = int(match.group(1)) - 1  # GCC may name a line of the loop's header or body: the for above it
        while k >= 0 and "for (" not in lines[k]:
            k -= 1
        found.add(k + 1)
    return found


def missed_loops(source: Path, gxx: str = "g++") -> tuple[int, list[str]]:
    """(loops under the pragma, "file:line: for ..." of each one not vectorised)."""
    lines = source.read_text().splitlines()
    loops, done = simd_loops(lines), vectorised_loops(source, lines, gxx)
    return len(loops), [f"{source.name}:{n}: {lines[n - 1].strip()}" for n in loops if n not in done]


def main(argv: list[str]) -> int:
    gxx = shutil.which("g++")
    if gxx is None:
        print("check_vectorised: g++ not found", file=sys.stderr)
        return 2
    sources = [Path(a) for a in argv] or sorted((ROOT / "csrc" / "cpu" / "isa").glob("*.cpp"))
    failed = []
    for source in sources:
        count, missed = missed_loops(source, gxx)
        print(f"{'FAIL' if missed else 'ok  '}  {source.name}: {count} omp simd loops, {len(missed)} not vectorised "
              "for AVX2", flush=True)
        failed += missed
    for line in failed:
        print("  not vectorised:", line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
