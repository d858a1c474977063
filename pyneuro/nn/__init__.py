"""Layers built on :mod:`pyneuro.ops`. Recurrent and attention layers load torch.nn state_dicts."""
from .attention import MultiheadAttention, MultiheadSelfAttention, TransformerEncoder, TransformerEncoderLayer
from .mamba import Mamba
from .rnn import GRU, LSTM, RNN

__all__ = [
    "LSTM", "GRU", "RNN",
    "MultiheadAttention", "MultiheadSelfAttention", "TransformerEncoderLayer", "TransformerEncoder",
    "Mamba",
]
