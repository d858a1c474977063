"""Data-parallel training across processes with torch.distributed, as launched by torchrun.

``torchrun --nproc_per_node N -m pyneuro train ...`` starts N copies of the command with RANK,
WORLD_SIZE, LOCAL_RANK and the rendezvous address in their environment. Each copy joins one process
group (NCCL when it trains on a GPU, gloo on the CPU) and wraps its model in
DistributedDataParallel, which averages the gradients. A plain launch (no WORLD_SIZE, or 1) is a
world of one and touches nothing here.

Small control messages (the "a signal arrived, stop" vote, RNG states for the checkpoint) go over a
gloo group on CPU tensors, so that they never wait for the GPU's queue.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .config import ConfigError

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    control: object = None  # process group for CPU-side messages (None: the default group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank (one tiny all-reduce)."""
        if not self.distributed:
            return flag
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return bool(t.item())

    def sum_(self, *tensors: torch.Tensor) -> None:
        """In-place sum of each tensor over the ranks."""
        if self.distributed:
            for t in tensors:
                dist.all_reduce(t, group=None if t.device.type == "cuda" else self.control)

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order (on every rank)."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.control)
        return out


def env_rank() -> int:
    """This process's rank as torchrun set it (0 for a plain launch); used to print errors once."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer (set by torchrun)") from None


def setup(device_name: str) -> tuple[Context, torch.device]:
    """Join the process group torchrun describes (if any) and pick this process's device."""
    from .loop import resolve_device

    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Context(), resolve_device(device_name)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is outside the world of WORLD_SIZE={world} processes")
    device = resolve_device(device_name)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} GPU(s): "
                              "start at most one process per GPU (--nproc_per_node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
        control = dist.new_group(backend="gloo")
    else:
        dist.init_process_group("gloo")
        control = None
    return Context(rank, world, local_rank, control), device


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
