"""The feed-forward up-projection with its bias and exact (erf) GELU in the GEMM's epilogue.

``linear_bias_gelu(x, W, b) = gelu_erf(x @ W.T + b)``: one tiled matmul whose fp32 accumulator gets the
bias and the GELU before the single store, so the (T, 4096) intermediate is written once and never
read back (the unfused path writes it, then ``bias_gelu`` reads and rewrites it). cuBLASLt's GELU
epilogue is the tanh approximation, and BERT was trained with the erf form, hence a Triton kernel;
builds also time the cuBLASLt path (``linear_gelu_tanh``), which was faster on an H200.

Tiles are picked from M by a fixed table (``config_for``), not by runtime autotuning: the choice
must be deterministic and free inside CUDA graph capture. Triton runs on CUDA (or under
``TRITON_INTERPRET=1``); elsewhere ``linear_bias_gelu_ref``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bertrt.ops._triton import (GemmConfig, cdiv, check_out, grouped_tile_impl, interpret_requested, jit,
                                rows_contiguous, use_triton)

tl = None  # triton.language, bound by jit() on first use: importing this module never imports triton
_add_bias_gelu = _grouped_tile = None  # jitted device functions, bound by jit() with the kernels (_HELPERS)


# Tiles by M, from CUDA-graph timings on an H100 (benchmarks/results/h100/tilings.json, K=1024,
# N=4096, fp16, against cuBLAS + the bias_gelu kernel): up to ~1k tokens 64 x 64 tiles fill the 132
# SMs; to ~2k a persistent 128 x 128 TMA kernel (1,536 tokens: 27.8 us against 31.2); beyond, 128 x 256
# TMA tiles (3,072: 50.1 against 61.2; 49,152: 750 against 903, 550 TFLOP/s with the epilogue).
# Splitting the epilogue in two column halves and Triton 3.6's warp specialization did not beat
# these (same file).
# Without TMA (pre-Hopper, the interpreter, unaligned rows) the same tiles through pointers.
SMALL_M = GemmConfig(64, 64, 64, group_m=8, num_warps=4, num_stages=4)
MEDIUM_M = GemmConfig(128, 128, 64, group_m=8, num_warps=8, num_stages=4, tma=True)
LARGE_M = GemmConfig(128, 256, 64, group_m=8, num_warps=8, num_stages=3, tma=True)


def config_for(m: int) -> GemmConfig:
    """The tiling for an M-row problem (deterministic: no timing, safe during graph capture)."""
    return SMALL_M if m <= 1024 else MEDIUM_M if m <= 2048 else LARGE_M


def linear_bias_gelu_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch, fp32 math inside; same arguments and result as ``linear_bias_gelu``."""
    return F.gelu(F.linear(x.float(), weight.float(), bias.float())).to(x.dtype)


def _add_bias_gelu_impl(acc, bias_ptr, n0, N, BLOCK_N: tl.constexpr, APPLY_GELU: tl.constexpr):
    """The epilogue of a (rows, BLOCK_N) fp32 tile starting at column n0: + bias, then GELU.

    erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7, fp32's own resolution): one fast
    reciprocal, one exp2 and five FMAs, where libdevice's erff costs several times that. Over a
    K=1024 main loop the epilogue is not small: on an H100 at 49k tokens the exact erf made the
    fused kernel 40% slower than the same GEMM without it."""
    n_offs = n0 + tl.arange(0, BLOCK_N)
    acc += tl.load(bias_ptr + n_offs, mask=n_offs < N, other=0.0).to(tl.float32)[None, :]
    if APPLY_GELU:
        z = tl.abs(acc) * 0.7071067811865476  # |x| / sqrt(2)
        t = tl.fdiv(tl.full(acc.shape, 1.0, tl.float32), 1.0 + 0.3275911 * z, ieee_rounding=False)
        poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
        half_erfc = 0.5 * poly * tl.exp2(-1.4426950408889634 * z * z)  # (1 - erf(|x| / sqrt(2))) / 2
        # GELU(x) = x (1 + erf(x / sqrt 2)) / 2 = x - x * half_erfc for x >= 0, x * half_erfc below.
        acc = tl.where(acc >= 0, acc - acc * half_erfc, acc * half_erfc)
    return acc


