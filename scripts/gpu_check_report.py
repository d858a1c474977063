"""Bookkeeping for scripts/gpu_check.sh (stdlib only, so it works whatever state torch is in).

    gpu_check_report.py init SUMMARY STAGE...              every stage "pending"
    gpu_check_report.py stage SUMMARY NAME STATUS SECONDS [--counts FILE.json] [key=value...]
    gpu_check_report.py junit XML COUNTS.json [--allow-import-skip "PATH_PREFIX|REASON_PART|WHY"...]
                                                           fails on any skip, failure, error, or no test
    gpu_check_report.py bench JSON COUNTS.json             fails on a contender error, no CUDA kernel timed,
                                                           or a time not measured with CUDA events
    gpu_check_report.py show SUMMARY                       the closing table; exit 1 unless all stages ok

The summary is rewritten (atomically) after every stage, so a run cut off by its time limit still
says which stages it reached. A skip in the junit xml of a run selected with -m "(cuda or triton) and ..."
means a GPU path did not run, which is what this check exists to catch. A module skipped at import
(pytest.importorskip) hides which markers its tests carry; only one that an --allow-import-skip
entry names, for a reason containing REASON_PART, passes (with WHY printed).
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {"stages": {}}


def _save(path: Path, summary: dict) -> None:
    ok = [s["status"] for s in summary["stages"].values()]
    summary["status"] = ("failed" if any(s not in ("ok", "pending") for s in ok)
                         else "ok" if ok and all(s == "ok" for s in ok) else "incomplete")
    summary["updated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    os.replace(tmp, path)


def cmd_init(summary_path: Path, stages: list[str]) -> int:
    summary = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "stages": {name: {"status": "pending"} for name in stages}}
    _save(summary_path, summary)
    return 0


def cmd_stage(summary_path: Path, name: str, status: str, seconds: str, extra: list[str]) -> int:
    summary = _load(summary_path)
    entry = {"status": status, "seconds": round(float(seconds), 1)}
    counts = {}
    it = iter(extra)
    for item in it:
        if item == "--counts":
            counts.update(_load_counts(Path(next(it))))
        else:
            key, value = item.split("=", 1)
            counts[key] = int(value) if value.lstrip("-").isdigit() else value
    if counts:
        entry["counts"] = counts
    summary["stages"][name] = entry
    _save(summary_path, summary)
    return 0


def _load_counts(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # the stage did not get as far as counting


def cmd_junit(xml_path: Path, counts_path: Path, extra: list[str]) -> int:
    allowed = [entry.split("|", 2) for flag, entry in zip(extra[::2], extra[1::2])
               if flag == "--allow-import-skip"]
    counts = {"tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0, "xfailed": 0,
              "allowed_import_skips": 0}
    problems = []
    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError) as exc:
        problems.append(f"no readable junit xml at {xml_path} ({exc}): pytest did not finish")
        root = ET.Element("testsuites")
    for case in root.iter("testcase"):
        test_id = "::".join(filter(None, [case.get("classname"), case.get("name")]))
        counts["tests"] += 1
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        if outcome is None:
            counts["passed"] += 1
        elif outcome.tag == "skipped" and outcome.get("type") == "pytest.xfail":
            counts["xfailed"] += 1
            print(f"xfail    {test_id}: {outcome.get('message', '')}")
        elif outcome.tag == "skipped":
            reason = (outcome.text or outcome.get("message") or "").strip()
            if outcome.get("message") == "collection skipped":
                module = case.get("name", "").replace(".", "/")  # the module's dotted path
                why = next((w for prefix, part, w in allowed if module.startswith(prefix) and part in reason), None)
                if why is not None:
                    counts["tests"] -= 1
                    counts["allowed_import_skips"] += 1
                    print(f"allowed  {module}.py skipped at import ({reason}): {why}")
                    continue
                counts["skipped"] += 1
                problems.append(f"module skipped at import, its cuda/triton tests did not run: {test_id}: {reason}")
            else:
                counts["skipped"] += 1
                problems.append(f"skipped: {test_id}: {reason}")
        else:
            counts["failed" if outcome.tag == "failure" else "errors"] += 1
            # The text's last line is the exception itself; the message attribute may be generic.
            lines = (outcome.text or "").strip().splitlines()
            why = lines[-1] if lines else outcome.get("message", "")
            problems.append(f"{outcome.tag}: {test_id}: {why[:300]}")
    if counts["tests"] == 0 or counts["passed"] == 0:
        problems.append("no cuda/triton test passed (none collected?)")
    counts_path.write_text(json.dumps(counts))
    print(" ".join(f"{k}={v}" for k, v in counts.items()))
    for p in problems:
        print(f"FAIL: {p}")
    return 1 if problems else 0


def cmd_bench(json_path: Path, counts_path: Path) -> int:
    problems = []
    counts = {"cases": 0, "timings": 0, "errors": 0}
    try:
        results = json.loads(json_path.read_text())
    except (OSError, ValueError) as exc:
        results = {"cases": []}
        problems.append(f"no readable benchmark json at {json_path} ({exc})")
    if results.get("device", "cuda").split(":")[0] != "cuda":
        problems.append(f"benchmarks ran on {results.get('device')}, not on the GPU")
    for case in results.get("cases", []):
        counts["cases"] += 1
        where = f"{case.get('op')} {case.get('mode')} {case.get('dtype')} {case.get('shape')}"
        labels = []
        for row in case.get("results", []):
            if "error" in row:
                counts["errors"] += 1
                problems.append(f"{where} {row.get('contender')}: {row['error']}")
            elif "median_s" in row:
                counts["timings"] += 1
                labels.append(row.get("contender", ""))
                if row.get("clock") != "cuda-events":
                    problems.append(f"{where} {row.get('contender')}: timed by {row.get('clock', 'an unnamed clock')}, "
                                    f"not CUDA events")
        # Ours: the cuda backend, or triton where there is no CUDA kernel (long attention).
        if not any("cuda" in label or "triton" in label for label in labels):
            problems.append(f"{where}: no kernel of ours (cuda, triton) was timed (contenders timed: {labels})")
    if counts["cases"] == 0:
        problems.append("no benchmark case ran")
    counts_path.write_text(json.dumps(counts))
    print(" ".join(f"{k}={v}" for k, v in counts.items()))
    for p in problems:
        print(f"FAIL: {p}")
    return 1 if problems else 0


def cmd_show(summary_path: Path) -> int:
    summary = _load(summary_path)
    print(f"{'stage':<14} {'status':<38} {'seconds':>7}  counts")
    for name, s in summary["stages"].items():
        counts = " ".join(f"{k}={v}" for k, v in s.get("counts", {}).items())
        print(f"{name:<14} {s['status']:<38} {s.get('seconds', ''):>7}  {counts}")
    print(f"overall: {summary.get('status')}  ({summary_path})")
    return 0 if summary.get("status") == "ok" else 1


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "init":
        return cmd_init(Path(args[0]), args[1:])
    if cmd == "stage":
        return cmd_stage(Path(args[0]), args[1], args[2], args[3], args[4:])
    if cmd == "junit":
        return cmd_junit(Path(args[0]), Path(args[1]), args[2:])
    if cmd == "bench":
        return cmd_bench(Path(args[0]), Path(args[1]))
    if cmd == "show":
        return cmd_show(Path(args[0]))
    print(f"unknown command {cmd!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
