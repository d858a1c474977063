"""Multi-head attention and the Transformer encoder layer, on :func:`pyneuro.ops.attn.attention`.

Parameters carry torch.nn's names (``in_proj_weight``, ``out_proj``, ``linear1``, ``norm1`` ...), so
state_dicts of torch.nn.MultiheadAttention / TransformerEncoderLayer / TransformerEncoder load
unchanged. Differences from torch.nn:

* ``batch_first`` defaults to True (models here are batch-first).
* ``is_causal=True`` alone applies the causal mask (torch only takes it as a hint about attn_mask).
* ``attn_mask`` and ``key_padding_mask`` are not supported: the attention kernels take no mask.
* MultiheadAttention's ``need_weights`` defaults to False: the kernels never form the attention
  matrix, so asking for it costs an extra pass; the weights returned are those before dropout.
* Attention dropout runs inside pyneuro's kernels (a Philox mask regenerated in the backward, never
  stored; docs/attention_contract.md), so training with dropout stays on the fused backends. Its
  masks differ from torch's for the same seed (another generator), not in distribution.
"""
from __future__ import annotations

import copy
import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _torch_module

from .. import _backends
from ..ops.attn import attention, attention_qkvpacked
from ..ops.gelu import OP as BIAS_GELU, bias_gelu
from ..ops.layernorm import OP as ADD_LAYER_NORM, add_layer_norm