# Device functions both kernels call, bound by jit() with them.
_HELPERS = {"_add_bias_gelu": _add_bias_gelu_impl, "_grouped_tile": grouped_tile_impl}


def _linear_bias_gelu_kernel(
    out_ptr, x_ptr, w_ptr, bias_ptr, M, N, K, x_stride, w_stride, out_stride,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr, DOT_PRECISION: tl.constexpr, APPLY_GELU: tl.constexpr,
):
    pid_m, pid_n = _grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)

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

    acc = _add_bias_gelu(acc, bias_ptr, pid_n * BLOCK_N, N, BLOCK_N, APPLY_GELU)
    out_ptrs = out_ptr + m_offs.to(tl.int64)[:, None] * out_stride + n_offs[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=(m_offs < M)[:, None] & (n_offs < N)[None, :])


def _linear_bias_gelu_tma_kernel(
    x_desc, w_desc, out_desc, bias_ptr, M, N, K,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    APPLY_GELU: tl.constexpr,
):
    # Persistent: program p computes tiles p, p + programs, ... in the same grouped order as
    # above. Descriptor loads past the edges read zeros and stores past them are dropped, so no masks.
    tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    # The grid is min(SMs, tiles): read at run time, not a constexpr, which would compile the kernel
    # again for every tile count below the SM count (small models, small batches).
    for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, tl.num_programs(0), flatten=True):
        tile_m, tile_n = _grouped_tile(tile, tiles_m, tiles_n, GROUP_M)
        m0, n0 = tile_m * BLOCK_M, tile_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(tl.cdiv(K, BLOCK_K)):
            a = x_desc.load([m0, k * BLOCK_K])
            b = w_desc.load([n0, k * BLOCK_K])
            acc = tl.dot(a, b.T, acc)
        acc = _add_bias_gelu(acc, bias_ptr, n0, N, BLOCK_N, APPLY_GELU)
        out_desc.store([m0, n0], acc.to(out_desc.dtype))


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
    m, n = x.shape[0], weight.shape[0]
    x, weight, bias = rows_contiguous(x), rows_contiguous(weight), bias.contiguous()
    out = check_out(out, (m, n), x.dtype, x.device)
    if m == 0 or n == 0:
        return out
    _launch(x, weight, bias, out, config or config_for(m), gelu=True)
    return out


def _tma_usable(*tensors: torch.Tensor) -> bool:
    """TMA descriptors need a Hopper-or-later GPU (or the interpreter), 16-byte aligned bases and rows."""
    on_hopper = all(t.is_cuda for t in tensors) and torch.cuda.get_device_capability(tensors[0].device)[0] >= 9
    if not (on_hopper or interpret_requested()):
        return False
    return all(t.data_ptr() % 16 == 0 and (t.stride(0) * t.element_size()) % 16 == 0 for t in tensors)


def _launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out: torch.Tensor, cfg: GemmConfig, *,
            gelu: bool) -> None:
    """out = [gelu](x @ weight.T + bias) with tiling ``cfg`` (inputs already checked)."""
    (m, k), n = x.shape, weight.shape[0]
    if cfg.tma and x.dtype != torch.float32 and _tma_usable(x, weight, out):
        from triton.tools.tensor_descriptor import TensorDescriptor

        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 4
        programs = min(sms, cdiv(m, cfg.block_m) * cdiv(n, cfg.block_n))
        jit(_linear_bias_gelu_tma_kernel, helpers=_HELPERS, per_request=("M",))[(programs,)](
            TensorDescriptor.from_tensor(x, [cfg.block_m, cfg.block_k]),
            TensorDescriptor.from_tensor(weight, [cfg.block_n, cfg.block_k]),
            TensorDescriptor.from_tensor(out, [cfg.block_m, cfg.block_n]), bias, m, n, k,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
            APPLY_GELU=gelu, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        return
    grid = (cdiv(m, cfg.block_m) * cdiv(n, cfg.block_n),)
    # fp32 inputs: full fp32 products, like F.linear without TF32 (fp16/bf16 take their tensor-core MMA).
    jit(_linear_bias_gelu_kernel, helpers=_HELPERS, per_request=("M",))[grid](
        out, x, weight, bias, m, n, k, x.stride(0), weight.stride(0), out.stride(0),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
        EVEN_K=k % cfg.block_k == 0, DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        APPLY_GELU=gelu, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
