"""Accelerated ops, one folder each (``naive.py``, the readable ground truth, and ``__init__.py``,
the public function with its validation, fake and autograd wiring): ``scan`` holds
:func:`selective_scan`, ``attn`` :func:`attention` (and :func:`attention_qkvpacked`), ``rnn`` the recurrent sequences, ``norm``
:func:`batch_norm_relu` (a conv block's batch norm + ReLU + max-pool), ``layernorm``
:func:`add_layer_norm` (a residual add and the layer norm of its result), ``gelu`` :func:`bias_gelu`
(a linear layer's bias and the GELU after it). The folders
are not named after the functions, so both stay reachable (``pyneuro.ops.scan.LIMITS``)."""
from .attn import attention, attention_qkvpacked
from .gelu import bias_gelu
from .layernorm import add_layer_norm
from .norm import batch_norm_relu
from .rnn import gru_sequence, leaky_sequence, lstm_sequence, rnn_sequence
from .s4d import s4d_kernel
from .scan import selective_scan

__all__ = ["attention", "attention_qkvpacked", "lstm_sequence", "gru_sequence", "rnn_sequence", "leaky_sequence", "selective_scan",
           "s4d_kernel", "batch_norm_relu", "add_layer_norm", "bias_gelu"]
