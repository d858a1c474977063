"""BatchNormReLU2d: ``nn.BatchNorm2d`` followed by ReLU (and a 2x2 max-pool when ``pool=2``) in
one op (:func:`pyneuro.ops.batch_norm_relu`). A subclass of ``nn.BatchNorm2d``: the same arguments,
parameters, buffers and state_dict, the same running-statistics rules (``momentum=None`` for a
cumulative average, ``track_running_stats=False`` for batch statistics in eval too)."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from ..ops.norm import batch_norm_relu


class BatchNormReLU2d(nn.BatchNorm2d):
    """``MaxPool2d(pool)(ReLU()(BatchNorm2d(num_features)(x)))``, fused; ``pool`` 1 or 2."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, pool: int = 1, backend: str = "auto", device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        if isinstance(pool, bool) or not isinstance(pool, int) or pool not in (1, 2):
            raise ValueError(f"BatchNormReLU2d: pool must be 1 or 2, got {pool!r}")
        self.pool = pool
        self.backend = backend

    def extra_repr(self) -> str:  # the pool next to the width: the first thing a reader wants
        width, rest = super().extra_repr().split(", ", 1)
        return f"{width}, pool={self.pool}, {rest}"

    def forward(self, x):
        self._check_input_dim(x)
        # As nn.BatchNorm2d.forward: count the batch, pick the running-average factor, and use the
        # batch statistics whenever there are no running ones.
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        keep_running = not self.training or self.track_running_stats
        return batch_norm_relu(x, self.running_mean if keep_running else None,
                               self.running_var if keep_running else None, self.weight, self.bias, use_batch,
                               factor, self.eps, pool=self.pool, backend=self.backend)


class SyncBatchNormReLU2d(nn.SyncBatchNorm):
    """BatchNormReLU2d with the statistics of the global batch over a process group (DDP on GPUs):
    torch's ``nn.SyncBatchNorm``, then ReLU and the pool. Same state_dict as BatchNormReLU2d, so a
    checkpoint moves between one process and many."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None, pool: int = 1, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, process_group, device=device,
                         dtype=dtype)
        self.pool = pool

    def extra_repr(self) -> str:  # the pool next to the width: the first thing a reader wants
        width, rest = super().extra_repr().split(", ", 1)
        return f"{width}, pool={self.pool}, {rest}"

    def forward(self, x):
        y = F.relu(super().forward(x))
        return F.max_pool2d(y, self.pool) if self.pool > 1 else y


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """``nn.SyncBatchNorm.convert_sync_batchnorm`` that keeps a BatchNormReLU2d's ReLU and pool
    (torch's would turn it into a bare SyncBatchNorm, since it is a BatchNorm2d): each becomes a
    SyncBatchNormReLU2d with its parameters and statistics; other batch norms go to torch's."""
    if isinstance(module, BatchNormReLU2d):
        tensors = [*module.parameters(), *module.buffers()]
        sync = SyncBatchNormReLU2d(module.num_features, module.eps, module.momentum, module.affine,
                                   module.track_running_stats, process_group, pool=module.pool,
                                   device=tensors[0].device if tensors else None)
        sync.load_state_dict(module.state_dict())
        sync.train(module.training)
        return sync
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, process_group))
    return module
