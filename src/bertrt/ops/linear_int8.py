"""INT8 linear layers: an int8 x int8 GEMM accumulated in int32, with its dequantising epilogue fused.

``linear_int8(x_q, W_q, scale, b) = epilogue(x_q @ W_q.T)`` in one tiled matmul: the int32
accumulator is scaled back to real values (per output channel or per tensor), gets the bias, an
optional exact-erf GELU and an optional residual, and is stored once, either as fp16/bf16/fp32 or
quantised again to int8 for the next GEMM. The two ways an INT8 engine runs its projections are
arguments, not separate kernels:

- per-channel weight scales (``scale`` of shape (N,)), fp16 output and an fp16 residual;
- per-tensor scales (``scale`` of shape ()), int8 output (``out_dtype=torch.int8, out_scale=s``).

Hopper's int8 tensor-core rate equals its fp8 rate (~1,979 dense TOP/s on an H200), where
``torch._int_mm`` reached 484-703 TOP/s at BERT-Large's 49,152-token shapes; hence a Triton kernel
with large tiles, K in steps of 128 (32 bytes of int8 per MMA K-step, four per block), grouped tile
order for L2 reuse and, on Hopper, a persistent grid loading through TMA descriptors.

Tiles come from a fixed table (``TILINGS``, ``config_for``), never from runtime autotuning: the
choice must be deterministic and free inside CUDA graph capture; an engine build may time the
tilings and record a name. ``quantize_int8`` turns a float tensor into int8 for inputs that no
producing kernel quantises. Triton runs on CUDA (or under ``TRITON_INTERPRET=1``); elsewhere the
``*_ref`` functions, which are also the oracles of the tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bertrt.ops._triton import (GemmConfig, cdiv, check_out, grouped_tile_impl, interpret_requested, jit,
                                quantize_int8_impl, rows_contiguous, use_triton)
from bertrt.ops.linear_gelu import _add_bias_gelu_impl
from bertrt.quant.numerics import quantize_ref

tl = None  # triton.language, bound by jit() on first use: importing this module never imports triton
_add_bias_gelu = _grouped_tile = _int8_epilogue = _round_to_int8 = None  # jitted device functions, bound by jit() (_HELPERS)

OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.int8)
INT8_MAX = 127  # symmetric: -128 is never produced

# Tilings a build may time and record by name (benchmarks/int8_gemm.py times each against
# torch._int_mm and fp16 F.linear); the shapes follow what makes Hopper's wgmma busy: 128 x 256 or
# 256 x 128 output tiles for two warpgroups, BLOCK_K = 128 int8, 3-4 stages of shared memory (48 KiB
# per stage at 128 x 256 x 128: 3 stages = 144 KiB of 227; the sm_90 compile of the TMA kernel with
# its fp16 epilogue needs 176 KiB, 208 KiB at 256 x 128). Without TMA (pre-Hopper GPUs, rows not
# 16-byte aligned) the same tiles load through pointers.
TILINGS = {
    "64x128x128": GemmConfig(64, 128, 128, group_m=8, num_warps=4, num_stages=4, tma=True),
    "128x128x128": GemmConfig(128, 128, 128, group_m=8, num_warps=8, num_stages=4, tma=True),
    "128x256x128": GemmConfig(128, 256, 128, group_m=8, num_warps=8, num_stages=3, tma=True),
    "256x128x128": GemmConfig(256, 128, 128, group_m=8, num_warps=8, num_stages=3, tma=True),
}
# The fewest output tiles at which each larger tiling wins, for a 132-SM Hopper part (H100 SXM,
# H200). On an H200 (benchmarks/results/h200/int8_gemm.json, mode-1 epilogue): at 49,152 rows
# 128 x 256 came within 3% of the best tiling at every projection (967-1,032 TOP/s for QKV and
# FFN-out, 637-711 where the epilogue is heavy); at 384 rows
# 128 x 128 beat 64 x 128 with 72 and 96 tiles (QKV 306 against 249 TOP/s, FFN-in 317 against 248)
# and lost with 24 (attention-out, FFN-out: 64 x 128's 48 tiles kept 130 and 240 TOP/s).
_LEAST_TILES = {"128x256x128": 2 * 132, "128x128x128": 132 // 2}


def config_for(m: int, n: int, k: int) -> GemmConfig:
    """The default tiling of an (M, N, K) problem: the largest tile that still gives enough tiles
    (``_LEAST_TILES``; deterministic: no timing, safe during graph capture). ``k`` is part of the
    signature so that a rule by depth can come without changing callers; it is unused today."""
    del k
    for name, least in _LEAST_TILES.items():
        cfg = TILINGS[name]
        if cdiv(m, cfg.block_m) * cdiv(n, cfg.block_n) >= least:
            return cfg
    return TILINGS["64x128x128"]


# --- plain PyTorch --------------------------------------------------------------------------------


def quantize_int8_ref(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch; same arguments and result as ``quantize_int8``."""
    return quantize_ref(x, 1.0 / scale.to(torch.float32).reshape(()), "int8")


