"""Tests of check_cuda_compile.sh's ptxas judge on fabricated ptxas reports (no nvcc needed):
    .venv/bin/python -m pytest scripts/cuda_ptxas_report_test.py
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "cuda_ptxas_report.py"

SOURCE = """
// __global__ void commented_out_kernel(int) {}
template <typename T, bool kVar>
__global__ void __launch_bounds__(128, 3)
scan_kernel(const Params p) {}
static __global__ void tiny_kernel(float* x) {}
/* __global__ void commented_block_kernel() {} */
"""
# ptxas -v's format (CUDA 13): one block per compiled entry function.
SCAN_F = "_ZN2ns11scan_kernelIfLb1EEEvNS_6ParamsE"  # void ns::scan_kernel<float, true>(ns::Params)
SCAN_H = "_ZN2ns11scan_kernelI6__halfLb0EEEvNS_6ParamsE"
TINY = "_ZN2ns11tiny_kernelEPf"


def entry(mangled, arch, regs, spill_st=0, spill_ld=0, smem=0):
    tail = f", {smem} bytes smem" if smem else ""
    return (f"ptxas info    : Compiling entry function '{mangled}' for 'sm_{arch}'\n"
            f"ptxas info    : Function properties for {mangled}\n"
            f"    {spill_st} bytes stack frame, {spill_st} bytes spill stores, {spill_ld} bytes spill loads\n"
            f"ptxas info    : Used {regs} registers, used 1 barriers{tail}\n"
            f"ptxas info    : Compile time = 1.0 ms\n")


def judge(tmp_path, logs: dict[int, str], probe="scan_kernel 50000\ntiny_kernel 0\n", exempt=()):
    (tmp_path / "k.cu").write_text(SOURCE)
    (tmp_path / "smem.txt").write_text("# N = 256\n" + probe)
    args = [sys.executable, str(SCRIPT), "--sources", str(tmp_path / "k.cu"), "--smem", str(tmp_path / "smem.txt")]
    for arch, text in logs.items():
        (tmp_path / f"sm_{arch}.log").write_text("ptxas info    : 0 bytes gmem\n" + text)
        args += ["--log", f"sm_{arch}={tmp_path / f'sm_{arch}.log'}"]
    for e in exempt:
        args += ["--exempt", e]
    return subprocess.run(args, capture_output=True, text=True)


def clean(arch):
    return entry(SCAN_F, arch, 120) + entry(SCAN_H, arch, 110, smem=1024) + entry(TINY, arch, 16)


def test_clean_report_passes_and_prints_the_table(tmp_path):
    result = judge(tmp_path, {80: clean(80), 90: clean(90)})
    assert result.returncode == 0, result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith(("scan_kernel", "tiny_kernel"))]
    assert len(rows) == 4
    scan80 = next(r for r in rows if r.startswith("scan_kernel") and "sm_80" in r).split()
    assert scan80[2:5] == ["2", "110-120", "0/0"]  # instances, registers, spills
    assert "49.8" in scan80  # 1 KiB static + 50000 B dynamic = 49.8 KiB


def test_a_spill_in_a_hot_kernel_fails_naming_the_instance(tmp_path):
    spilling = entry(SCAN_F, 90, 168, spill_st=8, spill_ld=12) + entry(SCAN_H, 90, 110) + entry(TINY, 90, 16)
    result = judge(tmp_path, {80: clean(80), 90: spilling})
    assert result.returncode == 1
    assert "FAIL: sm_90 scan_kernel<float, true>: 8 B spill stores, 12 B spill loads (168 registers)" in result.stdout


def test_an_exempt_kernel_may_spill_but_needs_a_reason(tmp_path):
    spilling = entry(SCAN_F, 90, 120) + entry(SCAN_H, 90, 110) + entry(TINY, 90, 16, spill_st=4, spill_ld=4)
    result = judge(tmp_path, {90: spilling}, exempt=["tiny_kernel=runs once per backward, 1% of its time"])
    assert result.returncode == 0, result.stdout
    assert "exempt: runs once per backward" in result.stdout
    assert judge(tmp_path, {90: spilling}, exempt=["tiny_kernel="]).returncode == 1
    stale = judge(tmp_path, {90: clean(90)}, exempt=["gone_kernel=was slow"])
    assert stale.returncode == 1 and "names no __global__" in stale.stdout


def test_shared_memory_over_the_per_block_limit_fails_per_arch(tmp_path):
    probe = f"scan_kernel {120 * 1024}\ntiny_kernel 0\n"  # fits sm_80 (163 KiB), not sm_86 (99 KiB)
    result = judge(tmp_path, {80: clean(80), 86: clean(86)}, probe=probe)
    assert result.returncode == 1
    fails = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1 and "sm_86 scan_kernel" in fails[0] and "> the 99.0 KiB" in fails[0]


def test_a_kernel_without_a_size_or_a_size_without_a_kernel_fails(tmp_path):
    result = judge(tmp_path, {90: clean(90)}, probe="scan_kernel 100\n")
    assert result.returncode == 1 and "tiny_kernel" in result.stdout and "cuda_smem_probe.cu" in result.stdout
    result = judge(tmp_path, {90: clean(90)}, probe="scan_kernel 100\ntiny_kernel 0\nold_kernel 5\n")
    assert result.returncode == 1 and "old_kernel" in result.stdout


def test_every_global_in_the_source_is_found(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    import cuda_ptxas_report as module

    (tmp_path / "k.cu").write_text(SOURCE + "__global__ static void __launch_bounds__(256)\nthird(int n) {}\n")
    assert sorted(module.source_kernels([str(tmp_path / "k.cu")])) == ["scan_kernel", "third", "tiny_kernel"]


def test_an_empty_report_fails(tmp_path):
    result = judge(tmp_path, {90: ""})
    assert result.returncode == 1 and "no kernel in the ptxas report" in result.stdout
