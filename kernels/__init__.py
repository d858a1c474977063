"""Triton kernels, shipped inside the wheel as ``pyneuro.kernels``.

* ``selective_scan``: the selective scan's forward and backward (Mamba's S6 recurrence).
* ``rnn``: the fused recurrent cells (LSTM with projection, GRU, RNN, leaky integrator), forward and
  backward: a persistent kernel per batch block for small H, a per-step fused cell otherwise.
* ``_common``: helpers shared by the kernels (activations, an exp that rounds like the GPU's,
  the affine combine of linear recurrences, tile index/mask helpers).

Importing this package needs triton; the ops import it lazily, only when the triton backend runs.
``scripts/triton_compile.py`` (``make triton-compile``) compiles every specialisation for sm_80 and
sm_90 without a GPU and reports registers and spills. See docs/kernels/triton.md.
"""
