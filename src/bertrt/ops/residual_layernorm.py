"""The end of every BERT sub-layer in one kernel: LayerNorm(x + bias + residual).

``x`` is a GEMM output whose bias was left out of the GEMM so that it is added here for free, or the
(splits, T, H) fp32 partial products of a split-K GEMM (``linear_splitk``), summed here as they are
read. Without ``residual``, x already holds it: a GEMM that accumulated into the residual (cuBLAS
with beta = 1) spares this kernel one (T, H) read. ``bias_residual_layernorm`` runs the Triton kernel on CUDA (or under ``TRITON_INTERPRET=1``) and
``bias_residual_layernorm_ref`` elsewhere.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
import torch.nn.functional as F

from bertrt.quant.numerics import format_of, quantize_ref

from bertrt.ops._triton import (QUANT_HELPERS, cdiv, check_out, jit, layernorm_rows_impl, next_pow2,
                                quant_code, rows_contiguous, use_triton)

_layernorm_rows = None  # _triton.layernorm_rows_impl, bound by jit() with the kernel
_quantize = None  # _triton.QUANT_HELPERS, likewise
_HELPERS = {"_layernorm_rows": layernorm_rows_impl, **QUANT_HELPERS}
tl = None  # triton.language, bound by jit() on first use: importing this module never imports triton


@dataclasses.dataclass(frozen=True)
class LayerNormConfig:
    """BLOCK_T tokens per program (a power of two) and the launch's warps; each program holds
    BLOCK_T rows of next_pow2(hidden) fp32 values in registers."""

    block_t: int
    num_warps: int


@functools.cache  # one per width: eager passes call it 48 times
def default_config(hidden: int) -> LayerNormConfig:
    """The tiling ``bias_residual_layernorm`` uses for rows of ``hidden`` when given none: several
    tokens per program for small hidden sizes (about 2,048 values a program), and about 512 values
    per warp. On an H200 at hidden 768 (benchmarks/results/h200/base_ab.json), 2 rows on 4 warps
    took 4.6 us for 4,096 tokens after a GEMM that accumulated into the residual, and 5.4 with the
    residual read here, against 6.2 and 6.7 on 8 warps (256 values a warp: each row's two
    reductions cross more warps through shared memory); at 128 tokens they are alike (2.3-2.6 us).
    At hidden 1024 (layernorm_tilings.json), 49,152 tokens accumulated: 50.6 us against 60.0."""
    block_h = next_pow2(hidden)
    block_t = max(1, min(4, 2048 // block_h))
    return LayerNormConfig(block_t, max(1, min(8, block_t * block_h // 512)))


def bias_residual_layernorm_ref(x: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None,
                                gamma: torch.Tensor, beta: torch.Tensor, eps: float, *,
                                quant_out: torch.Tensor | None = None,
                                quant_inv_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Plain PyTorch, fp32 math inside; same arguments and result as ``bias_residual_layernorm``."""
    partials = x.dim() == 3
    s = (x.float().sum(0) if partials else x.float()) + bias.float()
    if residual is not None:
        s = s + residual.float()
    y = F.layer_norm(s, s.shape[-1:], gamma.float(), beta.float(), eps)
    if quant_out is not None:
        quant_out.copy_(quantize_ref(y, quant_inv_scale, format_of(quant_out.dtype)))
    return y.to(residual.dtype if partials else x.dtype)


