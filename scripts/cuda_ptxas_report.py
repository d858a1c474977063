"""Judge ptxas's resource report (nvcc -Xptxas -v) of the CUDA kernels: spills and shared memory.

Used by scripts/check_cuda_compile.sh; stdlib only. Fails (exit 1) on
  * a register spill (spill stores or loads > 0) in any instance of a hot kernel: every __global__
    of the sources is hot unless --exempt names it with a reason;
  * static + dynamic shared memory (dynamic: the launcher's size at the largest supported N, from
    scripts/cuda_smem_probe.cu) above the architecture's per-block opt-in limit;
  * a kernel the probe does not size, a probe line or exemption naming no kernel, an empty report.

    python3 scripts/cuda_ptxas_report.py --sources csrc/cuda/*.cu --smem probe.txt \
        --log sm_80=a.log --log sm_90=b.log [--exempt "kernel=why it is not hot"]
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

KIB = 1024
# cudaDevAttrMaxSharedMemoryPerBlockOptin and shared memory per SM (CUDA programming guide,
# "Technical Specifications per Compute Capability"); the driver reserves 1 KiB per resident block.
SMEM_PER_BLOCK_OPTIN = {80: 163 * KIB, 86: 99 * KIB, 87: 163 * KIB, 89: 99 * KIB, 90: 227 * KIB,
                        100: 227 * KIB, 120: 99 * KIB}
SMEM_PER_SM = {80: 164 * KIB, 86: 100 * KIB, 87: 164 * KIB, 89: 100 * KIB, 90: 228 * KIB,
               100: 228 * KIB, 120: 100 * KIB}
SMEM_RESERVED_PER_BLOCK = 1 * KIB
MAX_BLOCKS_PER_SM = {80: 32, 86: 16, 87: 32, 89: 24, 90: 32, 100: 32, 120: 24}


@dataclass
class Instance:
    """One compiled function (a kernel template instance) for one architecture."""
    mangled: str
    arch: int
    entry: bool = False
    registers: int = 0
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    static_smem: int = 0
    name: str = ""   # the kernel's name in the source
    label: str = ""  # template arguments, for messages


def parse_ptxas(text: str, arch: int) -> dict[str, Instance]:
    funcs: dict[str, Instance] = {}
    current = None
    for line in text.splitlines():
        if m := re.search(r"Compiling entry function '([^']+)' for 'sm_(\d+)a?'", line):
            current = funcs.setdefault(m.group(1), Instance(m.group(1), arch))
            current.entry = True
        elif m := re.search(r"Function properties for (\S+)", line):
            current = funcs.setdefault(m.group(1), Instance(m.group(1), arch))
        elif current is not None and (m := re.search(
                r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            current.stack, current.spill_stores, current.spill_loads = map(int, m.groups())
        elif current is not None and (m := re.search(r"Used (\d+) registers", line)):
            current.registers = int(m.group(1))
            if s := re.search(r"(\d+) bytes smem", line):
                current.static_smem = int(s.group(1))
    return funcs


def demangle(names: list[str]) -> dict[str, str]:
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True,
                             check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        out = names
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def split_name(demangled: str) -> tuple[str, str]:
    """'void ns::(anonymous namespace)::k<float, true>(P)' -> ('k', '<float, true>')."""
    s = re.sub(r"^void ", "", demangled.replace("(anonymous namespace)::", ""))
    m = re.match(r"[\w:~]+", s)
    if not m:
        return demangled, ""
    name, rest = m.group(0).split("::")[-1], s[m.end():]
    depth, end = 0, 0
    for i, ch in enumerate(rest):
        depth += {"<": 1, ">": -1}.get(ch, 0)
        if ch == "(" and depth == 0:
            end = i
            break
    return name, rest[:end]


def source_kernels(paths: list[str]) -> dict[str, str]:
    """Every __global__ function name in the sources -> its file."""
    found = {}
    for path in paths:
        text = re.sub(r"//[^\n]*|/\*.*?\*/", "", Path(path).read_text(), flags=re.S)
        text = re.sub(r"__launch_bounds__\s*\([^)]*\)", "", text)
        # The name is the identifier right before the parameter list: __global__ [static] void name(
        for m in re.finditer(r"__global__\b([^(;{]*?)(\w+)\s*\(", text):
            found[m.group(2)] = path
    return found


def read_probe(path: str) -> dict[str, int]:
    sizes = {}
    for line in Path(path).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, value = line.split()
            sizes[name] = int(value)
    return sizes


def kib(n: int) -> str:
    return f"{n / KIB:.1f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sources", nargs="+", required=True)
    p.add_argument("--smem", required=True, help="output of scripts/cuda_smem_probe.cu")
    p.add_argument("--log", action="append", required=True, help="sm_XX=path of a ptxas -v log")
    p.add_argument("--exempt", action="append", default=[], help="kernel=reason (not hot: spills allowed)")
    args = p.parse_args(argv)

    failures: list[str] = []
    warnings: list[str] = []
    kernels = source_kernels(args.sources)
    exempt = dict(e.split("=", 1) for e in args.exempt)
    for name, reason in exempt.items():
        if name not in kernels:
            failures.append(f"exemption for '{name}' names no __global__ in {args.sources} (stale?)")
        if not reason.strip():
            failures.append(f"exemption for '{name}' gives no reason")
    dyn = read_probe(args.smem)

    instances: list[Instance] = []
    for spec in args.log:
        arch_s, path = spec.split("=", 1)
        arch = int(arch_s.removeprefix("sm_"))
        funcs = parse_ptxas(Path(path).read_text(), arch)
        if not any(f.entry for f in funcs.values()):
            failures.append(f"{path}: no kernel in the ptxas report (did -Xptxas -v run? format changed?)")
        instances += funcs.values()
    names = demangle(sorted({i.mangled for i in instances}))
    for inst in instances:
        inst.name, inst.label = split_name(names[inst.mangled])

    # Non-entry functions (not inlined) spill on behalf of whichever kernel calls them.
    for inst in instances:
        if not inst.entry and (inst.spill_stores or inst.spill_loads):
            failures.append(f"sm_{inst.arch} device function {names[inst.mangled]}: "
                            f"{inst.spill_stores} B spill stores, {inst.spill_loads} B spill loads")

    groups: dict[tuple[str, int], list[Instance]] = defaultdict(list)
    for inst in instances:
        if inst.entry:
            groups[(inst.name, inst.arch)].append(inst)
    archs = sorted({a for _, a in groups})
    for name in sorted(kernels):
        missing = [a for a in archs if (name, a) not in groups]
        if missing:
            warnings.append(f"__global__ {name} ({kernels[name]}) was not compiled for "
                            f"{', '.join(f'sm_{a}' for a in missing)} (template never instantiated?)")
    for name in sorted(set(dyn) - {n for n, _ in groups}):
        failures.append(f"scripts/cuda_smem_probe.cu sizes '{name}', which no compiled kernel is called")

    header = (f"{'kernel':<28} {'arch':<6} {'inst':>4} {'regs':>9} {'spill st/ld B':>13} {'stack B':>7} "
              f"{'static KiB':>10} {'dyn@Nmax KiB':>12} {'total KiB':>9} {'limit KiB':>9} {'blk/SM':>6}  status")
    rows = [header, "-" * len(header)]
    for (name, arch), group in sorted(groups.items()):
        status = []
        hot = name not in exempt
        spilling = [g for g in group if g.spill_stores or g.spill_loads]
        if spilling:
            for g in spilling:
                msg = (f"sm_{arch} {name}{g.label}: {g.spill_stores} B spill stores, {g.spill_loads} B spill "
                       f"loads ({g.registers} registers)")
                (failures if hot else warnings).append(msg + ("" if hot else f" [exempt: {exempt[name]}]"))
            status.append("SPILL" if hot else "spill (exempt)")
        limit = SMEM_PER_BLOCK_OPTIN.get(arch)
        static = max(g.static_smem for g in group)
        if name not in dyn:
            failures.append(f"{name} ({kernels.get(name, '?')}): no dynamic shared memory size; add a line to "
                            f"scripts/cuda_smem_probe.cu (0 when launched without dynamic shared memory)")
            total_s, blocks_s = "?", "?"
            status.append("NO SIZE")
        else:
            total = static + dyn[name]
            total_s = kib(total)
            blocks_s = (str(min(SMEM_PER_SM[arch] // (total + SMEM_RESERVED_PER_BLOCK), MAX_BLOCKS_PER_SM[arch]))
                        if arch in SMEM_PER_SM else "?")
            if limit is None:
                failures.append(f"sm_{arch}: no shared-memory limit known; add it to {Path(__file__).name}")
            elif total > limit:
                failures.append(f"sm_{arch} {name}: {kib(static)} KiB static + {kib(dyn[name])} KiB dynamic at "
                                f"the largest N = {kib(total)} KiB > the {kib(limit)} KiB a block may opt in to")
                status.append("SMEM>LIMIT")
        regs = {g.registers for g in group}
        regs_s = f"{min(regs)}-{max(regs)}" if len(regs) > 1 else str(regs.pop())
        spill_s = f"{max(g.spill_stores for g in group)}/{max(g.spill_loads for g in group)}"
        rows.append(f"{name:<28} sm_{arch:<3} {len(group):>4} {regs_s:>9} {spill_s:>13} "
                    f"{max(g.stack for g in group):>7} {kib(static):>10} {kib(dyn.get(name, 0)):>12} "
                    f"{total_s:>9} {kib(limit) if limit else '?':>9} {blocks_s:>6}  "
                    f"{', '.join(status) or 'ok'}{'' if hot else ' (not hot: ' + exempt[name] + ')'}")
    print("\n".join(rows))
    print("(regs, spills, stack: the worst template instance; blk/SM: resident blocks per SM that shared "
          "memory allows, at most the architecture's block limit)")
    for w in warnings:
        print(f"warning: {w}")
    for f in failures:
        print(f"FAIL: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
