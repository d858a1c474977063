"""The emulated CUDA attention (csrc/cuda/attention.cu on tools/cuda_emu) driven through ctypes.

Shared by tests/cuda_emu/test_emulated_attention.py (pytest puts this folder on sys.path). Inputs
are torch CPU tensors with any strides whose last one is 1 (their data pointers and (B, H, L)
strides go straight to the launchers, as attention_glue.cpp passes them); outputs are allocated
here contiguous and filled with NaN first, so an element no thread writes fails the comparison.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch

DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
SCHEDULES = {"forward": 0, "reverse": 1, "random": 2}
_I64x3 = ctypes.c_longlong * 3


def _strides(t: torch.Tensor):
    assert t.stride(3) == 1, "the contract's operands have a last stride of 1"
    return _I64x3(*t.stride()[:3])


def _ptr(t: torch.Tensor):
    return ctypes.c_void_p(t.data_ptr())


def _nan(*shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype)


class EmulatedAttention:
    def __init__(self, lib_path: Path):
        self.lib = ctypes.CDLL(str(lib_path))
        self.lib.cuda_emu_error_message.restype = ctypes.c_char_p
        self.lib.cuda_emu_configure.argtypes = [ctypes.c_int, ctypes.c_ulonglong, ctypes.c_int, ctypes.c_ulonglong]
        head = [ctypes.c_int] * 8 + [ctypes.c_float, ctypes.c_double, ctypes.c_longlong, ctypes.c_longlong]
        self.lib.emu_attention_fwd.argtypes = head + [ctypes.c_void_p, _I64x3] * 3 + [ctypes.c_void_p] * 2
        self.lib.emu_attention_bwd.argtypes = (head + [ctypes.c_void_p, _I64x3] * 5 + [ctypes.c_void_p] * 4)

    def configure(self, schedule="forward", seed=0, workers=1):
        self.lib.cuda_emu_configure(SCHEDULES[schedule], seed, workers, 0)

    def _check(self, rc, what):
        if rc != 0:
            msg = self.lib.cuda_emu_error_message().decode()
            self.lib.cuda_emu_clear_error()
            raise RuntimeError(f"emulated {what} failed (cudaError {rc}): {msg}")

    @staticmethod
    def _head(q, k, causal, scale, dropout_p, rng_state):
        B, Hq, Lq, D = q.shape
        seed, offset = (int(x) for x in rng_state.tolist()) if rng_state is not None else (0, 0)
        return [DTYPE_CODE[q.dtype], B, Hq, k.shape[1], Lq, k.shape[2], D, int(causal), scale, dropout_p, seed,
                offset]

    def fwd(self, q, k, v, causal, scale, dropout_p=0.0, rng_state=None):
        """(out, lse) as the CUDA op returns them."""
        B, Hq, Lq, D = q.shape
        out, lse = _nan(B, Hq, Lq, D, dtype=q.dtype), _nan(B, Hq, Lq, dtype=torch.float32)
        args = self._head(q, k, causal, scale, dropout_p, rng_state)
        for t in (q, k, v):
            args += [_ptr(t), _strides(t)]
        self._check(self.lib.emu_attention_fwd(*args, _ptr(out), _ptr(lse)), "attention_fwd")
        return out, lse

    def bwd(self, dout, q, k, v, out, lse, causal, scale, dropout_p=0.0, rng_state=None):
        """(dq, dk, dv) as the CUDA op returns them."""
        dq = _nan(*q.shape, dtype=q.dtype)
        dk, dv = _nan(*k.shape, dtype=q.dtype), _nan(*v.shape, dtype=q.dtype)
        assert lse.is_contiguous()
        args = self._head(q, k, causal, scale, dropout_p, rng_state)
        for t in (dout, q, k, v, out):
            args += [_ptr(t), _strides(t)]
        self._check(self.lib.emu_attention_bwd(*args, _ptr(lse), _ptr(dq), _ptr(dk), _ptr(dv)), "attention_bwd")
        return dq, dk, dv
