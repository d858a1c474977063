"""S4D (Gu, Gupta, Goel & Ré 2022): a diagonal state space layer, one independent SSM per channel.

For input u of shape (batch, L, d_model) each channel c runs the discretised system of
pyneuro/ops/s4d/naive.py with N = d_state state dimensions in N/2 complex-conjugate pairs:

    y = K * u + D u,     K[c, l] = 2 Re(sum_n C_cn B̄_cn exp(dt_c A_cn l))

Training and full-sequence inference compute K once per call (the ``s4d_kernel`` op) and apply it
as a causal convolution through the FFT (length 2L, so the circular wrap-around lands in the half
that is cut off): O(L log L) per channel instead of the O(L N) recurrence. :meth:`S4D.step` runs the
same system one step at a time (state (batch, d_model, N/2) complex) for streaming.

Parameters and initialisation (S4D-Lin):
    log_dt      (H,)        log step size, uniform in [log dt_min, log dt_max]: channels start with
                            memories from ~1/dt_max to ~1/dt_min steps
    log_A_real  (H, N/2)    Re A = -exp(log_A_real) = -1/2: negative by construction, so every
                            mode decays whatever the optimiser does
    A_imag      (H, N/2)    Im A = π n, n = 0 .. N/2-1: frequencies spread evenly (S4D-Lin)
    B           (H, N/2, 2) 1 + 0i; a fixed buffer unless learn_B
    C           (H, N/2, 2) complex standard normal (real and imaginary parts in the last dim)
    D           (H,)        skip connection, standard normal

log_dt, log_A_real, A_imag (and B when learned) carry ``_optim = {"lr": ssm_lr, "weight_decay": 0}``:
the trainer's optimiser (pyneuro.train.loop.param_groups) puts them into a group of their own. The
SSM's dynamics are sensitive to these few numbers; a full learning rate and weight decay (which
would pull A towards 0, i.e. towards no decay) destabilise them.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..ops.s4d import COMPLEX_OF, discretize, s4d_kernel

__all__ = ["S4D"]


class S4D(nn.Module):
    """Diagonal state space layer mapping (batch, L, d_model) to (batch, L, d_model).

    Args:
        d_model: channels H, each with its own SSM.
        d_state: state size N per channel; even (N/2 complex modes are stored).
        dt_min, dt_max: range of the initial step sizes (log-uniform).
        ssm_lr: learning rate of the SSM parameters (the ``_optim`` hint); None leaves them in the
            ordinary groups.
        learn_B: train B too (with the SSM parameters' learning rate); by default it stays 1.
        backend: ``s4d_kernel`` backend ("auto", "reference").
    """

    def __init__(self, d_model: int, d_state: int = 64, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 ssm_lr: float | None = 1e-3, learn_B: bool = False, backend: str = "auto"):
        super().__init__()
        for name, value in (("d_model", d_model), ("d_state", d_state)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"S4D: {name} must be a positive int, got {value!r}")
        if d_state % 2:
            raise ValueError(f"S4D: d_state must be even (N/2 complex-conjugate pairs), got {d_state}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"S4D: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        if ssm_lr is not None and not ssm_lr > 0:
            raise ValueError(f"S4D: ssm_lr must be positive or None, got {ssm_lr!r}")
        self.d_model, self.d_state, self.backend = d_model, d_state, backend
        self.dt_min, self.dt_max = dt_min, dt_max
        modes = d_state // 2
        self.log_dt = nn.Parameter(torch.empty(d_model))
        self.log_A_real = nn.Parameter(torch.empty(d_model, modes))
        self.A_imag = nn.Parameter(torch.empty(d_model, modes))
        self.C = nn.Parameter(torch.empty(d_model, modes, 2))
        self.D = nn.Parameter(torch.empty(d_model))
        B = torch.empty(d_model, modes, 2)
        if learn_B:
            self.B = nn.Parameter(B)
        else:
            self.register_buffer("B", B)
        ssm = [self.log_dt, self.log_A_real, self.A_imag] + ([self.B] if learn_B else [])
        if ssm_lr is not None:
            for p in ssm:
                p._optim = {"lr": ssm_lr, "weight_decay": 0.0}
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """S4D-Lin: A_n = -1/2 + iπn, B = 1, C ~ CN(0, 1), D ~ N(0, 1), dt log-uniform."""
        u = torch.rand_like(self.log_dt)
        self.log_dt.copy_(math.log(self.dt_min) + u * (math.log(self.dt_max) - math.log(self.dt_min)))
        self.log_A_real.fill_(math.log(0.5))
        self.A_imag.copy_(math.pi * torch.arange(self.A_imag.shape[1], dtype=self.A_imag.dtype))
        self.B.zero_()
        self.B[..., 0] = 1.0
        self.C.normal_(0.0, math.sqrt(0.5))  # each part N(0, 1/2): a unit-variance complex number
        self.D.normal_()

    # -- the continuous parameters as complex tensors ------------------------------------------
    def ssm(self):
        """(dt (H,), A, B, C (H, N/2) complex), in fp32 (fp64 when the layer is fp64)."""
        dtype = torch.float64 if self.log_dt.dtype == torch.float64 else torch.float32
        cplx = COMPLEX_OF[dtype]
        A = torch.complex(-torch.exp(self.log_A_real.to(dtype)), self.A_imag.to(dtype))
        B = torch.view_as_complex(self.B.to(dtype).contiguous()).to(cplx)
        C = torch.view_as_complex(self.C.to(dtype).contiguous()).to(cplx)
        return torch.exp(self.log_dt.to(dtype)), A, B, C

    def kernel(self, L: int) -> torch.Tensor:
        """The convolution kernel K (d_model, L), fp32 (fp64 for an fp64 layer)."""
        return s4d_kernel(*self.ssm(), L, backend=self.backend)

    # -- full sequences ------------------------------------------------------------------------
    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u (batch, L, d_model) -> y (batch, L, d_model), in u's dtype (computed in fp32 or fp64)."""
        self._check_input(u, "u", 3)
        L = u.shape[1]
        k = self.kernel(L)
        x = u.to(k.dtype).transpose(1, 2)                      # (B, H, L)
        n = 2 * L  # zero padding to 2L: the circular convolution is the linear one on [0, L)
        y = torch.fft.irfft(torch.fft.rfft(x, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :L]
        y = y + self.D.to(k.dtype).unsqueeze(-1) * x
        return y.transpose(1, 2).to(u.dtype)

    # -- streaming -----------------------------------------------------------------------------
    def default_state(self, batch: int, device=None) -> torch.Tensor:
        """The zero state (batch, d_model, N/2), complex64 (complex128 for an fp64 layer)."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"S4D.default_state: batch must be a positive int, got {batch!r}")
        dtype = COMPLEX_OF[torch.float64 if self.log_dt.dtype == torch.float64 else torch.float32]
        return torch.zeros(batch, self.d_model, self.d_state // 2, dtype=dtype,
                           device=device if device is not None else self.log_dt.device)

    def step(self, u_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step: u_t (batch, d_model), state (batch, d_model, N/2) -> (y_t, new state).

        x_t = Ā x_{t-1} + B̄ u_t,  y_t = 2 Re(sum_n C x_t) + D u_t; from default_state() this
        reproduces forward() step by step."""
        self._check_input(u_t, "u_t", 2)
        dt, A, B, C = self.ssm()
        want = (u_t.shape[0], self.d_model, self.d_state // 2)
        if not isinstance(state, torch.Tensor) or tuple(state.shape) != want or state.dtype != C.dtype:
            got = (f"{tuple(state.shape)} {state.dtype}" if isinstance(state, torch.Tensor)
                   else type(state).__name__)
            raise ValueError(f"S4D.step: state must be {want} {C.dtype} (see default_state), got {got}")
        dA, dB = discretize(dt, A, B)
        x = u_t.to(dt.dtype)
        state = dA * state + dB * x.unsqueeze(-1)
        y = 2 * torch.einsum("hn,bhn->bh", C, state).real + self.D.to(dt.dtype) * x
        return y.to(u_t.dtype), state

    def _check_input(self, u, name: str, dims: int) -> None:
        if not isinstance(u, torch.Tensor):
            raise TypeError(f"S4D: {name} must be a torch.Tensor, got {type(u).__name__}")
        if not u.is_floating_point():
            raise TypeError(f"S4D: {name} must be a floating tensor, got {u.dtype}")
        shape = "(batch, L, d_model)" if dims == 3 else "(batch, d_model)"
        if u.dim() != dims or u.shape[-1] != self.d_model or u.shape[0] < 1 or (dims == 3 and u.shape[1] < 1):
            raise ValueError(f"S4D: {name} must be {shape} with d_model={self.d_model}, got shape {tuple(u.shape)}")

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state}, dt_min={self.dt_min:g}, dt_max={self.dt_max:g}, "
                f"learn_B={isinstance(self.B, nn.Parameter)}")
