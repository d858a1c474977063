"""Run the benchmark cases, print a table of times and ratios against each case's baseline, write JSON.

Each timing is also given as a fraction of what this machine reaches on the case's bound: the
copy bandwidth for memory-bound cases (bytes), the GEMM peak of the case's dtype for compute-bound
ones (flops). Both are measured at the start of the run, on the same device. The contenders of a
case are timed interleaved, one call of each per round, for at least half a second each: the
ratio to the baseline then holds on a machine whose speed drifts during the run."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys

import torch

from .cases import CASES
from .timing import copy_bandwidth, gemm_peak, time_interleaved

# Seconds of timed calls per contender and case (at least --repeats calls): sub-millisecond cases
# get hundreds of calls, so their medians hold on a shared 2-core machine.
MIN_TIME_S = 0.5


def cpu_name() -> str:
    """The processor's model name and its widest x86 vector ISA (ratios differ between AVX2 and
    AVX-512 machines, so recorded runs say which one they ran on)."""
    try:
        text = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                platform.machine())
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
    return f"{name}{', ' + isa if isa else ''}"


def machine(device: torch.device) -> dict:
    info = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "platform": platform.platform(),
            "cpu": cpu_name()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def run(ops, device: torch.device, quick: bool, repeats: int, stream=None, on_case=None) -> dict:
    """Time every case of ``ops``; ``on_case(results)`` after each (to save what is done so far)."""
    stream = stream or sys.stdout  # looked up per call: a default bound at import would miss a redirect
    results = {"machine": machine(device), "device": str(device), "quick": quick, "cases": []}
    bandwidth = copy_bandwidth(device, (1 << 26) if device.type == "cpu" else (1 << 30))
    results["copy_bandwidth_GBps"] = bandwidth / 1e9
    print(f"# device {device} ({results['machine'].get('gpu', platform.processor() or 'cpu')}), "
          f"copy bandwidth {bandwidth / 1e9:.1f} GB/s", file=stream)
    peaks: dict[str, float] = {}  # GEMM FLOP/s per dtype, measured when a case first needs it
    results["gemm_peak_TFLOPs"] = {}

    def peak_for(dtype_name: str) -> float:
        if dtype_name not in peaks:
            peaks[dtype_name] = gemm_peak(device, getattr(torch, dtype_name))
            results["gemm_peak_TFLOPs"][dtype_name] = peaks[dtype_name] / 1e12
            print(f"# GEMM peak ({dtype_name}) {peaks[dtype_name] / 1e12:.2f} TFLOP/s", file=stream)
        return peaks[dtype_name]

    for op in ops:
        for case in CASES[op](device, quick):
            # Contenders interleaved call by call, for at least MIN_TIME_S each (not in --quick).
            timings = time_interleaved(case["contenders"], device, warmup=1 if quick else 2, repeats=repeats,
                                       min_time=0.0 if quick else MIN_TIME_S)
            base = timings.get(case["baseline"], {}).get("median_s")
            rows = []
            for label, t in timings.items():
                row = {"contender": label, **t}
                if "median_s" in t:
                    if base:
                        row["speedup_vs_baseline"] = base / t["median_s"]
                    if case.get("bytes"):
                        row["GBps"] = case["bytes"] / t["median_s"] / 1e9
                        row["fraction_of_copy_bw"] = case["bytes"] / t["median_s"] / bandwidth
                    if case.get("flops"):
                        row["TFLOPs"] = case["flops"] / t["median_s"] / 1e12
                        row["fraction_of_gemm_peak"] = case["flops"] / t["median_s"] / peak_for(case["dtype"])
                rows.append(row)
            record = {k: v for k, v in case.items() if k != "contenders"}
            record["results"] = rows
            results["cases"].append(record)
            _print_case(record, stream)
            if on_case is not None:
                on_case(results)
    return results


def write_json(results: dict, path: str) -> None:
    """Atomically: a run stopped mid-write (a timeout) leaves the previous, complete file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, path)


def _print_case(record, stream) -> None:
    shape = " ".join(f"{k}={v}" for k, v in record["shape"].items())
    print(f"\n{record['op']} {record['mode']} {record['dtype']} {shape}  (baseline: {record['baseline']})", file=stream)
    for row in record["results"]:
        if "error" in row:
            print(f"  {row['contender']:<18} error: {row['error']}", file=stream)
            continue
        extra = ""
        if "GBps" in row:
            extra += f"  {row['GBps']:8.1f} GB/s ({100 * row['fraction_of_copy_bw']:.0f}% of copy)"
        if "TFLOPs" in row:
            extra += f"  {row['TFLOPs']:7.3f} TFLOP/s ({100 * row['fraction_of_gemm_peak']:.0f}% of GEMM)"
        ratio = f"{row['speedup_vs_baseline']:7.2f}x" if "speedup_vs_baseline" in row else "      -"
        print(f"  {row['contender']:<18} {row['median_s'] * 1e3:10.3f} ms  {ratio}{extra}", file=stream)


def main(argv=None, prog: str = "pyneuro bench") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--mnist" in argv:  # the models' training throughput instead of the ops (pyneuro.bench.mnist)
        from .mnist import main as mnist_main

        return mnist_main([a for a in argv if a != "--mnist"], prog=f"{prog} --mnist")
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    p.add_argument("--ops", default=",".join(CASES), help=f"comma-separated subset of {list(CASES)}")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="small shapes (a smoke run, not a measurement)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = set(ops) - set(CASES)
    if unknown:
        p.error(f"--ops: unknown {sorted(unknown)}; choose from {list(CASES)}")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    # The JSON is rewritten after every case, so a run cut off by a time limit keeps its figures.
    save = (lambda results: write_json(results, args.json)) if args.json else None
    results = run(ops, device, args.quick, args.repeats, on_case=save)
    if args.json:
        write_json(results, args.json)
        print(f"\nwrote {args.json}")
    return 0
