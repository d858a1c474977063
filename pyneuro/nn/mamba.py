"""The Mamba block (Gu & Dao, 2023): a gated, input-dependent ("selective") state-space layer.

Data flow for hidden states h of shape (batch, L, d_model), with d_inner = expand * d_model:

    x, z  = in_proj(h)                      two halves of width d_inner: the SSM input and the gate
    x     = silu(causal depthwise conv1d(x)) short local mixing along time (kernel d_conv)
    dt, B, C = x_proj(x)                    widths dt_rank, d_state, d_state: all input-dependent
    delta = dt_proj.weight @ dt             the bias is applied inside the scan, before softplus
    y     = selective_scan(x, delta, A, B, C, D, z, delta_bias=dt_proj.bias, delta_softplus=True)
    out   = out_proj(y)

Parameter names and initialisation follow mamba_ssm's ``Mamba``, so its checkpoints load with
``load_state_dict``. Besides the full-sequence :meth:`Mamba.forward` there is a recurrent
:meth:`Mamba.step` for generation and streaming; both share one state layout:

    conv_state (batch, d_inner, d_conv)   the last d_conv conv inputs, oldest first, zeros at start
    ssm_state  (batch, d_inner, d_state)  the SSM state, always fp32
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.scan import selective_scan

State = tuple[torch.Tensor, torch.Tensor]


def _inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """x with softplus(x) == y, for y > 0: log(exp(y) - 1), written stably for small y."""
    return y + torch.log(-torch.expm1(-y))


class Mamba(nn.Module):
    """Mamba block mapping (batch, L, d_model) to (batch, L, d_model).

    Args:
        d_model: model width (last dim of the input and output).
        d_state: SSM state size N per channel.
        d_conv: kernel width of the causal depthwise convolution.
        expand: d_inner = int(expand * d_model) channels run through the SSM.
        dt_rank: width of the low-rank projection that produces the step size; "auto" means
            ceil(d_model / 16).
        dt_min, dt_max: the initial step sizes softplus(dt_proj.bias) are drawn log-uniformly from
            this range, so channels start out with memories of very different lengths.
        dt_init: "random" (dt_proj.weight uniform in ±dt_rank^-0.5 * dt_scale) or "constant".
        dt_scale: scales dt_proj.weight's initial range.
        dt_init_floor: lower clamp on the sampled initial step sizes.
        conv_bias: whether the convolution has a bias.
        bias: whether in_proj and out_proj have biases.
        backend: selective-scan backend for :meth:`forward` ("auto", "reference", "cpu", ...).

    A_log, D and dt_proj.bias carry ``_no_weight_decay = True``: decaying them would pull the
    decay rates, skip connection and step sizes away from their meaningful initial values.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init: str = "random", dt_scale: float = 1.0, dt_init_floor: float = 1e-4,
                 conv_bias: bool = True, bias: bool = False, backend: str = "auto",
                 device=None, dtype=None):
        super().__init__()
        for name, value in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Mamba: {name} must be a positive int, got {value!r}")
        if not expand > 0:
            raise ValueError(f"Mamba: expand must be positive, got {expand!r}")
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        if not isinstance(dt_rank, int) or isinstance(dt_rank, bool) or dt_rank < 1:
            raise ValueError(f"Mamba: dt_rank must be 'auto' or a positive int, got {dt_rank!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"Mamba: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"Mamba: dt_init must be 'random' or 'constant', got {dt_init!r}")

        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        if self.d_inner < 1:
            raise ValueError(f"Mamba: expand * d_model must be at least 1, got {expand} * {d_model}")
        self.dt_rank = dt_rank
        self.backend = backend
        self._dt_init = (dt_min, dt_max, dt_init, dt_scale, dt_init_floor)

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        # padding d_conv - 1 then trimming to L makes the convolution causal (mamba_ssm's layout);
        # forward() feeds it the left context explicitly so that it can also resume from a state.
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **factory)
        self.x_proj = nn.Linear(self.d_inner, dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(dt_rank, self.d_inner, bias=True, **factory)
        # The SSM's own parameters stay fp32 whatever `dtype` is: exp(delta * A) is sensitive.
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state, device=device, dtype=torch.float32))
        self.D = nn.Parameter(torch.empty(self.d_inner, device=device, dtype=torch.float32))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)
        for p in (self.A_log, self.D, self.dt_proj.bias):
            p._no_weight_decay = True
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Mamba's initialisation of dt_proj, A_log and D (the linear layers keep torch's)."""
        dt_min, dt_max, dt_init, dt_scale, dt_init_floor = self._dt_init
        std = self.dt_rank ** -0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        # Log-uniform step sizes, stored pre-softplus because the scan applies softplus(. + bias).
        u = torch.rand(self.d_inner, device=self.dt_proj.bias.device, dtype=torch.float32)
        dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.dt_proj.bias.copy_(_inverse_softplus(dt.clamp(min=dt_init_floor)))
        # A = -(1, 2, ..., N) for every channel (S4D-Real): a spread of decay rates.
        n = torch.arange(1, self.d_state + 1, device=self.A_log.device, dtype=torch.float32)
        self.A_log.copy_(torch.log(n).expand(self.d_inner, -1))
        self.D.fill_(1.0)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state}, d_conv={self.d_conv}, "
                f"expand={self.expand}, dt_rank={self.dt_rank}, backend={self.backend!r}")

    # ------------------------------------------------------------------ state

    def allocate_state(self, batch_size: int, device=None, dtype=None) -> State:
        """Zero (conv_state, ssm_state): the state before the first token.

        conv_state gets ``dtype`` (default: the layer's weight dtype); ssm_state is always fp32.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Mamba.allocate_state: batch_size must be a positive int, got {batch_size!r}")
        weight = self.in_proj.weight
        device = weight.device if device is None else device
        dtype = weight.dtype if dtype is None else dtype
        conv_state = torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=dtype)
        ssm_state = torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=torch.float32)
        return conv_state, ssm_state

    def _check_state(self, state, batch: int, where: str) -> State:
        if not (isinstance(state, (tuple, list)) and len(state) == 2):
            raise TypeError(f"{where}: state must be a (conv_state, ssm_state) pair, got {type(state).__name__}")
        conv_state, ssm_state = state
        for name, t, shape in (("conv_state", conv_state, (batch, self.d_inner, self.d_conv)),
                               ("ssm_state", ssm_state, (batch, self.d_inner, self.d_state))):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")
            if tuple(t.shape) != shape:
                raise ValueError(f"{where}: {name} must have shape {shape} "
                                 f"(batch, d_inner, {'d_conv' if name == 'conv_state' else 'd_state'}), "
                                 f"got {tuple(t.shape)}")
        return conv_state, ssm_state

    # ------------------------------------------------------------------ full sequence

    def forward(self, hidden_states: torch.Tensor, inference_params=None, *,
                state: State | None = None, return_state: bool = False):
        """Run the block over a whole sequence.

        Args:
            hidden_states: (batch, L, d_model).
            inference_params: accepted for call compatibility with mamba_ssm and must be None;
                stream with ``state=`` / ``return_state=`` or :meth:`step` instead.
            state: (conv_state, ssm_state) to continue from, e.g. returned by an earlier call;
                None starts from zeros.
            return_state: also return the final (conv_state, ssm_state), ready for :meth:`step`
                or another forward call.

        Returns:
            (batch, L, d_model), or (output, (conv_state, ssm_state)) when ``return_state``.
        """
        if inference_params is not None:
            raise NotImplementedError(
                "Mamba.forward: inference_params is not supported; pass state=/return_state=True "
                "or call step() for streaming")
        h = hidden_states
        if not isinstance(h, torch.Tensor):
            raise TypeError(f"Mamba.forward: hidden_states must be a torch.Tensor, got {type(h).__name__}")
        if h.dim() != 3:
            raise ValueError("Mamba.forward: hidden_states must be 3-D (batch, L, d_model), "
                             f"got shape {tuple(h.shape)}")
        if h.shape[-1] != self.d_model:
            raise ValueError(f"Mamba.forward: hidden_states' last dim must be d_model={self.d_model}, "
                             f"got shape {tuple(h.shape)}")
        batch, L, _ = h.shape
        conv_state = ssm_state = None
        if state is not None:
            conv_state, ssm_state = self._check_state(state, batch, "Mamba.forward")

        # Channels-first (batch, d_inner, L) for the conv and the scan; first half is x, second z.
        x, z = self.in_proj(h).transpose(1, 2).chunk(2, dim=1)
        if conv_state is None:
            conv_state = x.new_zeros(batch, self.d_inner, self.d_conv)
        # Left context = the previous d_conv - 1 inputs (zeros at the start), so the valid
        # convolution equals conv1d(x) with padding d_conv - 1 trimmed to the first L outputs.
        conv_in = torch.cat([conv_state[..., 1:].to(x.dtype), x], dim=-1)
        new_conv_state = conv_in[..., -self.d_conv:]
        x = F.silu(F.conv1d(conv_in, self.conv1d.weight, self.conv1d.bias, groups=self.d_inner))

        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # (batch, d_inner, L), bias not yet added
        A = -torch.exp(self.A_log.float())
        result = selective_scan(
            x, delta, A, B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(),
            D=self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
            return_last_state=return_state, initial_state=ssm_state, backend=self.backend)
        y, last_ssm_state = result if return_state else (result, None)
        out = self.out_proj(y.transpose(1, 2))
        if not return_state:
            return out
        if L == 0:  # nothing was consumed: the state is unchanged
            new_conv_state = conv_state
        return out, (new_conv_state, last_ssm_state)

    # ------------------------------------------------------------------ one token

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Advance by one token: the recurrent form of :meth:`forward`.

        Pure function: ``state`` is not modified; the new (conv_state, ssm_state) is returned.

        Args:
            x_t: (batch, d_model) or (batch, 1, d_model).
            state: (conv_state, ssm_state) from :meth:`allocate_state`, a previous step, or
                ``forward(..., return_state=True)``.

        Returns:
            (y_t, new_state), y_t shaped like x_t.
        """
        if not isinstance(x_t, torch.Tensor):
            raise TypeError(f"Mamba.step: x_t must be a torch.Tensor, got {type(x_t).__name__}")
        squeeze_time = x_t.dim() == 3
        if squeeze_time and x_t.shape[1] != 1:
            raise ValueError("Mamba.step: x_t must be (batch, d_model) or (batch, 1, d_model), "
                             f"got shape {tuple(x_t.shape)}; use forward() for several tokens")
        if x_t.dim() not in (2, 3):
            raise ValueError("Mamba.step: x_t must be (batch, d_model) or (batch, 1, d_model), "
                             f"got shape {tuple(x_t.shape)}")
        if x_t.shape[-1] != self.d_model:
            raise ValueError(f"Mamba.step: x_t's last dim must be d_model={self.d_model}, "
                             f"got shape {tuple(x_t.shape)}")
        h = x_t[:, 0] if squeeze_time else x_t
        conv_state, ssm_state = self._check_state(state, h.shape[0], "Mamba.step")

        x, z = self.in_proj(h).chunk(2, dim=-1)  # (batch, d_inner) each
        conv_state = torch.cat([conv_state[..., 1:], x.unsqueeze(-1).to(conv_state.dtype)], dim=-1)
        x = (conv_state.to(x.dtype) * self.conv1d.weight[:, 0, :]).sum(-1)
        if self.conv1d.bias is not None:
            x = x + self.conv1d.bias
        x = F.silu(x)

        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # The SSM update runs in fp32, as the scan does.
        delta = F.softplus(F.linear(dt.float(), self.dt_proj.weight.float(), self.dt_proj.bias.float()))
        A = -torch.exp(self.A_log.float())
        x32 = x.float()
        ssm_state = (torch.exp(delta.unsqueeze(-1) * A) * ssm_state.float()
                     + (delta * x32).unsqueeze(-1) * B.float().unsqueeze(1))
        y = (ssm_state * C.float().unsqueeze(1)).sum(-1) + self.D.float() * x32
        y = y * F.silu(z.float())
        out = self.out_proj(y.to(h.dtype))
        return (out.unsqueeze(1) if squeeze_time else out), (conv_state, ssm_state)


__all__ = ["Mamba"]
