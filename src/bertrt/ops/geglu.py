"""The gated feed-forward activation in one kernel: act(x[:, :I]) * x[:, I:] (GeGLU for GELU).

``x`` is the up-projection's output, 2 x intermediate wide (ModernBERT's ``Wi``: the input half
first, then the gate). The activation is the config's ``hidden_act``: "gelu" (exact erf, ModernBERT's
default ``hidden_activation``), "gelu_tanh", "relu" or "silu". ``gated_act`` runs the Triton kernel
on CUDA (or under ``TRITON_INTERPRET=1``) and ``gated_act_ref`` elsewhere.
"""

from __future__ import annotations

import torch

from bertrt.config import ENGINE_GATED_ACTIVATIONS
from bertrt.ops._triton import check_out, jit, row_tiles, rows_contiguous, use_triton

tl = None  # triton.language, bound by jit() on first use: importing this module never imports triton

# Activation name -> the kernel's constexpr ACT (the engine's check names the same, config.ENGINE_GATED_ACTIVATIONS).
GATED_ACTIVATIONS = {name: code for code, name in enumerate(ENGINE_GATED_ACTIVATIONS)}


def gated_act_ref(x: torch.Tensor, act: str = "gelu") -> torch.Tensor:
    """Plain PyTorch, fp32 math inside; same arguments and result as ``gated_act``."""
    from bertrt.reference import ACTIVATIONS

    value, gate = x.float().chunk(2, dim=-1)
    return (ACTIVATIONS[act](value) * gate).to(x.dtype)


def _gated_act_kernel(
    out_ptr, x_ptr, n_tokens, width, out_stride, x_stride,
    BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr, ACT: tl.constexpr,
):
    t_offs = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    i_offs = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    mask = (t_offs < n_tokens)[:, None] & (i_offs < width)[None, :]
    rows = t_offs.to(tl.int64)[:, None]
    value_ptrs = x_ptr + rows * x_stride + i_offs[None, :]
    x = tl.load(value_ptrs, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(value_ptrs + width, mask=mask, other=0.0).to(tl.float32)
    if ACT == 0:
        y = 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))  # 1/sqrt(2)
    elif ACT == 1:
        u = 0.7978845608028654 * (x + 0.044715 * x * x * x)  # sqrt(2/pi)
        e = tl.exp(-2.0 * tl.abs(u))  # tanh(|u|) = (1 - e) / (1 + e), no overflow at either end
        tanh = (1.0 - e) / (1.0 + e)
        y = 0.5 * x * (1.0 + tl.where(u < 0, -tanh, tanh))
    elif ACT == 2:
        y = tl.maximum(x, 0.0)
    else:
        y = x / (1.0 + tl.exp(-x))
    tl.store(out_ptr + rows * out_stride + i_offs[None, :], (y * gate).to(out_ptr.dtype.element_ty), mask=mask)


def gated_act(x: torch.Tensor, act: str = "gelu", *, out: torch.Tensor | None = None) -> torch.Tensor:
    """act(x[:, :I]) * x[:, I:], computed in fp32.

    Args:
        x: (T, 2I) fp32/fp16/bf16 up-projection output (bias, if any, already added), unit stride along rows.
        act: a name in ``GATED_ACTIVATIONS``.
        out: optional (T, I) tensor of ``x``'s dtype to write into.

    Returns:
        (T, I) in ``x``'s dtype.
    """
    if act not in GATED_ACTIVATIONS:
        raise ValueError(f"act {act!r} is not one of {', '.join(GATED_ACTIVATIONS)}")
    n_tokens, double = x.shape
    if double % 2:
        raise ValueError(f"gated_act needs an even width (value and gate halves), got {double}")
    width = double // 2
    if not use_triton(x):
        result = gated_act_ref(x, act)
        return result if out is None else out.copy_(result)
    x = rows_contiguous(x)
    out = check_out(out, (n_tokens, width), x.dtype, x.device)
    if n_tokens == 0:
        return out
    block_t, block_i, grid, num_warps = row_tiles(n_tokens, width)
    jit(_gated_act_kernel, per_request=("n_tokens",))[grid](
        out, x, n_tokens, width, out.stride(0), x.stride(0),
        BLOCK_T=block_t, BLOCK_I=block_i, ACT=GATED_ACTIVATIONS[act], num_warps=num_warps)
    return out
