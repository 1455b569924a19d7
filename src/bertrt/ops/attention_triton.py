"""Flash-attention forward on packed tokens, in Triton: for GPUs or PyTorch builds that lack
``torch.nn.attention.varlen`` (see ``bertrt.ops.attention``).

A program computes BLOCK_M queries of one head of one sequence at a time, streaming that
sequence's keys and values in BLOCK_N blocks with the online softmax, so the (S, S) scores never
reach memory and no padding is ever read. The grid is sized by the tokens, not by batch x longest
sequence: programs walk a numbering of all query blocks. ``varlen_attention_ref`` in ``bertrt.ops.attention`` is the oracle.

``fp8=True`` runs both products on e4m3 operands (Hopper's fp8 tensor-core rate is twice fp16's):
Q, K and V are rounded to e4m3 as they are loaded (unscaled: their magnitudes in BERT sit far inside
e4m3's +-448) and the probabilities are scaled by 256 before rounding (exp2(s - max + 8), so that
e4m3's normal range covers down to 2^-14 of the row's largest) and the row sums carry the same
factor, which cancels. ``varlen_attention_fp8_ref`` is its oracle. Converting K and V in the loop
costs more than the faster products save: at BERT-Large b128 s384 on an H200 it took 14.1 ms a
pass against 8.6 for fp16 (benchmarks/results/h200/lowprec_profile.json).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from bertrt.ops._triton import (QUANT_HELPERS, cdiv, check_out, interpret_requested, jit, next_pow2, quant_code,
                                use_triton)
from bertrt.ops.attention import varlen_attention_fp8_ref, varlen_attention_ref, windowed_attention_ref
from bertrt.quant.numerics import format_of, quantize_ref

tl = None  # triton.language, bound by jit() on first use: importing this module never imports triton

_LOG2E = 1.4426950408889634


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """BLOCK_M queries per program, keys in BLOCK_N steps, and the launch's warps and pipeline depth."""

    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2


def attention_config_for(programs_at_64: int, head_dim: int) -> AttentionConfig:
    """The tiling for ``programs_at_64`` (query blocks of 64 tokens x heads) of work.

    From timings on an H100 (head_dim 64; benchmarks/results/h100/alternatives.json, and CUDA-graph
    replays in h100/tilings.json): a single sequence (under 128 such programs) wants 64 queries
    against 128-key steps; a few sequences want 64 x 64 with a deeper pipeline; from about 512
    programs, 128-query blocks on 8 warps (12k tokens: 74 us against 80 for 64 x 64 and 92 for
    PyTorch's flash kernel); from 8,192 programs (32k tokens at 16 heads) 64 x 64 again (49k tokens:
    318 us against 439 for 128 x 64; ragged SQuAD-like 63k tokens: 381 against 593, PyTorch 529).
    """
    if head_dim > 64:
        return AttentionConfig(64, 32, num_warps=8)
    if programs_at_64 < 128:
        return AttentionConfig(64, 128, num_warps=4, num_stages=2)
    if programs_at_64 < 512 or programs_at_64 >= 8192:
        return AttentionConfig(64, 64, num_warps=4, num_stages=3)
    return AttentionConfig(128, 64, num_warps=8, num_stages=3)


def default_config(total: int, heads: int, head_dim: int) -> AttentionConfig:
    """The tiling ``varlen_attention_triton`` uses for ``total`` tokens when given none."""
    return attention_config_for(cdiv(total, 64) * heads, max(next_pow2(head_dim), 16))


# The kernel's smallest sequence-slot width. CUDA graphs pass 129 slots (max_batch 128 + padding),
# so 256 makes graphs, eager batches of up to 256 sequences and the build's timing one compiled
# variant per tiling. With 128, a build compiles both widths of every tiling it times: a cold
# BERT-Large build on an H100 took 27.9 s so, against 19.7 s with one width per tiling.
SEQUENCE_SLOTS = 256


# Named tilings a GPU build times against attention_config_for's pick at each token count and may
# record in the engine ("triton-64x128"...): the thresholds above come from one GPU and one Triton,
# and what is fastest at a launch size moves with both. 32 x 64 doubles the programs of a short
# batch (a single 384-token sequence launches 96 programs of 64 queries on 132 SMs).
TILINGS = {
    "triton-32x64": AttentionConfig(32, 64, num_warps=4, num_stages=3),
    "triton-64x64": AttentionConfig(64, 64, num_warps=4, num_stages=3),
    "triton-64x128": AttentionConfig(64, 128, num_warps=4, num_stages=2),
    "triton-128x64": AttentionConfig(128, 64, num_warps=8, num_stages=3),
}


