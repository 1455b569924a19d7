"""Rotary position embedding (RoPE, halves rotated) of queries and keys on packed tokens, in place.

ModernBERT rotates each head's query and key by angles ``position * inv_freq``; with packed tokens a
token's position is its index within its sequence (``packed.position_ids_from_cu_seqlens``, what
every ``PackedBatch`` carries). The angles' cosines and sines come from a table made once per rotary
base (``rotary_tables``, fp32, computed as ``reference.rotate`` computes them), so the kernel only
gathers a row per token: no transcendental function, whose fast GPU forms lose accuracy at the
angles of late positions (thousands of radians), runs inside it. ``rotary_ref`` is the oracle.
"""

from __future__ import annotations

import torch

from bertrt.ops._triton import cdiv, jit, next_pow2, num_warps_for, use_triton

tl = None  # triton.language, bound by jit() on first use: importing this module never imports triton


def rotary_tables(base: float, head_dim: int, length: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (length, head_dim // 2) fp32: row p holds the angles of position p, as
    ``reference.rotate`` computes them (inverse frequencies and products in fp32)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.arange(length, dtype=torch.float32)[:, None] * inv_freq
    return angles.cos().to(device).contiguous(), angles.sin().to(device).contiguous()


def rotary_ref(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch, fp32 math inside; same arguments and result as ``rotary_``."""
    half = x.shape[-1] // 2
    c, s = cos[positions.long()][:, None, :], sin[positions.long()][:, None, :]
    first, second = x[..., :half].float(), x[..., half:].float()
    return x.copy_(torch.cat((first * c - second * s, second * c + first * s), dim=-1).to(x.dtype))


def _rotary_kernel(
    x_ptr, positions_ptr, cos_ptr, sin_ptr, n_tokens, half, x_stride_t, x_stride_h,
    BLOCK_T: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    t_offs = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    j_offs = tl.arange(0, BLOCK_HALF)
    t_mask = t_offs < n_tokens
    mask = t_mask[:, None] & (j_offs < half)[None, :]
    pos = tl.load(positions_ptr + t_offs, mask=t_mask, other=0).to(tl.int64)
    table = pos[:, None] * half + j_offs[None, :]
    c = tl.load(cos_ptr + table, mask=mask, other=0.0)
    s = tl.load(sin_ptr + table, mask=mask, other=0.0)
    first_ptrs = x_ptr + t_offs.to(tl.int64)[:, None] * x_stride_t + tl.program_id(1) * x_stride_h + j_offs[None, :]
    first = tl.load(first_ptrs, mask=mask, other=0.0).to(tl.float32)
    second = tl.load(first_ptrs + half, mask=mask, other=0.0).to(tl.float32)
    tl.store(first_ptrs, (first * c - second * s).to(x_ptr.dtype.element_ty), mask=mask)
    tl.store(first_ptrs + half, (second * c + first * s).to(x_ptr.dtype.element_ty), mask=mask)


def rotary_(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate every head of ``x`` in place: x[..., :D/2], x[..., D/2:] become
    (x1 cos - x2 sin, x2 cos + x1 sin) at each token's position; math in fp32.

    Args:
        x: (T, heads, D) fp32/fp16/bf16 with unit stride along D, D even; a view works, such as the
            query and key heads of a fused QKV projection, ``qkv.view(T, 3 * heads, D)[:, :2 * heads]``.
        positions: (T,) int32/int64 position of each token within its sequence, below len(cos).
        cos, sin: (positions, D/2) fp32 tables from ``rotary_tables``, on x's device.

    Returns:
        ``x``.
    """
    tokens, heads, dim = x.shape
    if dim % 2 or x.stride(-1) != 1:
        raise ValueError(f"rotary_ needs an even head_dim with unit stride, got {dim} (stride {x.stride(-1)})")
    if not use_triton(x, cos, sin):
        return rotary_ref(x, positions, cos, sin)
    if tokens == 0:
        return x
    half, positions = dim // 2, positions.contiguous()
    block_half = next_pow2(half)
    block_t = max(1, min(64, 2048 // block_half))
    grid = (cdiv(tokens, block_t), heads)
    jit(_rotary_kernel, per_request=("n_tokens", "positions_ptr"))[grid](
        x, positions, cos, sin, tokens, half, x.stride(0), x.stride(1),
        BLOCK_T=block_t, BLOCK_HALF=block_half, num_warps=num_warps_for(block_t * block_half))
    return x