def linear_int8_ref(x_q: torch.Tensor, weight_q: torch.Tensor, scale: torch.Tensor,
                    bias: torch.Tensor | None = None, *, gelu: bool = False, out_dtype: torch.dtype = torch.float16,
                    out_scale: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                    config: GemmConfig | None = None) -> torch.Tensor:
    """Plain PyTorch; same arguments and result as ``linear_int8`` (``config`` is ignored).

    The integer product is exact: float64 holds every partial sum (|sum| <= 127^2 K < 2^53), on
    any device, where integer matmul is not available everywhere. The epilogue is fp32, in the
    kernel's order, with the exact erf GELU."""
    _check(x_q, weight_q, scale, bias, out_dtype, out_scale, residual)
    acc = (x_q.to(torch.float64) @ weight_q.to(torch.float64).T).to(torch.float32)
    y = acc * scale.to(torch.float32).reshape(-1)
    if bias is not None:
        y = y + bias.to(torch.float32)
    if gelu:
        y = F.gelu(y)
    if residual is not None:
        y = y + residual.to(torch.float32)
    if out_dtype == torch.int8:
        return quantize_int8_ref(y, out_scale)
    return y.to(out_dtype)


# --- Triton ---------------------------------------------------------------------------------------


def _int8_epilogue_impl(acc, m0, n0, M, N, scale_ptr, bias_ptr, residual_ptr, residual_stride, out_ptr,
                        out_stride, out_scale_ptr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr, APPLY_GELU: tl.constexpr,
                        HAS_RESIDUAL: tl.constexpr, QUANTIZE_OUT: tl.constexpr):
    """Dequantise the int32 (BLOCK_M, BLOCK_N) tile at (m0, n0), add bias [GELU] [residual], store."""
    m_offs = m0 + tl.arange(0, BLOCK_M)
    n_offs = n0 + tl.arange(0, BLOCK_N)
    n_mask = n_offs < N
    if PER_CHANNEL:
        scale = tl.load(scale_ptr + n_offs, mask=n_mask, other=0.0)[None, :]
    else:
        scale = tl.load(scale_ptr)
    y = acc.to(tl.float32) * scale
    # Bias and GELU are linear_gelu's epilogue, so both fused GEMMs share one erf. Without a bias,
    # its column bound is 0: the load is masked off entirely and adds zeros.
    y = _add_bias_gelu(y, bias_ptr, n0, N if HAS_BIAS else 0, BLOCK_N, APPLY_GELU)
    rows = m_offs.to(tl.int64)[:, None]
    mask = (m_offs < M)[:, None] & n_mask[None, :]
    if HAS_RESIDUAL:
        y += tl.load(residual_ptr + rows * residual_stride + n_offs[None, :], mask=mask, other=0.0).to(tl.float32)
    out_ptrs = out_ptr + rows * out_stride + n_offs[None, :]
    if QUANTIZE_OUT:
        tl.store(out_ptrs, _round_to_int8(y, tl.math.div_rn(1.0, tl.load(out_scale_ptr))), mask=mask)
    else:
        tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=mask)


