"""Leaky-integrator (continuous-time) recurrent layers on :func:`pyneuro.ops.rnn.leaky_sequence`.

    u_t = (1 - 1/τ) ⊙ u_{t-1} + (1/τ) ⊙ (W_ih x_t + W_hh tanh(u_{t-1}) + b),   h_t = tanh(u_t)

* :class:`LeakyRNN`: one layer of such units, each with its own time constant τ ≥ 1, fixed (a
  buffer) or learned.
* :class:`MTRNN`: the multiple-timescale RNN of Yamashita & Tani (2008), "Emergence of functional
  hierarchy in a multiple timescale neural network model: a humanoid robot experiment": a group
  of fast context units (small τ) and a group of slow ones (large τ) in a single layer, where only
  the fast units see the input. Both groups run in one ``leaky_sequence`` call with a per-unit τ.

The state carried from one call to the next is the internal state ``u`` (what the op takes and
returns), not the activity ``h = tanh(u)``: ``u`` cannot be recovered from a saturated ``h``.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from .. import _backends
from ..ops.rnn import leaky_sequence
from .rnn import _require_bool, _require_int, _require_probability

__all__ = ["LeakyRNN", "MTRNN"]


def _softplus_inverse(y: torch.Tensor) -> torch.Tensor:
    """θ with softplus(θ) = y > 0, written to stay finite for large y (y + log(1 - e^-y))."""
    return y + torch.log(-torch.expm1(-y))


def _time_constants(owner: str, name: str, tau, size: int, learn: bool, device=None, dtype=None) -> torch.Tensor:
    """``tau`` (a number, or ``size`` numbers) -> a (size,) tensor, each τ ≥ 1 (> 1 if learned)."""
    if isinstance(tau, bool) or not isinstance(tau, (numbers.Real, torch.Tensor, list, tuple)):
        raise TypeError(f"{owner}: {name} must be a number or a sequence of {size} numbers, "
                        f"got {type(tau).__name__}")
    with torch.no_grad():
        values = torch.as_tensor(tau, dtype=torch.float64).detach().cpu()
    if values.dim() == 0:
        values = values.repeat(size)  # a copy: an expanded (stride 0) buffer could not be loaded into
    if values.shape != (size,):
        raise ValueError(f"{owner}: {name} must be a number or hold one value per unit ({size}), "
                         f"got shape {tuple(values.shape)}")
    if not torch.isfinite(values).all():
        raise ValueError(f"{owner}: {name} must be finite, got {values.tolist()}")
    # τ < 1 makes the update overshoot (the old state enters with a negative weight): not a leaky
    # integrator any more, and unstable. A learned τ = 1 + softplus(θ) reaches 1 only as θ -> -∞.
    low = values.min().item()
    if learn and low <= 1:
        raise ValueError(f"{owner}: {name} must be > 1 when learned (τ = 1 + softplus(θ) never reaches 1), "
                         f"got a minimum of {low}")
    if low < 1:
        raise ValueError(f"{owner}: {name} must be >= 1 (the time constant, in steps), got a minimum of {low}")
    return values.to(device=device, dtype=dtype or torch.get_default_dtype())


class LeakyRNN(nn.Module):
    """One layer of leaky-integrator units: ``forward(input, u_0=None) -> (output, u_n)``.

    Args:
        input_size, hidden_size: features of x and units of the layer.
        tau: the time constant(s) in steps, ≥ 1: one number for every unit or one per unit.
            τ = 1 is a plain tanh RNN on u; larger τ integrates more slowly and remembers longer.
        learn_tau: learn τ per unit, as τ = 1 + softplus(tau_raw), which keeps τ ≥ 1 under any
            update (tau must then be > 1). Otherwise τ is a buffer, saved but not trained.
        bias: add a learned bias b.
        batch_first: input and output are (batch, seq, feature) rather than (seq, batch, feature).
        backend: passed to :func:`pyneuro.ops.rnn.leaky_sequence` ("auto", "reference", "cpu", ...).
        weight_dropout: in training, DropConnect on ``weight_hh`` (Merity et al. 2018), as in
            :class:`pyneuro.nn.LSTM`: one mask per forward call, the kept entries scaled by 1/(1-p),
            so the fused kernels run unchanged on an ordinary matrix; 0 (the default) turns it off.

    Shapes: ``input`` (T, B, I), (B, T, I) with batch_first, or (T, I) unbatched; ``u_0`` and
    ``u_n`` (B, H), or (H,) unbatched; ``output`` holds h_t = tanh(u_t) of every step, (T, B, H)
    or (B, T, H). Parameters ``weight_ih`` (H, I), ``weight_hh`` (H, H) and ``bias`` (H,) are
    initialised like torch.nn.RNN's, U(-1/sqrt(H), 1/sqrt(H)). ``tau`` is the (H,) tensor of time
    constants in use (differentiable when learned).
    """

    def __init__(self, input_size, hidden_size, tau=1.0, learn_tau=False, bias=True, batch_first=False,
                 device=None, dtype=None, *, backend="auto", weight_dropout=0.0):
        super().__init__()
        owner = self._owner = type(self).__name__
        _require_int(owner, "input_size", input_size, 1)
        _require_int(owner, "hidden_size", hidden_size, 1)
        _require_bool(owner, "learn_tau", learn_tau)
        _require_bool(owner, "bias", bias)
        _require_bool(owner, "batch_first", batch_first)
        if not isinstance(backend, str) or backend not in ("auto", *_backends.BACKENDS):
            raise ValueError(f"{owner}: backend must be 'auto' or one of {_backends.BACKENDS}, got {backend!r}")
        _require_probability(owner, "weight_dropout", weight_dropout)
        factory = {"device": device, "dtype": dtype}
        taus = _time_constants(owner, "tau", tau, hidden_size, learn_tau, device, dtype)

        self.input_size = input_size
        self.hidden_size = hidden_size
        self.learn_tau = learn_tau
        self.batch_first = batch_first
        self.backend = backend
        self.weight_dropout = float(weight_dropout)
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size, **factory))
        self.register_parameter("bias", nn.Parameter(torch.empty(hidden_size, **factory)) if bias else None)
        if learn_tau:
            self.tau_raw = nn.Parameter(_softplus_inverse(taus - 1))
        else:
            self.register_buffer("tau_fixed", taus)
        self.reset_parameters()

    @property
    def tau(self) -> torch.Tensor:
        """The (hidden_size,) time constants, ≥ 1; differentiable with respect to ``tau_raw`` when learned."""
        return 1 + F.softplus(self.tau_raw) if self.learn_tau else self.tau_fixed

    def reset_parameters(self) -> None:
        """The weights and bias ~ U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)), as torch.nn.RNN; τ is kept."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in (self.weight_ih, self.weight_hh, self.bias):
            if p is not None:
                nn.init.uniform_(p, -bound, bound)

    def _input_weight(self) -> torch.Tensor:
        """w_ih as the recurrence uses it; subclasses restrict the connectivity here."""
        return self.weight_ih

    def _weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(w_ih, w_hh) for one forward call: w_hh under a fresh DropConnect mask in training."""
        w_hh = self.weight_hh
        if self.weight_dropout > 0 and self.training:
            w_hh = F.dropout(w_hh, p=self.weight_dropout, training=True)
        return self._input_weight(), w_hh

    def forward(self, input, u_0=None):
        owner = self._owner
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"{owner}: input must be a torch.Tensor, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(f"{owner}: input must be 3-D (seq_len, batch, input_size), batch-first 3-D, "
                             f"or 2-D unbatched (seq_len, input_size), got shape {tuple(input.shape)}")
        if input.shape[-1] != self.input_size:
            raise ValueError(f"{owner}: input's last dim must be input_size={self.input_size}, got {input.shape[-1]}")
        if input.dtype != self.weight_ih.dtype:
            raise TypeError(f"{owner}: input dtype {input.dtype} does not match the parameters' "
                            f"{self.weight_ih.dtype}; convert one of them (e.g. module.to(dtype))")
        batched = input.dim() == 3
        x = input.transpose(0, 1) if batched and self.batch_first else input
        x = x if batched else x.unsqueeze(1)  # the op is time-major and batched
        if u_0 is not None:
            if not isinstance(u_0, torch.Tensor):
                raise TypeError(f"{owner}: u_0 must be a torch.Tensor, got {type(u_0).__name__}")
            expected = (x.shape[1], self.hidden_size) if batched else (self.hidden_size,)
            if tuple(u_0.shape) != expected:
                raise ValueError(f"{owner}: u_0 must have shape {'(batch, hidden_size)' if batched else '(hidden_size,)'}"
                                 f" = {expected}, got {tuple(u_0.shape)}")
            u_0 = u_0 if batched else u_0.unsqueeze(0)
        w_ih, w_hh = self._weights()
        h, u_n = leaky_sequence(x, u_0, w_ih, w_hh, self.bias, self.tau, backend=self.backend)
        if not batched:
            return h.squeeze(1), u_n.squeeze(0)
        return (h.transpose(0, 1) if self.batch_first else h), u_n

    def extra_repr(self) -> str:
        taus = self.tau.detach()
        tau = f"{taus[0].item():g}" if bool((taus == taus[0]).all()) else "per-unit"
        return f"{self.input_size}, {self.hidden_size}, tau={tau}" + self._changed_flags()

    def _changed_flags(self) -> str:
        """The repr's tail: the flags that differ from their defaults."""
        text = ""
        for name, default in (("learn_tau", False), ("batch_first", False), ("backend", "auto"),
                              ("weight_dropout", 0.0)):
            if getattr(self, name) != default:
                text += f", {name}={getattr(self, name)!r}"
        return text if self.bias is not None else text + ", bias=False"


