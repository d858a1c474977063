"""Accelerated ops, one folder each (``naive.py``, the readable ground truth, and ``__init__.py``,
the public function with its validation, fake and autograd wiring): ``scan`` holds
:func:`selective_scan`, ``attn`` :func:`attention`, ``rnn`` the recurrent sequences. The folders
are not named after the functions, so both stay reachable (``pyneuro.ops.scan.LIMITS``)."""
from .attn import attention
from .rnn import gru_sequence, leaky_sequence, lstm_sequence, rnn_sequence
from .s4d import s4d_kernel
from .scan import selective_scan

__all__ = ["attention", "lstm_sequence", "gru_sequence", "rnn_sequence", "leaky_sequence", "selective_scan",
           "s4d_kernel"]
