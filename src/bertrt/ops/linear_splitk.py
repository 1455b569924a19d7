"""Split-K matmul: ``x @ W.T`` as ``splits`` fp32 partial products, one per slice of K.

At small token counts the two projections back to hidden width (attention output, K=1024, and FFN
down, K=4096; N=1024 for BERT-Large) have too few output tiles to fill a GPU: 128 x 128 tiles give
8 x cdiv(M, 128), e.g. 24 at M=384 on a 132-SM H100. Here ``splits`` programs share each output tile,
each accumulating one K slice, and write (splits, M, N) fp32 partials. Their sum is left to the next
kernel, ``bias_residual_layernorm``, which reads its input anyway: no atomics, no extra launch, and
the result does not depend on scheduling.

Tiles are picked from M by a fixed table (``config_for``), not by runtime autotuning: the choice must
be deterministic and free inside CUDA graph capture. Triton runs on CUDA (or under
``TRITON_INTERPRET=1``); elsewhere ``linear_splitk_ref``.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from bertrt.ops._triton import GemmConfig, cdiv, check_out, grouped_tile_impl, jit, rows_contiguous, use_triton

_grouped_tile = None  # _triton.grouped_tile_impl, bound by jit() with the kernel
tl = None  # triton.language, bound by jit() on first use: importing this module never imports triton


# Tiles by M for N=1024, against cuBLAS on an H100 in benchmarks/results/h100/splitk.json (split-K
# wins only at 128 tokens there). Output tiles x splits should cover the 132 SMs about once or twice:
# M=128: 64 x 64 gives 32 tiles (64/128 programs at 2/4 splits); M=384: 96 tiles; M=768, 64 x 128:
# 96 tiles; M=1536, 128 x 128: 96 tiles, M=3072: 192 (where cuBLAS should no longer need splitting).
SMALL_M = GemmConfig(64, 64, 64, num_warps=4, num_stages=4)
MEDIUM_M = GemmConfig(64, 128, 64, num_warps=4, num_stages=4)
LARGE_M = GemmConfig(128, 128, 64, num_warps=8, num_stages=3)


def config_for(m: int) -> GemmConfig:
    """The tiling for an M-row problem (deterministic: no timing, safe during graph capture)."""
    return SMALL_M if m <= 512 else MEDIUM_M if m <= 1024 else LARGE_M


def k_per_split(k: int, splits: int, block_k: int) -> int:
    """Width of each K slice: K's block_k-blocks shared out evenly, so that every slice but the last
    is whole blocks (the last may be shorter, or empty when splits * block_k > K)."""
    return cdiv(cdiv(k, block_k), splits) * block_k


def linear_splitk_ref(x: torch.Tensor, weight: torch.Tensor, splits: int, *,
                      config: GemmConfig | None = None) -> torch.Tensor:
    """Plain PyTorch, fp32 math; same arguments and result as ``linear_splitk``."""
    m, k, n = x.shape[0], x.shape[1], weight.shape[0]
    width = k_per_split(k, splits, (config or config_for(m)).block_k)
    out = x.new_zeros((splits, m, n), dtype=torch.float32)
    for s in range(splits):
        part = slice(s * width, min(k, (s + 1) * width))  # empty for slices past K: zeros
        out[s] = F.linear(x[:, part].float(), weight[:, part].float())
    return out


def _linear_splitk_kernel(
    out_ptr, x_ptr, w_ptr, M, N, K, K_SPLIT, x_stride, w_stride, out_split_stride, out_stride,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # Axis 0 walks output tiles in grouped order (as linear_gelu's kernel: a W tile loaded by one
    # program is still in L2 for the next GROUP_M - 1), axis 1 is the K slice.
    pid_m, pid_n = _grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    split = tl.program_id(1)

    k_start = split * K_SPLIT
    k_end = tl.minimum(K, k_start + K_SPLIT)
    m_offs = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n_offs = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_offs = tl.arange(0, BLOCK_K)
    # Rows/columns past the edge re-read valid ones (wrapped), so the loads need no M/N mask; their
    # results are dropped by the store mask.
    m_load = (m_offs % M).to(tl.int64)
    n_load = (n_offs % N).to(tl.int64)
    x_ptrs = x_ptr + m_load[:, None] * x_stride + (k_start + k_offs)[None, :]    # (BLOCK_M, BLOCK_K)
    w_ptrs = w_ptr + n_load[None, :] * w_stride + (k_start + k_offs)[:, None]    # (BLOCK_K, BLOCK_N) = W.T tile

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # A slice that starts past K (splits * BLOCK_K > K) runs no step and stores zeros.
    for k in range(k_start, k_end, BLOCK_K):
        if EVEN_K:  # K a multiple of BLOCK_K: every slice is whole blocks
            a = tl.load(x_ptrs)
            b = tl.load(w_ptrs)
        else:
            k_mask = k_offs < k_end - k
            a = tl.load(x_ptrs, mask=k_mask[None, :], other=0.0)
            b = tl.load(w_ptrs, mask=k_mask[:, None], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K

    out_ptrs = (out_ptr + split.to(tl.int64) * out_split_stride + m_offs.to(tl.int64)[:, None] * out_stride
                + n_offs[None, :])
    tl.store(out_ptrs, acc, mask=(m_offs < M)[:, None] & (n_offs < N)[None, :])


def linear_splitk(x: torch.Tensor, weight: torch.Tensor, splits: int, *, config: GemmConfig | None = None,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T`` as fp32 partial products over ``splits`` slices of K (no bias).

    ``result.sum(0)`` is the product; ``bias_residual_layernorm`` takes the partials as they are.
    Slice s covers K columns [s * w, min(K, (s + 1) * w)), w = ``k_per_split(K, splits, block_k)``.

    Args:
        x: (M, K) fp32/fp16/bf16 activations.
        weight: (N, K) of ``x``'s dtype, laid out as ``F.linear`` keeps it.
        splits: number of K slices (>= 1).
        config: a tiling to use instead of ``config_for(M)`` (benchmarks); ``tma`` does not
            apply here.
        out: optional (splits, M, N) fp32 tensor to write into, rows contiguous.

    Returns:
        (splits, M, N) float32; each product accumulated in fp32 (fp32 inputs: full fp32 products,
        like F.linear without TF32).
    """
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"want x (M, K), weight (N, K); got {tuple(x.shape)}, {tuple(weight.shape)}")
    if weight.dtype != x.dtype:
        raise ValueError(f"weight is {weight.dtype}, x is {x.dtype}: they must match")
    if not isinstance(splits, int) or splits < 1:
        raise ValueError(f"splits must be a positive integer, got {splits!r}")
    (m, k), n = x.shape, weight.shape[0]
    cfg = config or config_for(m)
    if cfg.tma:
        raise ValueError("linear_splitk's kernel loads through pointers: pass a tiling with tma=False")
    if out is not None:
        check_out(out, (splits, m, n), torch.float32, x.device)
    if not use_triton(x, weight):
        result = linear_splitk_ref(x, weight, splits, config=cfg)
        return result if out is None else out.copy_(result)
    out = check_out(out, (splits, m, n), torch.float32, x.device)
    if m == 0 or n == 0:
        return out
    x, weight = rows_contiguous(x), rows_contiguous(weight)
    grid = (cdiv(m, cfg.block_m) * cdiv(n, cfg.block_n), splits)
    jit(_linear_splitk_kernel, helpers={"_grouped_tile": grouped_tile_impl}, per_request=("M",))[grid](
        out, x, weight, m, n, k, k_per_split(k, splits, cfg.block_k), x.stride(0), weight.stride(0),
        out.stride(0), out.stride(1),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
        EVEN_K=k % cfg.block_k == 0, DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out
