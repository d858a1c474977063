"""Build the project's real CUDA kernels for cuda_emu with g++ (no GPU, no nvcc).

    python tools/cuda_emu/build.py [--target selective_scan] [--sanitize address,undefined|thread]

prints the path of the built library (or, for a ``*_selfcheck`` target, executable). Steps:
mirror csrc/ into the build folder through rewrite_cu.py (launches, extern __shared__), compile
every csrc/cuda/*.cu as C++ with tools/cuda_emu/include first on the include path, plus the
runtime and the target's driver, and link. The result is cached in
build/cuda_emu/<target>-<mode>-<hash>/, the hash covering every input file, the flags and the
compiler version, so a rerun with nothing changed costs one hash of ~100 KB of text.

Sanitizers: ``address,undefined`` instruments everything; ``thread`` instruments the kernels and
drivers but not the runtime's scheduler, which declares the GPU's happens-before edges to TSan
instead (src/runtime.cpp). Sanitized code must be the main program (a library loaded by Python
would need the sanitizer runtime preloaded), so tests use the ``*_selfcheck`` executables there.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _load_sibling(name: str):
    """tools/cuda_emu/<name>.py, without putting tools/cuda_emu on sys.path."""
    spec = importlib.util.spec_from_file_location(f"cuda_emu_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rewrite_cu = _load_sibling("rewrite_cu")

CXX = os.environ.get("CXX", "g++")
BASE_FLAGS = ["-std=c++17", "-fPIC", "-fno-strict-aliasing", "-fno-math-errno", "-pthread",
              "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-function", "-Wno-unused-variable"]
OPT = {None: ["-O0"], "address,undefined": ["-O1", "-g", "-fno-omit-frame-pointer"],
       "thread": ["-O1", "-g"]}
SANITIZE_CHOICES = ("address,undefined", "thread")

# target: (.cu sources, C++ driver sources, executable?)
TARGETS = {
    "selective_scan": (["csrc/cuda/selective_scan.cu"], ["tools/cuda_emu/drivers/selective_scan.cpp"], False),
    "selective_scan_selfcheck": (["csrc/cuda/selective_scan.cu"], ["tools/cuda_emu/drivers/selective_scan.cpp",
                                                      "tools/cuda_emu/drivers/selective_scan_selfcheck.cpp"], True),
    "rnn": (["csrc/cuda/rnn*.cu"], ["tools/cuda_emu/drivers/rnn.cpp"], False),
    "rnn_selfcheck": (["csrc/cuda/rnn*.cu"], ["tools/cuda_emu/drivers/rnn.cpp",
                                              "tools/cuda_emu/drivers/rnn_selfcheck.cpp"], True),
    # The torch glue itself (csrc/cuda/rnn_glue.cpp under PYNEURO_RNN_GLUE_EMULATION) on CPU tensors,
    # linked against the installed (CPU) torch: load with torch.ops.load_library, ops pyneuro_emu::*.
    "rnn_glue": (["csrc/cuda/rnn*.cu"], ["csrc/cuda/rnn_glue.cpp"], False),
    "attention": (["csrc/cuda/attention.cu"], ["tools/cuda_emu/drivers/attention.cpp"], False),
    # csrc/cuda/attention_glue.cpp under PYNEURO_CUDA_GLUE_EMULATION: ops pyneuro_emu_attention::attention_fwd/_bwd.
    "attention_glue": (["csrc/cuda/attention.cu"], ["csrc/cuda/attention_glue.cpp"], False),
    "attention_selfcheck": (["csrc/cuda/attention.cu"], ["tools/cuda_emu/drivers/attention.cpp",
                                                         "tools/cuda_emu/drivers/attention_selfcheck.cpp"], True),
    "emu_selftest": (["tests/cuda_emu/kernels/*.cu"], [], False),
    "emu_selftest_main": (["tests/cuda_emu/kernels/*.cu"], ["tools/cuda_emu/drivers/emu_selftest_main.cpp"], True),
}


class BuildError(RuntimeError):
    pass


def _torch_flags() -> tuple[list[str], list[str], str]:
    """(compile flags, link flags, version) of the installed torch, for targets that use it."""
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as e:
        raise BuildError(f"torch is not importable: {e}") from e
    inc = [f"-isystem{d}" for d in cpp_extension.include_paths()]
    libs = cpp_extension.library_paths()
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    link = [f"-L{d}" for d in libs] + [f"-Wl,-rpath,{d}" for d in libs] + ["-ltorch_cpu", "-lc10", "-ltorch"]
    return (inc + [f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-DPYNEURO_RNN_GLUE_EMULATION=1",
                   "-DPYNEURO_CUDA_GLUE_EMULATION=1"], link, torch.__version__)


# Targets whose drivers use torch (compile flags for the drivers, link flags, and torch's version in the hash).
TORCH_TARGETS = {"rnn_glue", "attention_glue"}


def _compiler_version() -> str:
    try:
        return subprocess.run([CXX, "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    except (OSError, subprocess.CalledProcessError) as e:
        raise BuildError(f"{CXX} is not usable: {e}") from e


def _inputs(target: str) -> tuple[list[Path], list[Path], list[Path]]:
    cu_globs, drivers, _ = TARGETS[target]
    cu = sorted(p for g in cu_globs for p in REPO.glob(g))
    if not cu:
        raise BuildError(f"{target}: no .cu file matches {cu_globs}")
    hashed = set(cu) | {REPO / d for d in drivers}
    hashed |= {p for p in (REPO / "csrc").rglob("*") if p.suffix in (".cu", ".cuh", ".h", ".hpp")}
    hashed |= {p for p in HERE.rglob("*") if p.suffix in (".h", ".cpp", ".py") and "__pycache__" not in p.parts}
    return cu, [REPO / d for d in drivers], sorted(hashed)


def _sanitize_flags(sanitize: str | None, runtime: bool) -> list[str]:
    if sanitize is None:
        return []
    if sanitize == "thread":
        return ["-DCUDA_EMU_TSAN"] if runtime else ["-fsanitize=thread"]
    return [f"-fsanitize={sanitize}", "-fno-sanitize-recover=all"]


def _compile(src: Path, obj: Path, flags: list[str]) -> None:
    cmd = [CXX, *flags, "-c", str(src), "-o", str(obj)]
    if src.suffix in (".cu", ".cuh"):
        cmd[1:1] = ["-x", "c++"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        hint = ""
        if re.search(r"\basm\b|assembler|impossible constraint", r.stderr, re.I):
            hint = ("\nhint: inline PTX reached g++. Keep every asm() and hardware-only intrinsic in "
                    "csrc/cuda/common.cuh behind #if defined(PYNEURO_CUDA_EMULATION) with a C++ fallback.")
        raise BuildError(f"compiling {src} for cuda_emu failed:\n{' '.join(cmd)}\n{r.stderr[-6000:]}{hint}")


def _prune(root: Path, prefix: str, keep: Path, n_keep: int = 3) -> None:
    """Drop all but the n_keep newest cached builds of one target and mode (sources change often
    while kernels are being written; a process still using a deleted .so keeps its mapping)."""
    old = sorted((p for p in root.glob(prefix + "*") if p.is_dir() and ".tmp" not in p.name and p != keep),
                 key=lambda p: p.stat().st_mtime, reverse=True)
    for p in old[n_keep - 1:]:
        shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(prefix + "*.tmp*"):  # left by failed or interrupted builds
        if time.time() - p.stat().st_mtime > 3600:
            shutil.rmtree(p, ignore_errors=True)


def build(target: str = "selective_scan", sanitize: str | None = None, verbose: bool = False) -> Path:
    """Build (or find in the cache) the target; returns the library or executable path."""
    if sanitize is not None and sanitize not in SANITIZE_CHOICES:
        raise BuildError(f"sanitize must be one of {SANITIZE_CHOICES}, got {sanitize!r}")
    cu, drivers, hashed = _inputs(target)
    executable = TARGETS[target][2]
    flags = BASE_FLAGS + OPT[sanitize]
    torch_cflags, torch_ldflags, torch_version = _torch_flags() if target in TORCH_TARGETS else ([], [], "")
    h = hashlib.sha256()
    for part in (target, str(sanitize), _compiler_version(), " ".join(flags), torch_version):
        h.update(part.encode() + b"\0")
    for p in hashed:
        h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes() + b"\0")
    mode = "plain" if sanitize is None else sanitize.replace(",", "+")
    out_dir = REPO / "build" / "cuda_emu" / f"{target}-{mode}-{h.hexdigest()[:16]}"
    product = out_dir / (target if executable else f"lib{target}.so")
    if product.exists():
        return product

    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    mirror = tmp / "src"
    rewrite_cu.mirror_tree(REPO / "csrc", mirror / "csrc")
    sources = []
    for src in cu:  # .cu files outside csrc (test kernels) are rewritten on their own
        if (REPO / "csrc") in src.parents:
            sources.append(mirror / "csrc" / src.relative_to(REPO / "csrc"))
        else:
            dst = mirror / "extra" / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(rewrite_cu.rewrite_source(src.read_text(), str(src))[0])
            sources.append(dst)
    includes = [f"-I{HERE / 'include'}", f"-I{mirror / 'csrc' / 'cuda'}"]
    jobs = [(s, tmp / f"{s.stem}.cu.o", flags + includes + _sanitize_flags(sanitize, False)) for s in sources]
    jobs += [(d, tmp / f"{d.stem}.o", flags + includes + torch_cflags + _sanitize_flags(sanitize, False))
             for d in drivers]
    jobs.append((HERE / "src" / "runtime.cpp", tmp / "runtime.o", flags + includes + _sanitize_flags(sanitize, True)))
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1))) as pool:
        for f in [pool.submit(_compile, *j) for j in jobs]:
            f.result()
    link = [CXX, *flags, *(["-fsanitize=" + sanitize] if sanitize else []),
            *(() if executable else ("-shared",)), *[str(j[1]) for j in jobs], *torch_ldflags,
            "-o", str(tmp / product.name)]
    r = subprocess.run(link, capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError(f"linking {product.name} failed:\n{' '.join(link)}\n{r.stderr[-4000:]}")
    try:
        tmp.rename(out_dir)
    except OSError:  # built concurrently by another process: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
    _prune(out_dir.parent, f"{target}-{mode}-", keep=out_dir)
    if verbose:
        print(f"built {product}", file=sys.stderr)
    return product


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="selective_scan", choices=sorted(TARGETS))
    ap.add_argument("--sanitize", default=os.environ.get("PYNEURO_EMU_SANITIZE") or None,
                    choices=SANITIZE_CHOICES)
    args = ap.parse_args()
    try:
        print(build(args.target, args.sanitize, verbose=True))
    except BuildError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