def _require_positive_int(owner: str, name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{owner}: {name} must be positive, got {value}")


def _require_probability(owner: str, name: str, value) -> None:
    if not _backends.real_number(value) or not 0 <= value <= 1:
        raise ValueError(f"{owner}: {name} must be a probability in [0, 1], got {value!r}")


def _require_backend(owner: str, backend) -> None:
    if not isinstance(backend, str) or backend not in ("auto", *_backends.BACKENDS):
        raise ValueError(f"{owner}: backend must be 'auto' or one of {_backends.BACKENDS}, got {backend!r}")


def _reject_masks(owner: str, **masks) -> None:
    given = [name for name, mask in masks.items() if mask is not None]
    if given:
        raise NotImplementedError(
            f"{owner}: {' and '.join(given)} not supported (pyneuro's attention kernels take no mask); "
            "use is_causal=True for causal masking, or torch.nn's layers for arbitrary masks")


class MultiheadAttention(nn.Module):
    """torch.nn.MultiheadAttention's parameters and call, computed by pyneuro's attention op.

    ``forward(query, key, value, key_padding_mask=None, need_weights=False, attn_mask=None,
    average_attn_weights=True, is_causal=False) -> (output, weights or None)``, with query
    (B, Lq, E), key/value (B, Lk, E) when batch_first, (L, B, E) otherwise, or unbatched (L, E).
    See the module docstring for the differences from torch.
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, batch_first=True,
                 device=None, dtype=None, *, backend="auto"):
        super().__init__()
        owner = type(self).__name__
        _require_positive_int(owner, "embed_dim", embed_dim)
        _require_positive_int(owner, "num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(f"{owner}: embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        _require_probability(owner, "dropout", dropout)
        if dropout == 1:
            raise ValueError(f"{owner}: dropout must be below 1 (attention dropout of 1 drops every weight), got 1")
        if not isinstance(bias, bool) or not isinstance(batch_first, bool):
            raise TypeError(f"{owner}: bias and batch_first must be bools, got {bias!r} and {batch_first!r}")
        _require_backend(owner, backend)
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = float(dropout)
        self.batch_first = batch_first
        self.backend = backend

        factory = {"device": device, "dtype": dtype}
        # q, k and v projections stacked in one (3E, E) matrix, as torch stores them.
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim, **factory))
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # torch.nn.MultiheadAttention's init; out_proj.weight keeps nn.Linear's default.
        nn.init.xavier_uniform_(self.in_proj_weight)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)

    def _check_inputs(self, query, key, value) -> None:
        owner = type(self).__name__
        for name, t in (("query", query), ("key", key), ("value", value)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{owner}: {name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != query.dim() or t.dim() not in (2, 3):
                raise ValueError(
                    f"{owner}: query, key and value must all be 3-D (batched) or all 2-D (unbatched), "
                    f"got shapes {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
            if t.shape[-1] != self.embed_dim:
                raise ValueError(f"{owner}: {name}'s last dim must be embed_dim={self.embed_dim}, got {t.shape[-1]}")
            if t.dtype != self.in_proj_weight.dtype:
                raise TypeError(
                    f"{owner}: {name} dtype {t.dtype} does not match the parameters' {self.in_proj_weight.dtype}")
        if key.shape != value.shape:
            raise ValueError(f"{owner}: key and value must have the same shape, got {tuple(key.shape)} and {tuple(value.shape)}")
        batch_dim = 0 if self.batch_first else 1
        if query.dim() == 3 and query.shape[batch_dim] != key.shape[batch_dim]:
            raise ValueError(
                f"{owner}: query and key must have the same batch size, got {query.shape[batch_dim]} and {key.shape[batch_dim]}")

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, Dh)

    def _project(self, query, key, value):
        weights = self.in_proj_weight.chunk(3)
        biases = (None,) * 3 if self.in_proj_bias is None else self.in_proj_bias.chunk(3)
        return tuple(F.linear(x, w, b) for x, w, b in zip((query, key, value), weights, biases))

    def forward(self, query, key, value, key_padding_mask=None, need_weights=False, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        _reject_masks(type(self).__name__, key_padding_mask=key_padding_mask, attn_mask=attn_mask)
        self._check_inputs(query, key, value)
        batched = query.dim() == 3
        # Work batch-first (B, L, E) whatever the caller's layout.
        if not batched:
            query, key, value = (t.unsqueeze(0) for t in (query, key, value))
        elif not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))

        dropout_p = self.dropout if self.training else 0.0
        batch, length = query.shape[:2]
        if query is key and key is value:
            out, qkv = self._packed_self_attention(query, is_causal)
            if need_weights:
                q, k = (t.transpose(1, 2) for t in qkv.unbind(2)[:2])
        else:
            q, k, v = (self._split_heads(t) for t in self._project(query, key, value))
            out = attention(q, k, v, causal=is_causal, dropout_p=dropout_p, backend=self.backend).transpose(1, 2)
        out = self.out_proj(out.reshape(batch, length, self.embed_dim))

        weights = None
        if need_weights:
            weights = self._attention_weights(q, k, is_causal)
            weights = weights.mean(dim=1) if average_attn_weights else weights
            weights = weights if batched else weights.squeeze(0)
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def _packed_self_attention(self, x, is_causal: bool):
        """Self-attention of batch-first x (B, L, E) before out_proj: (heads (B, L, H, Dh), qkv). One
        projection, viewed (B, L, 3, H, Dh) and attended in that layout, so no head split is copied
        and the gradient of the projection comes back whole."""
        batch, length = x.shape[:2]
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(batch, length, 3, self.num_heads, self.head_dim)
        dropout_p = self.dropout if self.training else 0.0
        return attention_qkvpacked(qkv, causal=is_causal, dropout_p=dropout_p, backend=self.backend), qkv

    def _self_attention_without_out_bias(self, x, is_causal: bool) -> torch.Tensor:
        """``forward(x, x, x, is_causal=is_causal)[0]`` less out_proj's bias, for batch-first x
        (B, L, E) and a plain nn.Linear out_proj: for a caller that adds the bias in its next pass
        (TransformerEncoderLayer, inside add_layer_norm)."""
        self._check_inputs(x, x, x)
        out, _ = self._packed_self_attention(x, is_causal)
        return F.linear(out.reshape(x.shape), self.out_proj.weight)

    def _self_attention_rows_without_out_bias(self, x, rows: slice) -> torch.Tensor:
        """The rows ``rows`` (a slice of the token dim) of ``_self_attention_without_out_bias(x,
        False)``: queries from those tokens only, keys and values from all. For batch-first x
        (B, L, E); returns (B, len(rows), E). The q projection runs on those tokens alone and the k/v
        projection as one GEMM, attended in its (B, L, 2, H, Dh) layout (strided head views, no copy)."""
        self._check_inputs(x, x, x)
        batch, length, embed = x.shape
        weight, bias = self.in_proj_weight, self.in_proj_bias
        q = F.linear(x[:, rows], weight[:embed], None if bias is None else bias[:embed])
        kv = F.linear(x, weight[embed:], None if bias is None else bias[embed:])
        kv = kv.view(batch, length, 2, self.num_heads, self.head_dim)
        q = q.view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
        dropout_p = self.dropout if self.training else 0.0
        out = attention(q, k, v, dropout_p=dropout_p, backend=self.backend).transpose(1, 2)
        return F.linear(out.reshape(batch, -1, embed), self.out_proj.weight)

    @staticmethod
    def _attention_weights(q, k, causal: bool) -> torch.Tensor:
        """softmax(q kᵀ / sqrt(Dh)) per head, (B, H, Lq, Lk): only formed when asked for."""
        compute = torch.float64 if q.dtype == torch.float64 else torch.float32
        scores = (q.to(compute) @ k.to(compute).transpose(-2, -1)) / math.sqrt(q.shape[-1])
        if causal:
            keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
            scores = scores.masked_fill(~keep, float("-inf"))
        return torch.softmax(scores, dim=-1).to(q.dtype)

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}, "
                f"bias={self.in_proj_bias is not None}, batch_first={self.batch_first}, backend={self.backend!r}")


class MultiheadSelfAttention(MultiheadAttention):
    """Self-attention with a plain call: ``forward(x, causal=False) -> output`` (same parameters as
    :class:`MultiheadAttention`, so torch.nn.MultiheadAttention weights load too)."""

    def forward(self, x, causal: bool = False):
        return super().forward(x, x, x, is_causal=causal)[0]


_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


class TransformerEncoderLayer(nn.Module):
    """torch.nn.TransformerEncoderLayer's structure and parameter names, attention by pyneuro.

    Post-norm (default): x = norm1(x + SA(x)); x = norm2(x + FF(x)).
    Pre-norm (norm_first=True): x = x + SA(norm1(x)); x = x + FF(norm2(x)).
    FF(x) = dropout2(linear2(dropout(activation(linear1(x))))), SA ends in dropout1.
    Each residual add and the norm after it run as one op (:func:`pyneuro.ops.add_layer_norm`), with
    the bias of the linear layer before it (out_proj's, linear2's: their GEMMs run without) where
    no active dropout stands between; linear1's bias and an exact GELU after it run as one op too
    (:func:`pyneuro.ops.bias_gelu`). A pre-norm layer's last add is left to the next layer's norm1
    when layers are run with :func:`run_layers` (``defer_add=True``), as TransformerEncoder does.
    ``forward(src, src_mask=None, src_key_padding_mask=None, is_causal=False)``; masks other than
    causal raise NotImplementedError, and batch_first defaults to True.
    ``attention_dropout`` (keyword-only, default: ``dropout`` as in torch) sets the dropout on the
    attention weights alone (applied inside the attention kernels).
    """

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu",
                 layer_norm_eps=1e-5, batch_first=True, norm_first=False, bias=True,
                 device=None, dtype=None, *, backend="auto", attention_dropout=None):
        super().__init__()
        owner = type(self).__name__
        _require_positive_int(owner, "d_model", d_model)
        _require_positive_int(owner, "nhead", nhead)
        if d_model % nhead:
            raise ValueError(f"{owner}: d_model ({d_model}) must be divisible by nhead ({nhead})")
        _require_positive_int(owner, "dim_feedforward", dim_feedforward)
        _require_probability(owner, "dropout", dropout)
        attention_dropout = dropout if attention_dropout is None else attention_dropout
        _require_probability(owner, "attention_dropout", attention_dropout)
        if isinstance(activation, str):
            if activation not in _ACTIVATIONS:
                raise ValueError(f"{owner}: activation must be 'relu', 'gelu' or a callable, got {activation!r}")
            activation = _ACTIVATIONS[activation]
        elif not callable(activation):
            raise TypeError(f"{owner}: activation must be 'relu', 'gelu' or a callable, got {type(activation).__name__}")
        factory = {"device": device, "dtype": dtype}
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=attention_dropout, bias=bias,
                                            batch_first=batch_first, **factory, backend=backend)
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias, **factory)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias, **factory)
        self.norm_first = norm_first
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = activation

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False, *, pending=None,
                defer_add=False, rows=None):
        """The layer's output; with ``defer_add=True`` the pair (stream, pending) instead (see
        :meth:`forward_stream`), and ``pending`` a previous layer's such output to add first;
        ``rows`` the tokens whose output alone is wanted (see :meth:`forward_stream`)."""
        _reject_masks(type(self).__name__, src_mask=src_mask, src_key_padding_mask=src_key_padding_mask)
        x, pending = self.forward_stream(src, pending, is_causal, rows)
        return (x, pending) if defer_add else add_pending(x, pending)

    def forward_stream(self, x, pending=None, is_causal=False, rows=None):
        """The layer on the residual stream ``x + pending``, returned the same way: (stream, pending).

        ``pending`` (a :class:`Pending`, or a plain tensor) is a pre-norm layer's last sub-layer
        output, not yet added to the stream, so that the next layer adds it inside its first layer
        norm (pyneuro.ops.add_layer_norm: one pass for the add and the norm), linear2's bias with it.
        ``forward(src)`` is ``add_pending(*forward_stream(src))``; a post-norm layer returns pending
        None. Called through the module (``layer(x, pending=..., defer_add=True)``, as
        :func:`run_layers` does), hooks see the call.

        ``rows`` (an int or a slice of the token dim, batch-first input only) asks for the output at
        those positions alone: (stream, pending) then hold just those tokens (the dim kept), the
        same values as the whole output's rows. Their queries attend to every token's keys and
        values, but the other tokens' queries, attention rows, out-projection, second norm and
        feed-forward are never computed: the last layer of a model that reads only its class
        token does about a third of the work (see :func:`run_layers`)."""
        if isinstance(pending, torch.Tensor):
            pending = Pending(pending)
        token_dim = _token_dim(x, self.self_attn.batch_first)
        rows = _rows_slice(rows, x.shape[token_dim])
        if rows is not None and not (token_dim == 1 and not is_causal and self._folds_rows()):
            # Anything the row path does not cover (causal masks, other layouts, a replaced or
            # hooked attention module): the whole layer, then the rows.
            return _take_rows(*self.forward_stream(x, pending, is_causal), rows, token_dim)
        if self.norm_first:
            h, x = self._add_pending_norm(self.norm1, x, pending)  # h = norm1(x + pending), x = x + pending
            if rows is None:
                h, x = self._add_norm(self.norm2, *self._self_attention(h, is_causal), x)
            else:
                h, x = self._add_norm(self.norm2, *self._self_attention_rows(h, rows), x[:, rows])
            return x, Pending(*self._feed_forward(h))
        x = add_pending(x, pending)
        if rows is None:
            x, _ = self._add_norm(self.norm1, *self._self_attention(x, is_causal), x)
        else:
            x, _ = self._add_norm(self.norm1, *self._self_attention_rows(x, rows), x[:, rows])
        x, _ = self._add_norm(self.norm2, *self._feed_forward(x), x)
        return x, None

    def _folds_rows(self) -> bool:
        """Whether the attention can run on a subset of query rows: pyneuro's MultiheadAttention as
        it is (no hooks), with a plain nn.Linear out_proj."""
        attn = self.self_attn
        return (type(attn) is MultiheadAttention and not _has_hooks(attn) and type(attn.out_proj) is nn.Linear
                and not _has_hooks(attn.out_proj))

    def _self_attention_rows(self, x, rows: slice):
        """SA(x) at the tokens ``rows`` only, as (value, bias) like :meth:`_self_attention`."""
        attn = self.self_attn
        value = attn._self_attention_rows_without_out_bias(x, rows)
        if self._folds_bias(attn.out_proj, self.dropout1, x):  # implies a bias
            return value, attn.out_proj.bias
        if attn.out_proj.bias is not None:
            value = value + attn.out_proj.bias
        return self.dropout1(value), None

    @staticmethod
    def _add_norm(norm: nn.Module, x, x_bias, residual):
        """(norm(total), total) for total = (x + x_bias) + residual, x_bias and residual None meaning
        none: one op for a LayerNorm over the last dim; a call of the module itself when it is
        something else or has hooks (so that what hooks or replaces a norm still sees it called)."""
        if type(norm) is nn.LayerNorm and len(norm.normalized_shape) == 1 and not _has_hooks(norm):
            return add_layer_norm(x, residual, norm.weight, norm.bias, norm.eps, x_bias=x_bias)
        total = x if x_bias is None else x + x_bias
        total = total if residual is None else total + residual
        return norm(total), total

    @classmethod
    def _add_pending_norm(cls, norm: nn.Module, x, pending):
        """(norm(x + pending), x + pending) for the stream x and a Pending or None."""
        if pending is None:
            return cls._add_norm(norm, x, None, None)
        return cls._add_norm(norm, pending.value, pending.bias, x)

    def _self_attention(self, x, is_causal):
        """SA(x) as (value, bias): out_proj's bias apart (for the next add_layer_norm to add) where
        :meth:`_folds_bias` allows, else None with the bias in value."""
        attn = self.self_attn
        if (type(attn) is MultiheadAttention and not _has_hooks(attn) and attn.batch_first and x.dim() == 3
                and self._folds_bias(attn.out_proj, self.dropout1, x)):
            return attn._self_attention_without_out_bias(x, is_causal), attn.out_proj.bias
        return self.dropout1(attn(x, x, x, is_causal=is_causal)[0]), None

    def _feed_forward(self, x):
        """FF(x) as (value, bias), linear2's bias apart as in :meth:`_self_attention`."""
        h = self.dropout(self._linear_activation(x))
        if self._folds_bias(self.linear2, self.dropout2, x):
            return F.linear(h, self.linear2.weight), self.linear2.bias
        return self.dropout2(self.linear2(h)), None

    @staticmethod
    def _folds_bias(linear: nn.Module, dropout: nn.Module, x) -> bool:
        """Whether ``linear``'s bias can go into the add_layer_norm after it (its x_bias): a plain
        nn.Linear with a bias and no hooks, followed by a dropout that is the identity now (p = 0
        or eval, no hooks), and add_layer_norm compiled for x. Then that layer's GEMM runs without
        its bias: no broadcast of the bias into the GEMM's output, and its gradient comes out of
        add_layer_norm's backward pass instead of a separate sum. On add_layer_norm's reference
        backend (other devices and dtypes) the split would only add a pass, so the layers run as
        they are."""
        return (type(linear) is nn.Linear and linear.bias is not None and not _has_hooks(linear)
                and type(dropout) is nn.Dropout and not _has_hooks(dropout)
                and (dropout.p == 0 or not dropout.training)
                and ADD_LAYER_NORM.select("auto", x.device, x, None, None, None, 1e-5).name != "reference")

    def _linear_activation(self, x):
        """activation(linear1(x)); for the exact GELU after a plain nn.Linear, where bias_gelu has a
        compiled backend for x, the GEMM without its bias and then the bias inside the GELU
        (pyneuro.ops.bias_gelu: no broadcast of the bias into the GEMM's output, no separate pass for
        its gradient). On its reference backend (other devices and dtypes) that would only split
        the linear layer's fused bias into an extra add, so the layers run as they are then, as
        they do for a linear layer with hooks or any other activation."""
        linear, activation = self.linear1, self.activation
        exact_gelu = activation is F.gelu or (type(activation) is nn.GELU and activation.approximate == "none"
                                              and not _has_hooks(activation))
        if (exact_gelu and type(linear) is nn.Linear and not _has_hooks(linear)
                and BIAS_GELU.select("auto", x.device, x, linear.bias).name != "reference"):
            return bias_gelu(F.linear(x, linear.weight), linear.bias)
        return activation(linear(x))