class MTRNN(LeakyRNN):
    """Multiple-timescale RNN (Yamashita & Tani 2008): fast and slow context units in one layer.

    Units ``[:fast_size]`` integrate with ``fast_tau``, units ``[fast_size:]`` with ``slow_tau``.
    As in the original, the input reaches the fast units only, and the fast and slow units are
    connected both ways (and each group to itself): the slow units see the input only through the
    fast ones, so they come to hold what changes slowly over a sequence. The restriction is a
    fixed 0/1 mask on ``weight_ih`` (the buffer ``weight_ih_mask``): the recurrence uses
    ``weight_ih * weight_ih_mask``, so masked entries get zero gradients, and they are zero in the
    parameter itself (zero entries with zero gradients stay zero under SGD, Adam and weight decay).

    ``forward(input, u_0=None) -> (output, u_n)`` as :class:`LeakyRNN`, with the fast units first
    in the last dim; :meth:`split` separates the two groups. ``learn_tau`` learns each unit's τ
    (initialised at its group's value).
    """

    def __init__(self, input_size, fast_size, slow_size, fast_tau=2.0, slow_tau=16.0, learn_tau=False, bias=True,
                 batch_first=False, device=None, dtype=None, *, backend="auto", weight_dropout=0.0):
        owner = type(self).__name__
        _require_int(owner, "fast_size", fast_size, 1)
        _require_int(owner, "slow_size", slow_size, 1)
        for name, value in (("fast_tau", fast_tau), ("slow_tau", slow_tau)):
            if not _backends.real_number(value):
                raise TypeError(f"{owner}: {name} must be a number, got {type(value).__name__}")
            _time_constants(owner, name, value, 1, learn_tau is True)  # range, named for the caller
        if slow_tau < fast_tau:
            raise ValueError(f"{owner}: slow_tau must be >= fast_tau ({fast_tau}), got {slow_tau}")
        tau = [float(fast_tau)] * fast_size + [float(slow_tau)] * slow_size
        super().__init__(input_size, fast_size + slow_size, tau, learn_tau, bias, batch_first, device, dtype,
                         backend=backend, weight_dropout=weight_dropout)
        self.fast_size = fast_size
        self.slow_size = slow_size
        self.fast_tau = float(fast_tau)
        self.slow_tau = float(slow_tau)
        mask = torch.zeros(fast_size + slow_size, input_size, device=device, dtype=self.weight_ih.dtype)
        mask[:fast_size] = 1
        self.register_buffer("weight_ih_mask", mask)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, "weight_ih_mask"):  # LeakyRNN.__init__ calls this before the mask exists
            with torch.no_grad():
                self.weight_ih.mul_(self.weight_ih_mask)

    def _input_weight(self):
        return self.weight_ih * self.weight_ih_mask

    def split(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fast, slow) parts of a tensor over the units in its last dim (an output, u_0 or u_n)."""
        return t[..., :self.fast_size], t[..., self.fast_size:]

    def extra_repr(self) -> str:
        text = (f"{self.input_size}, fast_size={self.fast_size}, slow_size={self.slow_size}, "
                f"fast_tau={self.fast_tau:g}, slow_tau={self.slow_tau:g}")
        return text + self._changed_flags()