def _linear_int8_kernel(
    out_ptr, x_ptr, w_ptr, scale_ptr, bias_ptr, residual_ptr, out_scale_ptr, M, N, K,
    x_stride, w_stride, residual_stride, out_stride,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr, PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr, APPLY_GELU: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, QUANTIZE_OUT: tl.constexpr,
):
    pid_m, pid_n = _grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    m_offs = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n_offs = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_offs = tl.arange(0, BLOCK_K)
    # Rows/columns past the edge re-read valid ones (wrapped), so the loads need no M/N mask; their
    # results are dropped by the store mask.
    x_ptrs = x_ptr + (m_offs % M).to(tl.int64)[:, None] * x_stride + k_offs[None, :]  # (BLOCK_M, BLOCK_K)
    w_ptrs = w_ptr + (n_offs % N).to(tl.int64)[None, :] * w_stride + k_offs[:, None]  # (BLOCK_K, BLOCK_N) = W.T tile

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k in range(tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(x_ptrs)
            b = tl.load(w_ptrs)
        else:
            k_mask = k_offs < K - k * BLOCK_K
            a = tl.load(x_ptrs, mask=k_mask[None, :], other=0)
            b = tl.load(w_ptrs, mask=k_mask[:, None], other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K

    _int8_epilogue(acc, pid_m * BLOCK_M, pid_n * BLOCK_N, M, N, scale_ptr, bias_ptr, residual_ptr, residual_stride,
                   out_ptr, out_stride, out_scale_ptr, BLOCK_M, BLOCK_N, PER_CHANNEL, HAS_BIAS, APPLY_GELU,
                   HAS_RESIDUAL, QUANTIZE_OUT)


def _linear_int8_tma_kernel(
    x_desc, w_desc, out_ptr, scale_ptr, bias_ptr, residual_ptr, out_scale_ptr, M, N, K, residual_stride,
    out_stride,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr, APPLY_GELU: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    QUANTIZE_OUT: tl.constexpr,
):
    # Persistent, as linear_gelu's TMA kernel: program p computes tiles p, p + programs, ... in
    # grouped order; descriptor loads past the edges (M, N, and K) read zeros. The grid is
    # min(SMs, tiles), read at run time so that no tile count compiles the kernel again.
    tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, tl.num_programs(0), flatten=True):
        tile_m, tile_n = _grouped_tile(tile, tiles_m, tiles_n, GROUP_M)
        m0, n0 = tile_m * BLOCK_M, tile_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for k in range(tl.cdiv(K, BLOCK_K)):
            a = x_desc.load([m0, k * BLOCK_K])
            b = w_desc.load([n0, k * BLOCK_K])  # (BLOCK_N, BLOCK_K): K-major, as int8 wgmma wants it
            acc = tl.dot(a, b.T, acc, out_dtype=tl.int32)
        _int8_epilogue(acc, m0, n0, M, N, scale_ptr, bias_ptr, residual_ptr, residual_stride, out_ptr, out_stride,
                       out_scale_ptr, BLOCK_M, BLOCK_N, PER_CHANNEL, HAS_BIAS, APPLY_GELU, HAS_RESIDUAL,
                       QUANTIZE_OUT)


# Device functions the kernels call, bound by jit() with them.
_HELPERS = {"_add_bias_gelu": _add_bias_gelu_impl, "_grouped_tile": grouped_tile_impl,
            "_round_to_int8": quantize_int8_impl, "_int8_epilogue": _int8_epilogue_impl}


# --- public ops -----------------------------------------------------------------------------------


def quantize_int8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 quantisation: round-half-to-even(x / scale) clamped to [-127, 127].

    The division is a multiplication by the fp32 reciprocal of ``scale`` (correctly rounded),
    as the ref computes it.

    Args:
        x: any shape, fp16/bf16/fp32.
        scale: () or (1,) fp32 tensor, on ``x``'s device: the real value of one int8 step.

    Returns:
        int8 tensor of ``x``'s shape.
    """
    if scale.numel() != 1 or scale.dtype != torch.float32:
        raise ValueError(f"scale must be one fp32 value, got {tuple(scale.shape)} {scale.dtype}")
    from bertrt.ops.quantize import quantize

    return quantize(x, (1.0 / scale.reshape(())).contiguous(), "int8")


def linear_int8(x_q: torch.Tensor, weight_q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None, *,
                gelu: bool = False, out_dtype: torch.dtype = torch.float16, out_scale: torch.Tensor | None = None,
                residual: torch.Tensor | None = None, out: torch.Tensor | None = None,
                config: GemmConfig | None = None) -> torch.Tensor:
    """``[quantize](([GELU](x_q @ weight_q.T * scale + bias)) + residual)``, accumulated in int32.

    The int32 accumulator is converted to fp32 (rounded to nearest, as the ref), then the epilogue
    runs in fp32 in this order: times ``scale``, + ``bias``, GELU (exact erf form, to fp32
    resolution), + ``residual``; then stored in ``out_dtype``, or for int8 quantised as
    ``quantize_int8`` does with ``out_scale``.

    Args:
        x_q: (M, K) int8 activations, rows with unit stride.
        weight_q: (N, K) int8 weights, laid out as ``F.linear`` keeps them.
        scale: fp32 dequantisation scale, (N,) per output channel (``x_scale * w_scale[n]``) or
            () / (1,) per tensor (``x_scale * w_scale``).
        bias: optional (N,) fp16/bf16/fp32, added after scaling.
        gelu: apply GELU (erf form) after the bias.
        out_dtype: torch.float16, torch.bfloat16, torch.float32, or torch.int8 (then ``out_scale``
            is required).
        out_scale: () or (1,) fp32 tensor, the step of the int8 output (int8 output only).
        residual: optional (M, N) fp16/bf16/fp32, added last, before the store or quantisation.
        out: optional (M, N) tensor of ``out_dtype`` to write into (must not overlap the inputs).
        config: a tiling to use instead of ``config_for(M, N, K)`` (a recorded choice, benchmarks).

    Returns:
        (M, N) tensor of ``out_dtype``.
    """
    _check(x_q, weight_q, scale, bias, out_dtype, out_scale, residual)
    tensors = [t for t in (x_q, weight_q, scale, bias, out_scale, residual) if t is not None]
    if not use_triton(*tensors):
        result = linear_int8_ref(x_q, weight_q, scale, bias, gelu=gelu, out_dtype=out_dtype, out_scale=out_scale,
                                 residual=residual)
        return result if out is None else out.copy_(result)
    (m, k), n = x_q.shape, weight_q.shape[0]
    x_q, weight_q = rows_contiguous(x_q), rows_contiguous(weight_q)
    residual = None if residual is None else rows_contiguous(residual)
    out = check_out(out, (m, n), out_dtype, x_q.device)
    if m == 0 or n == 0:
        return out
    if k == 0:
        return out.copy_(linear_int8_ref(x_q, weight_q, scale, bias, gelu=gelu, out_dtype=out_dtype,
                                         out_scale=out_scale, residual=residual))
    cfg = config or config_for(m, n, k)
    placeholder = scale  # any fp32 pointer stands in for an absent tensor; the kernel never reads it
    pointers = (scale, placeholder if bias is None else bias, placeholder if residual is None else residual,
                placeholder if out_scale is None else out_scale)
    flags = dict(PER_CHANNEL=scale.numel() != 1,
                 HAS_BIAS=bias is not None, APPLY_GELU=gelu, HAS_RESIDUAL=residual is not None,
                 QUANTIZE_OUT=out_dtype == torch.int8)
    residual_stride = 0 if residual is None else residual.stride(0)
    blocks = dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m)
    launch = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if cfg.tma and tma_usable(x_q, weight_q):
        from triton.tools.tensor_descriptor import TensorDescriptor

        programs = min(_sm_count(x_q.device), cdiv(m, cfg.block_m) * cdiv(n, cfg.block_n))
        jit(_linear_int8_tma_kernel, helpers=_HELPERS, per_request=("M",))[(programs,)](
            TensorDescriptor.from_tensor(x_q, [cfg.block_m, cfg.block_k]),
            TensorDescriptor.from_tensor(weight_q, [cfg.block_n, cfg.block_k]), out, *pointers, m, n, k,
            residual_stride, out.stride(0), **blocks, **flags, **launch)
        return out
    grid = (cdiv(m, cfg.block_m) * cdiv(n, cfg.block_n),)
    jit(_linear_int8_kernel, helpers=_HELPERS, per_request=("M",))[grid](
        out, x_q, weight_q, *pointers, m, n, k, x_q.stride(0), weight_q.stride(0), residual_stride, out.stride(0),
        **blocks, EVEN_K=k % cfg.block_k == 0, **flags, **launch)
    return out


def tma_usable(*tensors: torch.Tensor) -> bool:
    """TMA descriptors need a Hopper-or-later GPU (or the interpreter), 16-byte aligned bases and rows."""
    on_hopper = all(t.is_cuda for t in tensors) and torch.cuda.get_device_capability(tensors[0].device)[0] >= 9
    if not (on_hopper or interpret_requested()):
        return False
    return all(t.data_ptr() % 16 == 0 and (t.stride(0) * t.element_size()) % 16 == 0 for t in tensors)


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def _check(x_q, weight_q, scale, bias, out_dtype, out_scale, residual) -> None:
    """Shapes and dtypes of ``linear_int8``'s arguments, with a message that names the culprit."""
    if x_q.dim() != 2 or weight_q.dim() != 2 or x_q.shape[1] != weight_q.shape[1]:
        raise ValueError(f"want x_q (M, K), weight_q (N, K); got {tuple(x_q.shape)}, {tuple(weight_q.shape)}")
    if x_q.dtype != torch.int8 or weight_q.dtype != torch.int8:
        raise ValueError(f"x_q and weight_q must be int8, got {x_q.dtype} and {weight_q.dtype}")
    m, n = x_q.shape[0], weight_q.shape[0]
    if scale.dtype != torch.float32 or tuple(scale.shape) not in ((n,), (), (1,)):
        raise ValueError(f"scale must be fp32 of shape ({n},), () or (1,); got {tuple(scale.shape)} {scale.dtype}")
    if bias is not None and (tuple(bias.shape) != (n,) or not bias.is_floating_point()):
        raise ValueError(f"bias must be a float tensor of shape ({n},), got {tuple(bias.shape)} {bias.dtype}")
    if residual is not None and (tuple(residual.shape) != (m, n) or not residual.is_floating_point()):
        raise ValueError(f"residual must be a float tensor of shape ({m}, {n}), got {tuple(residual.shape)} "
                         f"{residual.dtype}")
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")
    if (out_dtype == torch.int8) != (out_scale is not None):
        raise ValueError("out_scale is required with out_dtype=torch.int8, and only then")
    if out_scale is not None and (out_scale.numel() != 1 or out_scale.dtype != torch.float32):
        raise ValueError(f"out_scale must be one fp32 value, got {tuple(out_scale.shape)} {out_scale.dtype}")
