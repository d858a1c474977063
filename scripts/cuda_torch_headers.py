"""Fetch the C++ headers a CUDA build of torch compiles against, without installing that torch.

The torch-facing CUDA glue (csrc/cuda/*_glue.cpp) includes c10/cuda/*, ATen/cuda/*, which the CPU
wheel of torch does not ship, and ATen/cuda/CUDAContextLight.h pulls cuBLAS, cuSPARSE and
cuSOLVER headers, which a bare CUDA toolkit (nvcc + cudart) lacks. This downloads the wheels with
pip (from the configured index, else PyPI), extracts only their include folders into CACHE and
deletes the wheels. A stamp (CACHE/headers.json) is written last: a cache without it is rebuilt.

    python3 scripts/cuda_torch_headers.py build/torch-cuda-headers   # then read CACHE/headers.json
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

# The CUDA build of torch whose headers the glue is checked against, and the library wheels its
# cuda-toolkit[...]==13.0.3 requirement pins (only their headers are used).
TORCH_SPEC = "torch==2.14.1"
LIBRARY_SPECS = ["nvidia-cublas==13.1.1.3", "nvidia-cusparse==12.6.3.3", "nvidia-cusolver==12.0.4.66"]
STAMP = "headers.json"


def _download(specs: list[str], dest: Path) -> list[Path]:
    # torch's headers do not depend on the Python version: cp311 serves whatever interpreter runs this.
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.11", "-d", str(dest), *specs]
    print("  $", " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit(f"cuda_torch_headers: pip could not download {specs} (no index or network?)")
    return sorted(dest.glob("*.whl"))


def _extract(wheel: Path, cache: Path, keep) -> int:
    n = 0
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if keep(name) and not name.endswith("/"):
                z.extract(name, cache)
                n += 1
    return n


def _torch_facts(wheel: Path) -> dict:
    """Version, the libstdc++ ABI torch was built with, and the C++ standard its headers demand."""
    with zipfile.ZipFile(wheel) as z:
        version = re.search(r"__version__ = '([^']+)'", z.read("torch/version.py").decode()).group(1)
        init = z.read("torch/__init__.py").decode()
        aten = z.read("torch/include/ATen/ATen.h").decode()
    abi = re.search(r"def compiled_with_cxx11_abi\(\)[^:]*:\s*(?:r?\"\"\"[^\"]*\"\"\"\s*)?return (\w+)", init)
    if abi is None or abi.group(1) not in ("True", "False"):
        raise SystemExit("cuda_torch_headers: cannot tell torch's _GLIBCXX_USE_CXX11_ABI from torch/__init__.py")
    std = re.search(r"__cplusplus < (\d{4})\d\dL", aten)
    return {"torch": version, "cxx11_abi": int(abi.group(1) == "True"),
            "min_cxx_std": int(std.group(1)) % 100 if std else 17}


def _describe(facts: dict) -> str:
    return (f"torch {facts['torch']} (C++{facts['min_cxx_std']} or later, _GLIBCXX_USE_CXX11_ABI="
            f"{facts['cxx11_abi']}) + {', '.join(facts['sources'][1:])}")


def main(argv: list[str]) -> int:
    cache = Path(argv[1] if len(argv) > 1 else "build/torch-cuda-headers")
    stamp = cache / STAMP
    if stamp.is_file():
        print(f"  cached: {_describe(json.loads(stamp.read_text()))}")
        return 0
    start = time.monotonic()
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    with tempfile.TemporaryDirectory(dir=cache.parent) as tmp:
        wheels = _download([TORCH_SPEC, *LIBRARY_SPECS], Path(tmp))
        torch_wheel = next(w for w in wheels if w.name.startswith("torch-"))
        facts = _torch_facts(torch_wheel)
        lib_dirs = set()
        for wheel in wheels:
            if wheel is torch_wheel:
                n = _extract(wheel, cache, lambda name: name.startswith("torch/include/"))
            else:
                n = _extract(wheel, cache, lambda name: re.match(r"nvidia/[^/]+/include/", name) is not None)
                with zipfile.ZipFile(wheel) as z:
                    lib_dirs |= {m.group(0) for m in map(re.compile(r"nvidia/[^/]+/include").match, z.namelist()) if m}
            print(f"  {wheel.name}: {n} headers", flush=True)
    facts["include_dirs"] = [str(cache / "torch/include"), str(cache / "torch/include/torch/csrc/api/include"),
                             *(str(cache / d) for d in sorted(lib_dirs))]
    facts["sources"] = [TORCH_SPEC, *LIBRARY_SPECS]
    stamp.write_text(json.dumps(facts, indent=1))
    print(f"  extracted in {time.monotonic() - start:.0f} s: {_describe(facts)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
