"""Checkpoints written atomically: a crash, a signal or ``kill -9`` mid-write never leaves a
half-written file, only the previous checkpoint or the new one."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

# Bumped whenever the checkpoint's layout changes in a way an older or newer loop cannot resume.
# 2: per-rank RNG states, epoch-start augmentation state, world_size.
CHECKPOINT_FORMAT = 2


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


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def save_checkpoint(state: dict, path: str | Path) -> None:
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location="cpu", *, model: str | None = None,
                    resume: bool = False) -> dict:
    """Load a checkpoint saved by :func:`save_checkpoint`; a run folder means its last.pt.

    ``model``: refuse a checkpoint of another model. ``resume``: also refuse a checkpoint whose
    layout this version cannot continue from (evaluation only needs the weights and settings)."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.exists():
        folder = path.parent
        if not folder.is_dir():
            raise CheckpointError(f"{folder} does not exist (expected a run folder holding last.pt)")
        raise CheckpointError(f"checkpoint {path} does not exist: {folder} holds no saved run to resume"
                              if resume else f"checkpoint {path} does not exist")
    try:
        # weights_only: a checkpoint is data (tensors, numbers, strings), never code to run.
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, wrong format, foreign pickle
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt: {first}") from None
    missing = {"model", "model_state", "settings"} - set(state if isinstance(state, dict) else ())
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a pyneuro checkpoint (missing {sorted(missing)})")
    if model is not None and state["model"] != model:
        raise CheckpointError(f"{path} holds a {state['model']!r} run, not {model!r}: "
                              f"drop --model to resume it, or give another run folder")
    found = state.get("format", 1)
    if found > CHECKPOINT_FORMAT or (resume and found != CHECKPOINT_FORMAT):
        written = state.get("pyneuro_version", "an unknown version")
        raise CheckpointError(f"checkpoint {path} has format {found} (written by pyneuro {written}); this "
                              f"pyneuro {'resumes' if resume else 'reads'} format {CHECKPOINT_FORMAT}: "
                              "use the version that wrote it, or start the run again")
    return state