def _has_hooks(module: nn.Module) -> bool:
    """Whether a forward call of ``module`` would run hooks (its own or global ones)."""
    return bool(module._forward_hooks or module._forward_pre_hooks or _torch_module._global_forward_hooks
                or _torch_module._global_forward_pre_hooks)


class Pending(NamedTuple):
    """A pre-norm layer's last sub-layer output, not yet added to the residual stream: ``value``
    plus ``bias`` (linear2's bias, kept apart for the next add_layer_norm to add; None when it is
    already in value). :func:`add_pending` adds it to a stream."""
    value: torch.Tensor
    bias: Optional[torch.Tensor] = None


def add_pending(x, pending: Optional[Pending], index=None):
    """x + pending (x when pending is None); with ``index``, x + pending at ``value[index]`` (x then
    being the stream at that index, e.g. the class token's ``(slice(None), 0)``)."""
    if pending is None:
        return x
    value = pending.value if index is None else pending.value[index]
    x = x + value if pending.bias is None else x + (value + pending.bias)
    return x


def _token_dim(x, batch_first: bool) -> int:
    """The token dim of a layer's input: 1 for batch-first (B, L, E), else 0 ((L, B, E) or (L, E))."""
    return 1 if batch_first and x.dim() == 3 else 0


def _rows_slice(rows, length: int) -> Optional[slice]:
    """``rows`` as a slice of a token dim of ``length`` (an int i becomes i:i+1), checked."""
    if rows is None or isinstance(rows, slice):
        if isinstance(rows, slice) and rows.step not in (None, 1):
            raise ValueError(f"rows must be a slice with step 1, got {rows!r}")
        return rows
    if isinstance(rows, bool) or not isinstance(rows, int):
        raise TypeError(f"rows must be an int or a slice, got {type(rows).__name__}")
    if not -length <= rows < length:
        raise ValueError(f"rows={rows} is out of range for {length} tokens")
    rows %= length
    return slice(rows, rows + 1)


