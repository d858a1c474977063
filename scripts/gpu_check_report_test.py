"""Tests of gpu_check.sh's bookkeeping on fabricated inputs (no GPU needed):
    .venv/bin/python -m pytest scripts/gpu_check_report_test.py scripts/cuda_ptxas_report_test.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent
REPORT = [sys.executable, str(SCRIPTS / "gpu_check_report.py")]


def report(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*REPORT, *map(str, args)], capture_output=True, text=True)


def run_pytest(tmp_path: Path, source: str) -> Path:
    """Run pytest as gpu_check.sh does (-m "cuda or triton") on one test file; return the junit xml."""
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n  cuda: gpu\n  triton: triton\n")
    (tmp_path / "test_fabricated.py").write_text(textwrap.dedent(source))
    xml = tmp_path / "tests.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda or triton", "-p", "no:cacheprovider",
                    "--continue-on-collection-errors", "-c", str(tmp_path / "pytest.ini"),
                    "--rootdir", str(tmp_path), f"--junitxml={xml}", str(tmp_path)],
                   capture_output=True, text=True, cwd=tmp_path)
    return xml


def junit(tmp_path: Path, source: str):
    xml = run_pytest(tmp_path, source)
    result = report("junit", xml, tmp_path / "counts.json")
    return result, json.loads((tmp_path / "counts.json").read_text())


def test_junit_passes_when_every_gpu_test_ran(tmp_path):
    result, counts = junit(tmp_path, """
        import pytest
        @pytest.mark.cuda
        def test_a(): pass
        @pytest.mark.triton
        def test_b(): pass
        @pytest.mark.cuda
        @pytest.mark.xfail(reason="known bug", strict=True)
        def test_c(): assert False
        def test_cpu_only(): pytest.skip("deselected anyway")
    """)
    assert result.returncode == 0, result.stdout
    assert counts == {"tests": 3, "passed": 2, "failed": 0, "errors": 0, "skipped": 0, "xfailed": 1,
                      "allowed_import_skips": 0}


def test_junit_fails_on_a_skipped_gpu_test_and_prints_why(tmp_path):
    result, counts = junit(tmp_path, """
        import pytest
        @pytest.mark.cuda
        def test_ran(): pass
        @pytest.mark.cuda
        @pytest.mark.skipif(True, reason="pyneuro._C was built without CUDA")
        def test_skipped(): pass
    """)
    assert result.returncode == 1
    assert counts["skipped"] == 1 and counts["passed"] == 1
    assert "FAIL: skipped: test_fabricated::test_skipped" in result.stdout
    assert "pyneuro._C was built without CUDA" in result.stdout


def test_junit_fails_on_a_module_skipped_at_import(tmp_path):
    result, _ = junit(tmp_path, """
        import pytest
        pytest.importorskip("module_that_is_not_installed_xyz", reason="needs module_that_is_not_installed_xyz")
        @pytest.mark.cuda
        def test_never_collected(): pass
    """)
    assert result.returncode == 1
    assert "module skipped at import" in result.stdout and "module_that_is_not_installed_xyz" in result.stdout


def test_an_allowed_import_skip_passes_only_for_its_path_and_reason(tmp_path):
    (tmp_path / "fuzz").mkdir()
    (tmp_path / "fuzz" / "test_fuzz_x.py").write_text(
        'import pytest\npytest.importorskip("module_that_is_not_installed_xyz", reason="needs hypothesis")\n')
    xml = run_pytest(tmp_path, "import pytest\n@pytest.mark.cuda\ndef test_ok(): pass\n")
    allowed = report("junit", xml, tmp_path / "c.json", "--allow-import-skip", "fuzz/|needs hypothesis|no GPU tests there")
    assert allowed.returncode == 0, allowed.stdout
    assert "no GPU tests there" in allowed.stdout
    assert json.loads((tmp_path / "c.json").read_text())["allowed_import_skips"] == 1
    other_reason = report("junit", xml, tmp_path / "c.json", "--allow-import-skip", "fuzz/|needs numpy|why")
    other_path = report("junit", xml, tmp_path / "c.json", "--allow-import-skip", "tests/fuzz/|needs hypothesis|why")
    assert other_reason.returncode == 1 and other_path.returncode == 1


def test_junit_fails_on_a_collection_error_and_on_a_failure(tmp_path):
    result, counts = junit(tmp_path, """
        import pytest
        @pytest.mark.cuda
        def test_fails(): assert 1 == 2
    """)
    assert result.returncode == 1 and counts["failed"] == 1
    (tmp_path / "test_broken.py").write_text("import module_that_is_not_installed_abc\n")
    result, counts = junit(tmp_path, "import pytest\n@pytest.mark.cuda\ndef test_ok(): pass\n")
    assert result.returncode == 1 and counts["errors"] == 1
    assert "module_that_is_not_installed_abc" in result.stdout


def test_junit_fails_when_nothing_ran_or_pytest_left_no_xml(tmp_path):
    result, counts = junit(tmp_path, "def test_cpu(): pass\n")  # deselected: no GPU test at all
    assert result.returncode == 1 and counts["tests"] == 0
    result = report("junit", tmp_path / "missing.xml", tmp_path / "counts.json")
    assert result.returncode == 1 and "pytest did not finish" in result.stdout


def test_summary_is_rewritten_after_every_stage(tmp_path):
    summary = tmp_path / "summary.json"
    assert report("init", summary, "device", "tests", "bench").returncode == 0
    assert json.loads(summary.read_text())["status"] == "incomplete"
    counts = tmp_path / "c.json"
    counts.write_text(json.dumps({"tests": 5, "passed": 5}))
    report("stage", summary, "device", "ok", "1.5", "arch=sm_90")
    report("stage", summary, "tests", "ok", "30", "--counts", counts)
    data = json.loads(summary.read_text())
    assert data["stages"]["device"] == {"status": "ok", "seconds": 1.5, "counts": {"arch": "sm_90"}}
    assert data["stages"]["tests"]["counts"] == {"tests": 5, "passed": 5}
    assert data["stages"]["bench"] == {"status": "pending"} and data["status"] == "incomplete"
    assert report("show", summary).returncode == 1  # a stage never ran: not a pass
    report("stage", summary, "bench", "timeout after 120 s", "120")
    assert json.loads(summary.read_text())["status"] == "failed"
    shown = report("show", summary)
    assert shown.returncode == 1 and "timeout after 120 s" in shown.stdout
    report("stage", summary, "bench", "ok", "3")
    assert report("show", summary).returncode == 0
    assert not list(tmp_path.glob("*.tmp"))


def _bench(tmp_path, cases, device="cuda"):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"device": device, "cases": cases}))
    return report("bench", path, tmp_path / "bench_counts.json")


def test_bench_needs_a_cuda_timing_and_no_errors(tmp_path):
    case = {"op": "selective_scan", "mode": "fwd", "dtype": "float32", "shape": {"L": 8}}
    cuda = {"contender": "cuda", "median_s": 1e-3, "clock": "cuda-events"}
    good = [{**case, "results": [cuda, {"contender": "reference", "median_s": 1e-2, "clock": "cuda-events"}]}]
    assert _bench(tmp_path, good).returncode == 0
    wall = [{**case, "results": [{**cuda, "clock": "wall"}]}]
    assert _bench(tmp_path, wall).returncode == 1 and "not CUDA events" in _bench(tmp_path, wall).stdout
    errored = [{**case, "results": [cuda, {"contender": "triton", "error": "boom"}]}]
    assert "triton: boom" in _bench(tmp_path, errored).stdout
    assert _bench(tmp_path, errored).returncode == 1
    no_cuda = [{**case, "results": [{"contender": "reference", "median_s": 1e-2, "clock": "cuda-events"}]}]
    assert _bench(tmp_path, no_cuda).returncode == 1 and "no kernel of ours" in _bench(tmp_path, no_cuda).stdout
    triton_only = [{**case, "results": [{"contender": "triton", "median_s": 1e-3, "clock": "cuda-events"}]}]
    assert _bench(tmp_path, triton_only).returncode == 0  # long attention has no CUDA kernel
    assert _bench(tmp_path, good, device="cpu").returncode == 1
    assert _bench(tmp_path, []).returncode == 1


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_has_gpu(), reason="a GPU is present: this test is about machines without one")
def test_gpu_check_fails_fast_without_a_gpu_and_still_writes_the_summary(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(SCRIPTS / "gpu_check.sh")], capture_output=True, text=True,
                            env={**os.environ, "OUT": str(out), "PYTHON": sys.executable}, timeout=120)
    assert result.returncode != 0
    assert "no CUDA device" in result.stdout + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["stages"]["device"]["status"] == "failed: no CUDA device"
    assert summary["stages"]["tests"] == {"status": "pending"}
    # What comes back from the device machine (at most 8 files): the summary and one archive of logs.
    assert sorted(p.name for p in out.iterdir()) == ["logs.tgz", "summary.json"]
    with tarfile.open(out / "logs.tgz") as logs:
        assert "./device.log" in logs.getnames()


@pytest.mark.skipif(_has_gpu(), reason="a GPU is present: this test is about machines without one")
def test_gpu_check_reruns_only_the_stages_asked_for(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "GPU_CHECK_LOGS": str(tmp_path / "logs")}
    result = subprocess.run(["bash", str(SCRIPTS / "gpu_check.sh")], capture_output=True, text=True,
                            env={**env, "GPU_CHECK_STAGES": "bench memcheck"}, timeout=120)
    assert result.returncode != 0
    assert list(json.loads((out / "summary.json").read_text())["stages"]) == ["device", "bench", "memcheck"]
    bad = subprocess.run(["bash", str(SCRIPTS / "gpu_check.sh")], capture_output=True, text=True,
                         env={**env, "GPU_CHECK_STAGES": "tests benches"}, timeout=60)
    assert bad.returncode == 2 and "unknown stage 'benches'" in bad.stderr
