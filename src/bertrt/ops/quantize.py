"""Rounding a tensor to e4m3 or int8 in a pass of its own: for inputs whose producer cannot write
the quantised copy itself (a GEMM whose epilogue cannot round, a projection left unquantised).

``quantize`` runs the Triton kernel on CUDA (or under ``TRITON_INTERPRET=1``) and
``bertrt.quant.numerics.quantize_ref`` elsewhere; both round as ``quantize_ref`` says.
"""

from __future__ import annotations

import torch

from bertrt.ops._triton import QUANT_HELPERS, cdiv, jit, quant_code, use_triton
from bertrt.quant.numerics import DTYPES, quantize_ref

_quantize_e4m3 = _quantize_int8 = None  # _triton.QUANT_HELPERS, bound by jit() with the kernel
tl = None  # triton.language, bound by jit() on first use
BLOCK = 2048


def _quantize_kernel(out_ptr, x_ptr, inv_scale_ptr, n, BLOCK: tl.constexpr, QUANT: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if QUANT == 1:
        tl.store(out_ptr + offs, _quantize_e4m3(x, tl.load(inv_scale_ptr)), mask=mask)
    else:
        tl.store(out_ptr + offs, _quantize_int8(x, tl.load(inv_scale_ptr)), mask=mask)


def quantize(x: torch.Tensor, inv_scale: torch.Tensor, fmt: str) -> torch.Tensor:
    """``x`` (any shape, fp16/bf16/fp32) times ``inv_scale`` (() fp32, on x's device), clamped and
    rounded to ``fmt`` ("fp8": float8_e4m3fn, "int8")."""
    if not use_triton(x, inv_scale):
        return quantize_ref(x, inv_scale, fmt)
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=DTYPES[fmt], device=x.device)
    n = x.numel()
    if n:
        jit(_quantize_kernel, helpers=QUANT_HELPERS, per_request=("n",))[(cdiv(n, BLOCK),)](
            out, x, inv_scale, n, BLOCK=BLOCK, QUANT=quant_code(out), num_warps=8)
    return out
