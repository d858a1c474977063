"""Triton kernels, shipped inside the wheel as ``pyneuro.kernels``.

Importing this package needs triton; the ops import it lazily, only when the triton backend runs.
"""