def _attend_block_impl(q, acc, row_max, row_sum, k_ptr, v_ptr, start, n0, seq_len, head, qk_scale,
                       k_stride_t, k_stride_h, v_stride_t, v_stride_h, d_offs, d_mask, m_offs, reach,
                       BLOCK_N: tl.constexpr, MASK_N: tl.constexpr, MASK_D: tl.constexpr,
                       DOT_PRECISION: tl.constexpr, WINDOW: tl.constexpr, FP8: tl.constexpr,
                       EMULATE_FP8: tl.constexpr):
    """One BLOCK_N block of keys and values into the online softmax of a block of queries.

    Masks cost instructions in every iteration, so a whole block of keys (``MASK_N`` False) and a
    head_dim that fills BLOCK_D (``MASK_D`` False) load and score without them; only a sequence's
    last, partial block is masked. With ``WINDOW`` query m sees key n only where |m - n| <= reach
    (``m_offs``: the queries' positions); a row may then have no key in a block, and while its
    running max is still -inf the exponentials are taken relative to 0 (-inf - -inf would be NaN)."""
    n_offs = n0 + tl.arange(0, BLOCK_N)
    kt_ptrs = k_ptr + (start + n_offs)[None, :] * k_stride_t + head * k_stride_h + d_offs[:, None]
    v_ptrs = v_ptr + (start + n_offs)[:, None] * v_stride_t + head * v_stride_h + d_offs[None, :]
    if MASK_N:
        n_mask = n_offs < seq_len
        kt = tl.load(kt_ptrs, mask=d_mask[:, None] & n_mask[None, :], other=0.0)  # (BLOCK_D, BLOCK_N)
        v = tl.load(v_ptrs, mask=n_mask[:, None] & d_mask[None, :], other=0.0)
    elif MASK_D:
        kt = tl.load(kt_ptrs, mask=d_mask[:, None], other=0.0)
        v = tl.load(v_ptrs, mask=d_mask[None, :], other=0.0)
    else:
        kt = tl.load(kt_ptrs)
        v = tl.load(v_ptrs)
    if FP8:
        kt, v = _fp8_operand(kt, EMULATE_FP8), _fp8_operand(v, EMULATE_FP8)
    scores = tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale
    if MASK_N:
        scores = tl.where(n_mask[None, :], scores, float("-inf"))
    if WINDOW:
        near = tl.abs(m_offs[:, None] - n_offs[None, :]) <= reach
        scores = tl.where(near, scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, axis=1))
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
    else:
        new_max = tl.maximum(row_max, tl.max(scores, axis=1))  # finite: every block has a valid key
        shift = new_max
    alpha = tl.exp2(row_max - shift)
    if FP8:  # probabilities times 256 (see the module docstring); row_sum carries the same factor
        p = tl.exp2(scores - (shift[:, None] - 8.0))
        p_dot = _fp8_operand(p, EMULATE_FP8)
    else:
        p = tl.exp2(scores - shift[:, None])
        p_dot = p.to(v.dtype)
    row_sum = row_sum * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p_dot, v, input_precision=DOT_PRECISION)
    return acc, new_max, row_sum


def _fp8_operand_impl(x, EMULATE: tl.constexpr):
    """``x`` rounded to e4m3 as a tl.dot operand. Triton's interpreter neither rounds nor
    multiplies fp8 correctly, so there (``EMULATE``) the rounding is done on the fp32 bits and the
    product runs in fp16 on the rounded values, which hold them exactly: the same products,
    accumulated in fp32."""
    if EMULATE:
        return _round_e4m3(x.to(tl.float32)).to(tl.float16)
    return x.to(tl.float8e4nv)


_attend_block = _fp8_operand = _round_e4m3 = None  # jitted device functions, bound by jit() with the kernel
_HELPERS = {"_attend_block": _attend_block_impl, "_fp8_operand": _fp8_operand_impl, **QUANT_HELPERS}


