"""Checkpoints written atomically: a crash or Ctrl-C mid-write never leaves a half-written file."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    pass


def atomic_write_bytes(path: str | Path, writer) -> None:
    """Call writer(file) on a temp file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_checkpoint(state: dict, path: str | Path) -> None:
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint saved by :func:`save_checkpoint`; a run folder means its last.pt."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        # weights_only: a checkpoint is data (tensors, numbers, strings), never code to run.
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, wrong format, foreign pickle
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt: {exc}") from None
    missing = {"model", "model_state", "settings"} - set(state if isinstance(state, dict) else ())
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a pyneuro checkpoint (missing {sorted(missing)})")
    return state
