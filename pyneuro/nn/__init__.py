"""Layers built on :mod:`pyneuro.ops`. Recurrent and attention layers load torch.nn state_dicts."""
from .attention import (MultiheadAttention, MultiheadSelfAttention, Pending, TransformerEncoder, TransformerEncoderLayer,
                        add_pending, run_layers)
from .leaky import MTRNN, LeakyRNN
from .mamba import Mamba
from .norm import BatchNormReLU2d, SyncBatchNormReLU2d
from .rnn import GRU, LSTM, RNN
from .s4d import S4D

__all__ = [
    "LSTM", "GRU", "RNN", "LeakyRNN", "MTRNN",
    "MultiheadAttention", "MultiheadSelfAttention", "TransformerEncoderLayer", "TransformerEncoder",
    "run_layers", "Pending", "add_pending",
    "Mamba", "S4D", "BatchNormReLU2d", "SyncBatchNormReLU2d",
]