def _varlen_attention_kernel(
    out_ptr, q_ptr, k_ptr, v_ptr, cu_seqlens_ptr, out_inv_scale_ptr, num_seqs, qk_scale, head_dim, reach,
    q_stride_t, q_stride_h, k_stride_t, k_stride_h, v_stride_t, v_stride_h, out_stride_t, out_stride_h,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_B: tl.constexpr,
    MASK_D: tl.constexpr, DOT_PRECISION: tl.constexpr, QUANT: tl.constexpr, WINDOW: tl.constexpr,
    FP8: tl.constexpr, EMULATE_FP8: tl.constexpr,
):
    # The query blocks of all sequences are numbered in order (sequence i owns counts[i] of them)
    # and programs take every num_programs-th: the grid follows the tokens, not batch x longest
    # sequence, so a CUDA graph sized for 129 sequences launches no programs for absent ones.
    head = tl.program_id(1)
    b_offs = tl.arange(0, BLOCK_B)
    b_mask = b_offs < num_seqs
    lengths = tl.load(cu_seqlens_ptr + b_offs + 1, mask=b_mask, other=0) - tl.load(
        cu_seqlens_ptr + b_offs, mask=b_mask, other=0)
    counts = (lengths + BLOCK_M - 1) // BLOCK_M
    ends = tl.cumsum(counts, 0)  # one past each sequence's last block
    d_offs = tl.arange(0, BLOCK_D)
    d_mask = d_offs < head_dim
    for item in range(tl.program_id(0), tl.sum(counts, 0), tl.num_programs(0)):
        seq = tl.sum((ends <= item).to(tl.int32), 0)
        m_block = item - tl.sum(tl.where(b_offs < seq, counts, 0), 0)
        start = tl.load(cu_seqlens_ptr + seq).to(tl.int64)
        seq_len = (tl.load(cu_seqlens_ptr + seq + 1) - tl.load(cu_seqlens_ptr + seq)).to(tl.int32)
        m_offs = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
        m_mask = m_offs < seq_len

        q_ptrs = q_ptr + (start + m_offs)[:, None] * q_stride_t + head * q_stride_h + d_offs[None, :]
        q = tl.load(q_ptrs, mask=m_mask[:, None] & d_mask[None, :], other=0.0)
        if FP8:
            q = _fp8_operand(q, EMULATE_FP8)

        # Running max (log2 domain), running sum and unnormalised output of the online softmax.
        row_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        row_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
        if WINDOW:
            # Only the key blocks that meet the band [first query - reach, last query + reach]:
            # a 128-token window visits 3 or 4 blocks of 64 keys whatever the sequence's length.
            lo = tl.maximum(m_block * BLOCK_M - reach, 0)
            lo = lo - lo % BLOCK_N
            hi = tl.minimum(m_block * BLOCK_M + BLOCK_M + reach, seq_len)
            for n0 in range(lo, hi, BLOCK_N):
                acc, row_max, row_sum = _attend_block(
                    q, acc, row_max, row_sum, k_ptr, v_ptr, start, n0, seq_len, head, qk_scale,
                    k_stride_t, k_stride_h, v_stride_t, v_stride_h, d_offs, d_mask, m_offs, reach,
                    BLOCK_N, True, MASK_D, DOT_PRECISION, True, FP8, EMULATE_FP8)
        else:
            whole = seq_len - seq_len % BLOCK_N  # keys in whole blocks: no masks there
            for n0 in range(0, whole, BLOCK_N):
                acc, row_max, row_sum = _attend_block(
                    q, acc, row_max, row_sum, k_ptr, v_ptr, start, n0, seq_len, head, qk_scale,
                    k_stride_t, k_stride_h, v_stride_t, v_stride_h, d_offs, d_mask, m_offs, reach,
                    BLOCK_N, False, MASK_D, DOT_PRECISION, False, FP8, EMULATE_FP8)
            if whole < seq_len:
                acc, row_max, row_sum = _attend_block(
                    q, acc, row_max, row_sum, k_ptr, v_ptr, start, whole, seq_len, head, qk_scale,
                    k_stride_t, k_stride_h, v_stride_t, v_stride_h, d_offs, d_mask, m_offs, reach,
                    BLOCK_N, True, MASK_D, DOT_PRECISION, False, FP8, EMULATE_FP8)

        if WINDOW:  # the rows past a sequence's end may see no key at all: no 0 / 0 for them
            row_sum = tl.where(row_sum == 0.0, 1.0, row_sum)
        out = acc / row_sum[:, None]
        out_ptrs = out_ptr + (start + m_offs)[:, None] * out_stride_t + head * out_stride_h + d_offs[None, :]
        if QUANT == 1:  # the output projection's low-precision input, rounded from fp32 here
            tl.store(out_ptrs, _quantize_e4m3(out, tl.load(out_inv_scale_ptr)), mask=m_mask[:, None] & d_mask[None, :])
        elif QUANT == 2:
            tl.store(out_ptrs, _quantize_int8(out, tl.load(out_inv_scale_ptr)), mask=m_mask[:, None] & d_mask[None, :])
        else:
            tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


