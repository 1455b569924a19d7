"""The SQuAD span head in one kernel: start and end logits of every token, in fp32.

A (H -> 2) linear layer is a GEMV per token; a GEMM with N=2 wastes most of a tensor-core tile, so
one kernel reads each hidden row once and writes both logits. ``qa_head`` runs the Triton kernel on
CUDA (or under ``TRITON_INTERPRET=1``) and ``qa_head_ref`` elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bertrt.ops._triton import cdiv, check_out, jit, next_pow2, num_warps_for, rows_contiguous, use_triton

tl = None  # triton.language, bound by jit() on first use: importing this module never imports triton


def qa_head_ref(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch in fp32; same arguments and result as ``qa_head``."""
    return F.linear(hidden.float(), weight.float(), bias.float())


def _qa_head_kernel(
    out_ptr, hidden_ptr, weight_ptr, bias_ptr, n_tokens, hidden, hidden_stride, weight_stride,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
):
    t_offs = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_mask = t_offs < n_tokens
    rows = t_offs.to(tl.int64)[:, None] * hidden_stride
    start = tl.zeros((BLOCK_T,), dtype=tl.float32)
    end = tl.zeros((BLOCK_T,), dtype=tl.float32)
    for h0 in range(0, hidden, BLOCK_H):  # chunks bound the registers for any hidden size
        h_offs = h0 + tl.arange(0, BLOCK_H)
        h_mask = h_offs < hidden
        h = tl.load(hidden_ptr + rows + h_offs[None, :], mask=t_mask[:, None] & h_mask[None, :],
                    other=0.0).to(tl.float32)
        w_start = tl.load(weight_ptr + h_offs, mask=h_mask, other=0.0).to(tl.float32)
        w_end = tl.load(weight_ptr + weight_stride + h_offs, mask=h_mask, other=0.0).to(tl.float32)
        start += tl.sum(h * w_start[None, :], axis=1)
        end += tl.sum(h * w_end[None, :], axis=1)
    start += tl.load(bias_ptr).to(tl.float32)
    end += tl.load(bias_ptr + 1).to(tl.float32)
    tl.store(out_ptr + t_offs * 2, start, mask=t_mask)
    tl.store(out_ptr + t_offs * 2 + 1, end, mask=t_mask)


def qa_head(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """hidden @ weight.T + bias, accumulated in fp32.

    Args:
        hidden: (T, H) fp32/fp16/bf16 last hidden states.
        weight: (2, H) the head's weight (row 0 start, row 1 end), any float dtype.
        bias: (2,) the head's bias, any float dtype.
        out: optional contiguous (T, 2) fp32 tensor to write into.

    Returns:
        (T, 2) fp32 logits: column 0 start, column 1 end.
    """
    if weight.shape[0] != 2 or bias.shape != (2,):
        raise ValueError(f"qa_head needs a (2, H) weight and (2,) bias, got {tuple(weight.shape)}, "
                         f"{tuple(bias.shape)}")
    if not use_triton(hidden, weight, bias):
        result = qa_head_ref(hidden, weight, bias)
        return result if out is None else out.copy_(result)
    n_tokens, width = hidden.shape
    hidden, weight, bias = rows_contiguous(hidden), rows_contiguous(weight), bias.contiguous()
    out = check_out(out, (n_tokens, 2), torch.float32, hidden.device)
    if not out.is_contiguous():
        raise ValueError("out must be contiguous")
    if n_tokens == 0:
        return out
    block_h = min(next_pow2(width), 256)
    block_t = 16
    jit(_qa_head_kernel, per_request=("n_tokens",))[(cdiv(n_tokens, block_t),)](
        out, hidden, weight, bias, n_tokens, width, hidden.stride(0), weight.stride(0),
        BLOCK_T=block_t, BLOCK_H=block_h, num_warps=num_warps_for(block_t * block_h))
    return out
