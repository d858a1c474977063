"""The `pyneuro` command (also `python -m pyneuro`): train, eval, info, explain, models, bench."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_CONFIG = "config.json"


def _parser() -> argparse.ArgumentParser:
    from .models import registry

    p = argparse.ArgumentParser(prog="pyneuro", description="Train, evaluate and inspect pyneuro's MNIST models.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model on MNIST, evaluate it on the test set, write plots")
    t.add_argument("--model", choices=registry.names(), help="which model to train")
    t.add_argument("--preset", metavar="NAME",
                   help="apply a preset of the model's config section (after the file, before --set); "
                        "`pyneuro models` lists them")
    t.add_argument("--config", help=f"settings file (default: ./{DEFAULT_CONFIG} when it exists)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting: train.lr=1e-3, model.hidden_size=256, or a bare unambiguous key")
    t.add_argument("--epochs", type=int, help="number of epochs (same as --set train.epochs=N)")
    t.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to train (default: auto)")
    t.add_argument("--seed", type=int, help="random seed; the same seed repeats the run exactly")
    t.add_argument("--out", help="run folder (default: runs/MODEL, or runs/MODEL-2, ... if taken)")
    t.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run saved in RUN_DIR (its last.pt); --epochs and --device may be given")
    t.add_argument("--overwrite", action="store_true", help="reuse --out even if it holds a run")

    e = sub.add_parser("eval", help="evaluate a checkpoint on the MNIST test set")
    e.add_argument("--checkpoint", required=True, help="a last.pt file or a run folder")
    e.add_argument("--device", choices=["auto", "cpu", "cuda"])
    e.add_argument("--out", help="where to write eval.json and plots (default: the checkpoint's folder)")

    v = sub.add_parser("viz", help="draw a trained model's pictures (architecture, its own pictures, embedding) "
                                   "and the run's report.html")
    v.add_argument("checkpoint", metavar="RUN", help="a run folder or a last.pt file")
    v.add_argument("--device", choices=["auto", "cpu", "cuda"])
    v.add_argument("--out", help="where to write the pictures (default: the checkpoint's folder)")

    i = sub.add_parser("info", help="build information and the backends available for each op")
    i.add_argument("--json", action="store_true", help="print JSON")

    x = sub.add_parser("explain", help="which backend `auto` picks for an op call, and why the others were passed over")
    x.add_argument("op", help="an op name, as `pyneuro info` lists them (e.g. selective_scan)")
    x.add_argument("--shape", default="", metavar="K=V,...",
                   help="the call's sizes, e.g. batch=8,dim=1536,L=2048,N=16 (defaults: the op's example)")
    x.add_argument("--dtype", default="float32", help="float32, float16/fp16, bfloat16/bf16 or float64")
    x.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="the tensors' device")

    sub.add_parser("models", help="list the models and their default hyper-parameters")

    # Everything after `bench` goes to the runner untouched (see `pyneuro bench --help`).
    sub.add_parser("bench", help="benchmark every backend against its baseline (pyneuro.bench)",
                   add_help=False)
    return p


def _free_run_dir(model: str) -> Path:
    base = Path("runs") / model
    candidate, k = base, 1
    while (candidate / "last.pt").exists() or (candidate / "eval.json").exists():
        k += 1
        candidate = base.with_name(f"{model}-{k}")
    return candidate


def _read_config(path: str | None) -> dict | None:
    from .train import config as cfg

    if path:
        return cfg.read_config_file(path)
    if Path(DEFAULT_CONFIG).exists():
        return cfg.read_config_file(DEFAULT_CONFIG)
    return None


def train_settings(args) -> dict:
    from .train import config as cfg

    overrides = list(args.overrides)
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.device is not None:
        overrides.append(f"train.device={json.dumps(args.device)}")
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    return cfg.resolve(args.model, _read_config(args.config), overrides, preset=args.preset)


def _check_device(name: str | None) -> None:
    # Before any work (and before torchrun's processes try to join a group on a missing GPU).
    if name == "cuda":
        from .train.loop import resolve_device

        resolve_device(name)


def _headline(summary: dict) -> dict:
    """The line printed after train/eval: the test accuracy of a classifier; a generative model's
    test loss and its figures in nats (and any accuracy-like figures it reports)."""
    if "test_acc" in summary:
        return {"model": summary["model"], "test_acc": summary["test_acc"]}
    figures = {k: v for k, v in summary.items() if k.endswith(("_nats", "_acc"))}
    return {"model": summary["model"], "task": summary.get("task"), "test_loss": summary["test_loss"], **figures}


def cmd_train(args) -> int:
    from .train import loop

    _check_device(args.device)
    if args.resume:
        extra = [flag for flag, given in (("--config", args.config), ("--set", args.overrides),
                                          ("--preset", args.preset), ("--seed", args.seed is not None),
                                          ("--out", args.out), ("--overwrite", args.overwrite)) if given]
        if extra:
            raise ValueError(f"--resume continues a run with its saved settings; {', '.join(extra)} cannot be "
                             "given with it (only --epochs, --device and a matching --model)")
        run = Path(args.resume)
        if not run.is_dir():
            raise ValueError(f"--resume {run}: no such run folder")
        if not (run / "last.pt").is_file():
            raise ValueError(f"--resume {run}: the folder holds no last.pt (the run saved no checkpoint yet); "
                             "start it again with --out and --overwrite")
        settings = {"train": {"epochs": args.epochs, "device": args.device}}
        summary = loop.train(settings, run, resume=True, expect_model=args.model)
    else:
        if not args.model:
            raise ValueError("--model is required (or --resume RUN_DIR); see `pyneuro models`")
        settings = train_settings(args)
        out = Path(args.out) if args.out else _free_run_dir(args.model)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out}: exists and is not a folder")
        if ((out / "last.pt").exists() or (out / "eval.json").exists()) and not args.overwrite:
            raise ValueError(f"{out} already holds a run: pass --resume {out} to continue it, "
                             "--overwrite to start again there, or another --out")
        summary = loop.train(settings, out)
    if summary is not None:  # None on the torchrun ranks other than 0
        print(json.dumps({**_headline(summary), "plots": summary["plots"]}))
    return 0


def _output_dir(checkpoint: str, out: str | None) -> Path:
    """--out, or else the folder of the checkpoint (a run folder or its last.pt); created."""
    folder = Path(out) if out else (Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def cmd_eval(args) -> int:
    from .train import loop
    from .train.checkpoint import load_checkpoint

    _check_device(args.device)
    state = load_checkpoint(args.checkpoint)
    out = _output_dir(args.checkpoint, args.out)
    device = loop.resolve_device(args.device or state["settings"]["train"]["device"])
    summary = loop.evaluate_run(out, device=device, checkpoint=args.checkpoint)
    print(json.dumps(_headline(summary)))
    return 0


def cmd_viz(args) -> int:
    from .train import loop

    _check_device(args.device)
    model, spec, settings, device = loop.load_run_model(
        args.checkpoint, loop.resolve_device(args.device) if args.device else None)
    out = _output_dir(args.checkpoint, args.out)
    test_x, test_y = loop.load_split("test", settings["train"]["data_dir"])
    paths = [str(p) for p in loop.model_pictures(model, spec, settings, test_x, test_y, out)]
    if (out / "settings.json").exists() or (out / "eval.json").exists():
        paths.append(str(loop.write_report(out)))
    print(json.dumps({"model": spec.name, "pictures": paths}))
    return 0


def cmd_info(args) -> int:
    import pyneuro

    info = pyneuro.info()
    try:
        from .data import mnist_source_info
        info["mnist"] = mnist_source_info()
    except Exception as exc:  # info must never fail because data is absent
        info["mnist"] = f"unavailable: {exc}"
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    ext = info["extension"]
    print(f"pyneuro {info['pyneuro']}  torch {info['torch']}  CUDA build: {info['torch_cuda'] or 'no'}  "
          f"GPU visible: {info['cuda_available']}")
    if ext.get("built"):
        archs = ext["cuda_architectures"] or "-"
        print(f"extension pyneuro._C: built with {ext['compiler']}, OpenMP {'on' if ext['openmp'] else 'off'} "
              f"({ext['openmp_max_threads']} threads), CUDA {'on' if ext['cuda'] else 'off'} (archs: {archs})")
        if ext.get("cpu_isa"):
            runnable = ", ".join(ext.get("cpu_isas", []))
            print(f"CPU kernels: ISA {ext['cpu_isa']} (this CPU runs: {runnable}; PYNEURO_CPU_ISA forces one)")
        if ext.get("cpu_isa_error"):
            print(f"CPU kernels: UNAVAILABLE - {ext['cpu_isa_error']}")
    else:
        print(f"extension pyneuro._C: MISSING - {ext['reason']}")
    print(f"triton: {info['triton']}")
    print(f"MNIST source: {info['mnist']}")
    for device, ops in info["backends"].items():
        print(f"\nbackends for {device} tensors:")
        for op, backends in ops.items():
            for name, status in backends.items():
                mark = "yes" if status == "available" else "no "
                print(f"  {op:<16} {name:<10} {mark}  {'' if status == 'available' else status}")
    return 0


_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "half": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16", "float64": "float64", "fp64": "float64", "double": "float64"}


def cmd_explain(args) -> int:
    import os

    import torch

    from . import _backends

    if args.op not in _backends.OPS:
        raise ValueError(f"explain: unknown op {args.op!r}; the ops are {sorted(_backends.OPS)}")
    op = _backends.OPS[args.op]
    if args.dtype not in _DTYPES:
        raise ValueError(f"explain: --dtype must be one of {sorted(_DTYPES)}, got {args.dtype!r}")
    dtype = getattr(torch, _DTYPES[args.dtype])
    sizes = {}
    for item in filter(None, args.shape.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise ValueError(f"explain: --shape takes KEY=INT items separated by commas, got {item!r}")
        sizes[key.strip()] = int(value)
    if op.example is None:
        call_args, described = (), "any arguments"
    else:
        try:
            call_args = op.example(dtype=dtype, **sizes)
        except TypeError as exc:
            raise ValueError(f"explain: {args.op} --shape: {exc}") from None
        described = ", ".join(f"{k}={v}" for k, v in sizes.items()) or "the example sizes"
    device = torch.device(args.device)
    print(f"{args.op} on {device.type} tensors, {str(dtype).replace('torch.', '')}, {described}:")
    forced = os.environ.get("PYNEURO_BACKEND", "")
    if forced and forced != "auto":
        print(f"  note: PYNEURO_BACKEND={forced} is set, so calls with backend='auto' run on {forced!r}")
    rows = op.explain(device, *call_args)
    chosen = next((name for name, why in rows if why == "chosen"), None)
    print(f"  auto picks: {chosen or 'nothing (no backend can run this call here)'}")
    for name, why in rows:
        print(f"  {name:<10} {why}")
    return 0 if chosen else 1


def cmd_models(args) -> int:
    from .models import registry
    from .train.config import preset_names

    config = _read_config(None)
    for name in registry.names():
        spec = registry.get(name)
        kind = "" if spec.task == "classify" else f", task: {spec.task}"
        print(f"{name:<12} {spec.description} (view: {spec.view}{kind})")
        print(f"{'':<12} defaults: {json.dumps(spec.defaults)}")
        presets = preset_names(config, name)
        if presets:
            print(f"{'':<12} presets ({DEFAULT_CONFIG}): {', '.join(presets)}  (pyneuro train --model {name} "
                  f"--preset {presets[0]})")
    return 0


def cmd_bench(args) -> int:
    from .bench.runner import main as bench_main

    return bench_main(args.bench_args)


def main(argv=None) -> int:
    from .data import DataError
    from .train.checkpoint import CheckpointError
    from .train.config import ConfigError
    from .train.distributed import env_rank

    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        args.bench_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    handler = {"train": cmd_train, "eval": cmd_eval, "viz": cmd_viz, "info": cmd_info, "explain": cmd_explain, "models": cmd_models,
               "bench": cmd_bench}[args.command]
    try:
        return handler(args)
    except (ConfigError, CheckpointError, DataError, ValueError, OSError) as exc:
        if env_rank() == 0:  # under torchrun every process fails alike: say it once
            print(f"pyneuro: error: {_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        # The loop saved a checkpoint before raising Interrupted; 128 + signal is the shell's code.
        return 128 + getattr(exc, "signum", 2)


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


if __name__ == "__main__":
    raise SystemExit(main())
