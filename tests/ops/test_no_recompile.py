"""A new batch size must not compile a kernel again (no recompilation on new request shapes).

Large batches run outside CUDA graphs, so each token count reaches the kernels as a new integer
argument; Triton would compile again for values that are 1 or multiples of 16 unless the kernel
marks them ``per_request`` (see ``bertrt.ops._triton.jit``)."""

import itertools

import pytest
import torch

from bertrt.ops.bias_gelu import bias_gelu
from bertrt.ops.attention_triton import varlen_attention_triton
from bertrt.ops.embed_layernorm import embed_layernorm
from bertrt.ops.linear_gelu import linear_bias_gelu
from bertrt.ops.qa_head import qa_head
from bertrt.ops.residual_layernorm import bias_residual_layernorm

HIDDEN, INTER = 256, 1024


def _ops(tokens: int):
    """Each op once at ``tokens`` tokens, BERT-like widths, fp16 on the GPU."""
    g = torch.Generator(device="cuda").manual_seed(tokens)

    def rand(*shape):
        return torch.randn(*shape, generator=g, device="cuda").half()

    x = rand(tokens, HIDDEN)
    ids = torch.randint(0, 100, (tokens,), device="cuda", generator=g)
    zeros = torch.zeros(tokens, dtype=torch.long, device="cuda")
    linear_bias_gelu(x, rand(INTER, HIDDEN) * 0.05, rand(INTER))
    bias_gelu(rand(tokens, INTER), rand(INTER))
    bias_residual_layernorm(x, rand(HIDDEN), rand(tokens, HIDDEN), rand(HIDDEN), rand(HIDDEN), 1e-12)
    embed_layernorm(ids, zeros, zeros, rand(100, HIDDEN), rand(8, HIDDEN), rand(2, HIDDEN),
                    rand(HIDDEN), rand(HIDDEN), 1e-12)
    qa_head(x, rand(2, HIDDEN), rand(2))
    # Attention on as many sequences as the count allows, from 3 to 100 (the tiling depends on the
    # token count only, and all these counts share one).
    sequences = 3 + tokens % 98
    lengths = [tokens // sequences] * (sequences - 1) + [tokens - (tokens // sequences) * (sequences - 1)]
    # cu_seqlens at an offset that follows the count, as in a staging buffer after the batch's ids
    # (16-byte aligned or not).
    staged = torch.tensor([0] * (tokens % 4) + [0, *itertools.accumulate(lengths)], dtype=torch.int32, device="cuda")
    cu = staged[tokens % 4:]
    q, k, v = rand(tokens, 3, 16, 64).unbind(1)
    varlen_attention_triton(q, k, v, cu, max(lengths))
    torch.cuda.synchronize()


def test_token_counts_reuse_compiled_kernels(gpu, monkeypatch):
    knobs = pytest.importorskip("triton.knobs")
    if not hasattr(knobs.runtime, "jit_cache_hook"):
        pytest.skip("this Triton has no jit_cache_hook to count compiles with")
    _ops(3000)  # every kernel compiled once for large batches (tilings are chosen from 2,049 tokens on)
    compiles = []
    monkeypatch.setattr(knobs.runtime, "jit_cache_hook", lambda *a, **kw: compiles.append(kw.get("repr")))
    for tokens in (3001, 3008, 3072, 4096, 2049):
        _ops(tokens)
    assert compiles == []
