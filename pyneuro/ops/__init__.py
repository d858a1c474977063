"""Accelerated ops. Each lives in its own folder: ``naive.py`` (the readable ground truth) and
``__init__.py`` (the public function, its autograd and its backend choice)."""
from .attention import attention
from .rnn import gru_sequence, lstm_sequence, rnn_sequence
from .selective_scan import selective_scan

__all__ = ["attention", "lstm_sequence", "gru_sequence", "rnn_sequence", "selective_scan"]