def _take_rows(x, pending: Optional[Pending], rows: slice, token_dim: int = 1):
    """(x, pending) at the tokens ``rows`` of dim ``token_dim``."""
    index = (slice(None), rows) if token_dim == 1 else (rows,)
    if pending is not None:
        pending = Pending(pending.value[index], pending.bias)
    return x[index], pending


def run_layers(layers, x, is_causal: bool = False, *, rows=None):
    """Encoder layers one after another on the residual stream: (stream, pending), their sum
    (:func:`add_pending`) being the last layer's output. pyneuro's layers go through
    ``forward_stream``, so that each residual add happens inside the next layer norm; any other
    layer (torch.nn's) is called on the summed stream.

    ``rows`` (an int or a slice of the token dim of batch-first x): return the output at those
    tokens only (the dim kept). A classifier that reads its class token passes ``rows=0``; then the
    last layer computes only that token's query, attention row, out-projection, norm and
    feed-forward (keys and values still from every token): the same values, about a third of that
    layer's work at 17 tokens. Any other last layer (torch.nn's) runs whole and is then indexed."""
    pending = None
    for index, layer in enumerate(layers):
        if isinstance(layer, TransformerEncoderLayer):
            last_rows = rows if index == len(layers) - 1 else None
            x, pending = layer(x, is_causal=is_causal, pending=pending, defer_add=True, rows=last_rows)
        else:
            x, pending = layer(add_pending(x, pending), is_causal=is_causal), None
    if rows is not None and not (len(layers) and isinstance(layers[-1], TransformerEncoderLayer)):
        x, pending = _take_rows(x, pending, _rows_slice(rows, x.shape[1]))  # no layer, or torch.nn's last
    return x, pending


class TransformerEncoder(nn.Module):
    """``num_layers`` copies of ``encoder_layer`` (then ``norm`` if given), keys as torch.nn.TransformerEncoder's."""

    def __init__(self, encoder_layer: nn.Module, num_layers: int, norm: nn.Module | None = None):
        super().__init__()
        _require_positive_int(type(self).__name__, "num_layers", num_layers)
        self.layers = nn.ModuleList(copy.deepcopy(encoder_layer) for _ in range(num_layers))
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=False, *, rows=None):
        """The stack's output; with ``rows`` (an int or a slice of the token dim, batch-first src)
        only at those tokens, the last layer computing no other (see :func:`run_layers`)."""
        _reject_masks(type(self).__name__, mask=mask, src_key_padding_mask=src_key_padding_mask)
        x, pending = run_layers(self.layers, src, is_causal, rows=rows)
        if self.norm is None:
            return add_pending(x, pending)
        return TransformerEncoderLayer._add_pending_norm(self.norm, x, pending)[0]  # the last add inside the norm


__all__ = ["MultiheadAttention", "MultiheadSelfAttention", "TransformerEncoderLayer", "TransformerEncoder", "run_layers",
           "Pending", "add_pending"]