def varlen_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                            max_seqlen: int, scale: float | None = None, *,
                            out: torch.Tensor | None = None, config: AttentionConfig | None = None,
                            out_inv_scale: torch.Tensor | None = None, reach: int | None = None,
                            fp8: bool = False) -> torch.Tensor:
    """softmax(q k^T * scale) v within each sequence of a packed batch (no mask across sequences).

    Args:
        q, k, v: (T, heads, head_dim) fp32/fp16/bf16, unit stride along head_dim (views of a fused
            QKV projection are fine); head_dim up to 256, any size (masked to a power of two).
        cu_seqlens: (B+1,) int32 cumulative sequence lengths, on q's device.
        max_seqlen: length of the longest sequence.
        scale: multiplier of q k^T; 1/sqrt(head_dim) when None.
        out: optional (T, heads, head_dim) tensor of q's dtype to write into, or, with
            ``out_inv_scale`` (() fp32), a float8_e4m3fn or int8 one: the result quantised from fp32.
        config: a tiling to use instead of ``attention_config_for``'s (benchmarks).
        reach: sliding-window attention (ModernBERT's local layers): each query attends only to
            the keys of its sequence at most ``reach`` positions away, and key blocks wholly
            outside that band are skipped; None: the whole sequence.
        fp8: both products on e4m3 operands (the kernel takes fp16/bf16; the ref any float; see
            the module docstring). Not with ``reach``.

    Returns:
        (T, heads, head_dim) in q's dtype; softmax and accumulation in fp32 (fp32 inputs use
        full-precision dot products, not TF32).
    """
    total, heads, head_dim = q.shape
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    quant = quant_code(out) if out_inv_scale is not None else 0
    if reach is not None and reach < 0:
        raise ValueError(f"reach must be >= 0, got {reach}")
    if fp8 and reach is not None:
        raise ValueError("fp8 attention runs whole sequences only (reach=None)")
    if not use_triton(q, k, v) or head_dim > 256:
        if fp8:
            result = varlen_attention_fp8_ref(q, k, v, cu_seqlens, max_seqlen, scale)
        else:
            result = (varlen_attention_ref(q, k, v, cu_seqlens, max_seqlen, scale) if reach is None else
                      windowed_attention_ref(q, k, v, cu_seqlens, reach, scale=scale))
        if quant:
            return out.copy_(quantize_ref(result, out_inv_scale, format_of(out.dtype)))
        return result if out is None else out.copy_(result)
    if fp8 and q.dtype == torch.float32:
        raise ValueError("the fp8 attention kernel takes fp16 or bf16 q, k and v")
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out = check_out(out, (total, heads, head_dim), out.dtype if quant else q.dtype, q.device)
    batch = cu_seqlens.numel() - 1
    if total == 0 or batch == 0:
        return out
    block_d = max(next_pow2(head_dim), 32 if fp8 else 16)  # tl.dot's least K: 32 bytes
    cfg = config or default_config(total, heads, head_dim)
    # Enough programs for every query block: full blocks of the tokens, plus at most one partial
    # block per sequence (programs past the last block exit at once; short sequences may loop).
    full = cdiv(total, cfg.block_m)
    grid = (full + min(batch, full), heads)
    jit(_varlen_attention_kernel, helpers=_HELPERS, per_request=("num_seqs", "cu_seqlens_ptr", "out_inv_scale_ptr"))[grid](
        out, q, k, v, cu_seqlens.to(q.device, torch.int32), out_inv_scale if quant else cu_seqlens, batch,
        scale * _LOG2E, head_dim, reach or 0,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1),
        # At least SEQUENCE_SLOTS sequence slots: a width per batch size would compile again for
        # each power of two met (on an H100 a LoadGen Server run stalled on such a compile 30 s in).
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d, BLOCK_B=max(next_pow2(batch), SEQUENCE_SLOTS),
        MASK_D=block_d != head_dim, DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", QUANT=quant,
        WINDOW=reach is not None, FP8=fp8, EMULATE_FP8=fp8 and interpret_requested(),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out
