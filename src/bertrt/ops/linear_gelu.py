"""The feed-forward up-projection with its bias and exact (erf) GELU in the GEMM's epilogue.

``linear_bias_gelu(x, W, b) = gelu_erf(x @ W.T + b)``: one tiled matmul whose fp32 accumulator gets the
bias and the GELU before the single store, so the (T, 4096) intermediate is written once and never
read back (the unfused path writes it, then ``bias_gelu`` reads and rewrites it). cuBLASLt's GELU
epilogue is the tanh approximation, and BERT was trained with the erf form, hence a Triton kernel.

Tiles are picked from M by a fixed table (``config_for``), not by runtime autotuning: the choice
must be deterministic and free inside CUDA graph capture. Triton runs on CUDA (or under
``TRITON_INTERPRET=1``); elsewhere ``linear_bias_gelu_ref``.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from bertrt.ops._triton import cdiv, check_out, jit, rows_contiguous, use_triton

tl = None  # triton.language, bound by jit() on first use: importing this module never imports triton


@dataclasses.dataclass(frozen=True)
class GemmConfig:
    """One tiling of the kernel: a (block_m x block_n) output tile per program, K in block_k steps;
    ``group_m`` row-tiles share their column-tiles of W while those stay in L2."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    num_warps: int = 8
    num_stages: int = 3


# Hopper-sized tiles, chosen by M so that small M still fills the SMs: (M, N) = (384, 4096) gives
# 6 x 32 = 192 programs with 64 x 128 tiles, while 128 x 256 tiles would leave 84 of 132 SMs idle.
SMALL_M = GemmConfig(64, 128, 64, group_m=8, num_warps=4, num_stages=4)
MEDIUM_M = GemmConfig(128, 128, 64, group_m=8, num_warps=8, num_stages=4)
LARGE_M = GemmConfig(128, 256, 64, group_m=8, num_warps=8, num_stages=3)


def config_for(m: int) -> GemmConfig:
    """The tiling for an M-row problem (deterministic: no timing, safe during graph capture)."""
    if m <= 1024:
        return SMALL_M
    if m <= 8192:
        return MEDIUM_M
    return LARGE_M


def linear_bias_gelu_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch, fp32 math inside; same arguments and result as ``linear_bias_gelu``."""
    return F.gelu(F.linear(x.float(), weight.float(), bias.float())).to(x.dtype)


def _linear_bias_gelu_kernel(
    out_ptr, x_ptr, w_ptr, bias_ptr, M, N, K, x_stride, w_stride, out_stride,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # Grouped ordering: consecutive programs walk GROUP_M row-tiles down one column of tiles, so a
    # W tile loaded by the first is still in L2 for the next GROUP_M - 1.
    pid = tl.program_id(0)
    tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows

    m_offs = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n_offs = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_offs = tl.arange(0, BLOCK_K)
    # Rows/columns past the edge re-read valid ones (wrapped), so the loads need no M/N mask; their
    # results are dropped by the store mask.
    m_load = (m_offs % M).to(tl.int64)
    n_load = (n_offs % N).to(tl.int64)
    x_ptrs = x_ptr + m_load[:, None] * x_stride + k_offs[None, :]      # (BLOCK_M, BLOCK_K)
    w_ptrs = w_ptr + n_load[None, :] * w_stride + k_offs[:, None]      # (BLOCK_K, BLOCK_N) = W.T tile

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(x_ptrs)
            b = tl.load(w_ptrs)
        else:
            k_mask = k_offs < K - k * BLOCK_K
            a = tl.load(x_ptrs, mask=k_mask[None, :], other=0.0)
            b = tl.load(w_ptrs, mask=k_mask[:, None], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K

    n_mask = n_offs < N
    acc += tl.load(bias_ptr + n_offs, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    y = 0.5 * acc * (1.0 + tl.erf(acc * 0.7071067811865476))  # 1/sqrt(2)
    out_ptrs = out_ptr + m_offs.to(tl.int64)[:, None] * out_stride + n_offs[None, :]
    tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=(m_offs < M)[:, None] & n_mask[None, :])


def linear_bias_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *,
                     out: torch.Tensor | None = None, config: GemmConfig | None = None) -> torch.Tensor:
    """GELU(x @ weight.T + bias) with the exact erf form, accumulated and activated in fp32.

    Args:
        x: (M, K) fp32/fp16/bf16 activations.
        weight: (N, K) of ``x``'s dtype, laid out as ``F.linear`` keeps it.
        bias: (N,) any float dtype.
        out: optional (M, N) tensor of ``x``'s dtype to write into (must not overlap ``x``).
        config: a tiling to use instead of ``config_for(M)`` (benchmarks).

    Returns:
        (M, N) in ``x``'s dtype.
    """
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1] or bias.shape != (weight.shape[0],):
        raise ValueError(f"want x (M, K), weight (N, K), bias (N,); got {tuple(x.shape)}, "
                         f"{tuple(weight.shape)}, {tuple(bias.shape)}")
    if weight.dtype != x.dtype:
        raise ValueError(f"weight is {weight.dtype}, x is {x.dtype}: they must match")
    if not use_triton(x, weight, bias):
        result = linear_bias_gelu_ref(x, weight, bias)
        return result if out is None else out.copy_(result)
    (m, k), n = x.shape, weight.shape[0]
    x, weight, bias = rows_contiguous(x), rows_contiguous(weight), bias.contiguous()
    out = check_out(out, (m, n), x.dtype, x.device)
    if m == 0 or n == 0:
        return out
    cfg = config or config_for(m)
    grid = (cdiv(m, cfg.block_m) * cdiv(n, cfg.block_n),)
    # fp32 inputs: full fp32 products, like F.linear without TF32 (fp16/bf16 take their tensor-core MMA).
    jit(_linear_bias_gelu_kernel)[grid](
        out, x, weight, bias, m, n, k, x.stride(0), weight.stride(0), out.stride(0),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
        EVEN_K=k % cfg.block_k == 0, DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out
