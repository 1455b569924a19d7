"""The feed-forward activation in one kernel: exact (erf) GELU of x + bias.

``x`` is the up-projection GEMM output without its bias. BERT was trained with the erf GELU, not the
tanh approximation, so that is what is computed. ``bias_gelu`` runs the Triton kernel on CUDA (or
under ``TRITON_INTERPRET=1``) and ``bias_gelu_ref`` elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bertrt.ops._triton import check_out, jit, row_tiles, rows_contiguous, use_triton

tl = None  # triton.language, bound by jit() on first use: importing this module never imports triton


def bias_gelu_ref(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch, fp32 math inside; same arguments and result as ``bias_gelu``."""
    return F.gelu(x.float() + bias.float()).to(x.dtype)


def _bias_gelu_kernel(
    out_ptr, x_ptr, bias_ptr, n_tokens, width, out_stride, x_stride,
    BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr,
):
    t_offs = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    i_offs = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    i_mask = i_offs < width
    mask = (t_offs < n_tokens)[:, None] & i_mask[None, :]
    rows = t_offs.to(tl.int64)[:, None]
    x = tl.load(x_ptr + rows * x_stride + i_offs[None, :], mask=mask, other=0.0).to(tl.float32)
    x += tl.load(bias_ptr + i_offs, mask=i_mask, other=0.0).to(tl.float32)[None, :]
    y = 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))  # 1/sqrt(2)
    tl.store(out_ptr + rows * out_stride + i_offs[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """GELU(x + bias) with the exact erf form, computed in fp32.

    Args:
        x: (T, I) fp32/fp16/bf16 GEMM output without its bias.
        bias: (I,) the GEMM's bias, any float dtype.
        out: optional (T, I) tensor of ``x``'s dtype to write into; ``out=x`` works in place.

    Returns:
        (T, I) in ``x``'s dtype.
    """
    if not use_triton(x, bias):
        result = bias_gelu_ref(x, bias)
        return result if out is None else out.copy_(result)
    n_tokens, width = x.shape
    x, bias = rows_contiguous(x), bias.contiguous()
    out = check_out(out, (n_tokens, width), x.dtype, x.device)
    if n_tokens == 0:
        return out
    block_t, block_i, grid, num_warps = row_tiles(n_tokens, width)
    jit(_bias_gelu_kernel, per_request=("n_tokens",))[grid](out, x, bias, n_tokens, width, out.stride(0), x.stride(0),
                                 BLOCK_T=block_t, BLOCK_I=block_i, num_warps=num_warps)
    return out
