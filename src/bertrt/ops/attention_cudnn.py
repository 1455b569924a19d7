"""Variable-length attention on packed tokens through cuDNN's fused attention, via PyTorch's public API.

The packed (total_tokens, heads, head_dim) views become nested jagged tensors over ``cu_seqlens``
(no copy: the values stay where the QKV projection wrote them), and ``scaled_dot_product_attention``
runs with only the cuDNN backend enabled, which PyTorch implements for jagged inputs by handing
cuDNN the cumulative lengths. Nothing is computed on padding.

Why: on an H200 (benchmarks/results/session6/call1/explore.json) cuDNN took 203 us for 128 x 384
tokens of BERT-Large attention against 319 for bertrt's Triton kernel and 302 for PyTorch's flash
kernel, and 57 against 140 and 85 at 32 x 384 (padded layout, equal lengths). Builds time this
backend ("cudnn") against the others on ragged batches and record it only where it is faster and
agrees (``build._fastest``). Where cuDNN cannot run (the CPU, fp32, an old PyTorch or cuDNN) it
raises, and the engine never records it; ``varlen_attention_ref`` is the oracle.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bertrt.ops.attention import varlen_attention_ref


def varlen_attention_cudnn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                           max_seqlen: int, scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v within each sequence of a packed batch, by cuDNN.

    Args:
        q, k, v: (T, heads, head_dim) fp16/bf16 CUDA tensors with unit stride along head_dim (views
            of a fused QKV projection are fine).
        cu_seqlens: (B+1,) cumulative sequence lengths on q's device (int32 or int64).
        max_seqlen: length of the longest sequence (an upper bound is fine).
        scale: multiplier of q k^T; 1/sqrt(head_dim) when None.

    Returns:
        (T, heads, head_dim) in q's dtype. Off CUDA or in fp32: ``varlen_attention_ref``.

    Raises:
        RuntimeError: PyTorch or cuDNN here cannot run it (no other backend is allowed to step in).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if not (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)):
        return varlen_attention_ref(q, k, v, cu_seqlens, max_seqlen, scale)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    offsets = cu_seqlens.to(torch.int64)
    nested = [torch.nested.nested_tensor_from_jagged(t, offsets, max_seqlen=max_seqlen).transpose(1, 2)
              for t in (q, k, v)]
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        out = F.scaled_dot_product_attention(*nested, scale=scale)
    return out.transpose(1, 2).values()
