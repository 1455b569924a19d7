"""Variable-length self-attention on packed tokens.

``varlen_attention(q, k, v, cu_seqlens, max_seqlen)`` with q/k/v: (total_tokens, heads, head_dim);
returns (total_tokens, heads, head_dim). On CUDA it uses PyTorch's fused varlen flash kernel when
present; ``varlen_attention_ref`` is the plain-PyTorch oracle and the CPU path, and
``windowed_attention_ref`` that of sliding-window attention (ModernBERT's local layers).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bertrt.packed import pad_packed


def varlen_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                         max_seqlen: int, scale: float | None = None) -> torch.Tensor:
    """Pad each sequence, run masked softmax(QK^T)V, unpad. Differentiable; any device and dtype."""
    total, heads, dim = q.shape
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    keep = torch.arange(max_seqlen, device=q.device)[None, :] < lengths[:, None]  # (B, S)
    qp, kp, vp = (pad_packed(t, cu_seqlens, max_seqlen).transpose(1, 2) for t in (q, k, v))  # (B, h, S, d)
    bias = torch.zeros(keep.shape, dtype=q.dtype, device=q.device).masked_fill(~keep, float("-inf"))
    out = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=bias[:, None, None, :], scale=scale)
    return out.transpose(1, 2)[keep]


def varlen_attention_fp8_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                             max_seqlen: int, scale: float | None = None) -> torch.Tensor:
    """``varlen_attention_ref`` with both products on e4m3 operands, as the fp8 Triton kernel runs
    them: Q, K and V rounded to e4m3, the probabilities (relative to each row's maximum) times 256
    rounded to e4m3 for the product with V, normalised by the unrounded row sum; fp32 math."""
    from bertrt.quant.numerics import quantize_ref

    total, heads, dim = q.shape
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    one = torch.ones((), device=q.device)

    def e4m3(t: torch.Tensor, inv: torch.Tensor = one) -> torch.Tensor:
        return quantize_ref(t.float(), inv, "fp8").float()

    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    keep = torch.arange(max_seqlen, device=q.device)[None, :] < lengths[:, None]  # (B, S)
    qp, kp, vp = (e4m3(pad_packed(t, cu_seqlens, max_seqlen)).transpose(1, 2) for t in (q, k, v))
    scores = (qp @ kp.transpose(-1, -2)) * scale  # (B, h, S, S)
    scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    p = torch.exp(scores - scores.amax(-1, keepdim=True))
    out = (e4m3(p * 256.0) @ vp) / (256.0 * p.sum(-1, keepdim=True))
    return out.transpose(1, 2)[keep].to(q.dtype)


def windowed_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                           reach: int, block: int = 256, *, scale: float | None = None) -> torch.Tensor:
    """Bidirectional sliding-window attention over packed tokens: each token attends to the tokens of
    its own sequence at most ``reach`` positions away. q, k, v: (total_tokens, heads, head_dim);
    cu_seqlens: (B+1,) int32. Queries go in blocks of ``block``, each against its band of keys, so
    memory grows with the sequence length, not its square. Math in fp32, result in q's dtype."""
    out = torch.empty_like(q)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        for a in range(start, end, block):
            b = min(a + block, end)
            lo, hi = max(start, a - reach), min(end, b + reach)
            qi = torch.arange(a, b, device=q.device)[:, None]
            kj = torch.arange(lo, hi, device=q.device)[None, :]
            mask = (qi - kj).abs() <= reach
            scores = torch.einsum("qhd,khd->hqk", q[a:b].float(), k[lo:hi].float()) * scale
            probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
            out[a:b] = torch.einsum("hqk,khd->qhd", probs, v[lo:hi].float()).to(q.dtype)
    return out


def _fused_varlen():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     max_seqlen: int, scale: float | None = None) -> torch.Tensor:
    """Fused flash attention over cu_seqlens on CUDA (fp16/bf16), the reference elsewhere."""
    fused = _fused_varlen()
    if fused is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        return fused(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, scale=scale)
    return varlen_attention_ref(q, k, v, cu_seqlens, max_seqlen, scale)