def _bias_residual_layernorm_kernel(
    out_ptr, x_ptr, bias_ptr, res_ptr, gamma_ptr, beta_ptr, q_ptr, q_inv_scale_ptr,
    n_tokens, hidden, out_stride, x_stride, x_split_stride, res_stride, q_stride, eps,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, SPLITS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    QUANT: tl.constexpr,
):
    # One program normalises BLOCK_T tokens; a row of BLOCK_H >= hidden columns stays in registers.
    t_offs = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    h_offs = tl.arange(0, BLOCK_H)
    t_mask = t_offs < n_tokens
    h_mask = h_offs < hidden
    mask = t_mask[:, None] & h_mask[None, :]
    rows = t_offs.to(tl.int64)[:, None]

    x_ptrs = x_ptr + rows * x_stride + h_offs[None, :]
    x = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
    # Split-K partials: the other SPLITS - 1 slices, unrolled so that their loads are all in flight
    # together (SPLITS=1, a plain (T, H) x, compiles to the single load above).
    for _ in tl.static_range(SPLITS - 1):
        x_ptrs += x_split_stride
        x += tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        x += tl.load(res_ptr + rows * res_stride + h_offs[None, :], mask=mask, other=0.0).to(tl.float32)
    x += tl.load(bias_ptr + h_offs, mask=h_mask, other=0.0).to(tl.float32)[None, :]

    y = _layernorm_rows(x, mask, h_offs, h_mask, hidden, gamma_ptr, beta_ptr, eps)
    tl.store(out_ptr + rows * out_stride + h_offs[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)
    if QUANT:
        # The next GEMM's low-precision input, rounded from the fp32 values here: no pass of its own.
        q_ptrs = q_ptr + rows * q_stride + h_offs[None, :]
        if QUANT == 1:
            tl.store(q_ptrs, _quantize_e4m3(y, tl.load(q_inv_scale_ptr)), mask=mask)
        else:
            tl.store(q_ptrs, _quantize_int8(y, tl.load(q_inv_scale_ptr)), mask=mask)


def bias_residual_layernorm(x: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None,
                            gamma: torch.Tensor, beta: torch.Tensor, eps: float, *,
                            out: torch.Tensor | None = None, quant_out: torch.Tensor | None = None,
                            quant_inv_scale: torch.Tensor | None = None,
                            config: LayerNormConfig | None = None) -> torch.Tensor:
    """LayerNorm(x + bias + residual) over the last dimension, optionally also rounded to fp8/int8.

    Args:
        x: (T, H) fp32/fp16/bf16 GEMM output without its bias, or (S, T, H) partial products of it
            (``linear_splitk``'s fp32 output), whose sum over S is taken.
        bias: (H,) the GEMM's bias, any float dtype.
        residual: (T, H) the sub-layer's input, any float dtype; None when a 2-D ``x`` already
            includes it.
        gamma, beta: (H,) LayerNorm scale and shift, any float dtype.
        eps: LayerNorm epsilon.
        out: optional (T, H) tensor of the output dtype to write into; may be a 2-D ``x`` or
            ``residual`` (each program reads its rows before writing them).
        quant_out: optional (T, H) float8_e4m3fn or int8 tensor that also receives the result,
            quantised from its fp32 value (``bertrt.quant.numerics.quantize_ref``).
        quant_inv_scale: () fp32, the inverse scale of ``quant_out``.
        config: a tiling to use instead of ``default_config``'s (benchmarks); any tiling still
            reduces each row within one program, only the order of its sums may change.

    Returns:
        (T, H) in ``x``'s dtype for a 2-D ``x``, in ``residual``'s dtype for (S, T, H) partials
        (which are fp32 whatever the model's precision); the sums and the normalisation are
        computed in fp32.
    """
    if residual is None and x.dim() != 2:
        raise ValueError(f"without a residual x must be (T, H); got {tuple(x.shape)}")
    if x.dim() not in (2, 3) or (residual is not None and x.shape[-2:] != residual.shape) or (
            x.dim() == 3 and x.shape[0] == 0):
        raise ValueError(f"want x (T, H) or (S >= 1, T, H) and residual (T, H); got {tuple(x.shape)}, "
                         f"{None if residual is None else tuple(residual.shape)}")
    tensors = (x, bias, gamma, beta) if residual is None else (x, bias, residual, gamma, beta)
    if (quant_out is None) != (quant_inv_scale is None):
        raise ValueError("quant_out and quant_inv_scale go together")
    if config is not None and not all(n >= 1 and n & (n - 1) == 0 for n in (config.block_t, config.num_warps)):
        raise ValueError(f"block_t and num_warps must be powers of two, got {config}")
    if not use_triton(*tensors):
        result = bias_residual_layernorm_ref(x, bias, residual, gamma, beta, eps, quant_out=quant_out,
                                             quant_inv_scale=quant_inv_scale)
        return result if out is None else out.copy_(result)
    n_tokens, hidden = x.shape[-2:]
    has_splits = x.dim() == 3
    x = rows_contiguous(x)
    has_residual = residual is not None
    residual = rows_contiguous(residual) if has_residual else x  # x: an unread stand-in pointer
    bias, gamma, beta = bias.contiguous(), gamma.contiguous(), beta.contiguous()
    out = check_out(out, (n_tokens, hidden), residual.dtype if has_splits else x.dtype, x.device)
    if n_tokens == 0:
        return out
    block_h = next_pow2(hidden)
    cfg = config or default_config(hidden)
    quant = quant_code(quant_out)
    if quant:
        quant_out = check_out(quant_out, (n_tokens, hidden), quant_out.dtype, x.device)
    jit(_bias_residual_layernorm_kernel, helpers=_HELPERS, per_request=("n_tokens",))[(cdiv(n_tokens, cfg.block_t),)](
        out, x, bias, residual, gamma, beta, quant_out if quant else out, quant_inv_scale if quant else bias,
        n_tokens, hidden, out.stride(0), x.stride(-2), x.stride(0) if has_splits else 0, residual.stride(0),
        quant_out.stride(0) if quant else 0, eps,
        BLOCK_T=cfg.block_t, BLOCK_H=block_h, SPLITS=x.shape[0] if has_splits else 1, HAS_RESIDUAL=has_residual,
        QUANT=quant, num_warps=cfg.num_warps)
    return out
