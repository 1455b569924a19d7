"""The fp8/int8 copies the LayerNorm, embedding and attention kernels write beside their outputs,
each against its plain-PyTorch reference, bit for bit, on shapes that break the tiling."""

from __future__ import annotations

import pytest
import torch
from ops_testing import FORMATS, assert_same_quantised, inv_scale

from bertrt.ops.attention import varlen_attention_ref
from bertrt.ops.attention_triton import varlen_attention_triton
from bertrt.ops.embed_layernorm import embed_layernorm, embed_layernorm_ref
from bertrt.ops.residual_layernorm import bias_residual_layernorm, bias_residual_layernorm_ref
from bertrt.quant.numerics import quantize_ref

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("tokens, hidden", [(1, 32), (37, 72), (130, 384)])
def test_residual_layernorm_writes_its_quantised_copy(where, fmt, tokens, hidden):
    g = torch.Generator().manual_seed(tokens)
    x, r = (torch.randn(tokens, hidden, generator=g).to(where) for _ in range(2))
    bias, beta = (torch.randn(hidden, generator=g).to(where) for _ in range(2))
    gamma = (torch.rand(hidden, generator=g) + 0.5).to(where)
    inv = inv_scale(4.0, fmt, where)  # clips the largest values: saturation is exercised too
    got, want = (torch.empty(tokens, hidden, dtype=FORMATS[fmt], device=where) for _ in range(2))
    y = bias_residual_layernorm(x, bias, r, gamma, beta, 1e-12, quant_out=got, quant_inv_scale=inv)
    y_ref = bias_residual_layernorm_ref(x, bias, r, gamma, beta, 1e-12, quant_out=want, quant_inv_scale=inv)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    assert_same_quantised(got.cpu(), want.cpu())
    if tokens > 1:  # saturated somewhere
        assert float(got.float().abs().max()) == {"fp8": 448.0, "int8": 127.0}[fmt]


@pytest.mark.parametrize("fmt", FORMATS)
def test_embedding_layernorm_writes_its_quantised_copy(where, fmt):
    g = torch.Generator().manual_seed(1)
    tokens, hidden = 45, 72
    ids, types = torch.randint(0, 50, (tokens,), generator=g), torch.randint(0, 2, (tokens,), generator=g)
    pos = torch.arange(tokens)
    word, position, token_type = (torch.randn(n, hidden, generator=g) for n in (50, 64, 2))
    gamma, beta = torch.rand(hidden, generator=g) + 0.5, torch.randn(hidden, generator=g)
    args = [t.to(where) for t in (ids, types, pos, word, position, token_type, gamma, beta)]
    inv = inv_scale(3.0, fmt, where)
    got, want = (torch.empty(tokens, hidden, dtype=FORMATS[fmt], device=where) for _ in range(2))
    embed_layernorm(*args, 1e-12, quant_out=got, quant_inv_scale=inv)
    embed_layernorm_ref(*args, 1e-12, quant_out=want, quant_inv_scale=inv)
    assert_same_quantised(got.cpu(), want.cpu())


@pytest.mark.parametrize("fmt", FORMATS)
def test_attention_writes_a_quantised_output(where, fmt):
    g = torch.Generator().manual_seed(2)
    lengths = [1, 97, 30]
    total = sum(lengths)
    q, k, v = (torch.randn(total, 2, 16, generator=g).to(where) for _ in range(3))
    cu = torch.tensor([0, 1, 98, 128], dtype=torch.int32, device=where)
    inv = inv_scale(1.5, fmt, where)
    got = torch.empty(total, 2, 16, dtype=FORMATS[fmt], device=where)
    varlen_attention_triton(q, k, v, cu, max(lengths), out=got, out_inv_scale=inv)
    want = quantize_ref(varlen_attention_ref(q.cpu(), k.cpu(), v.cpu(), cu.cpu(), max(lengths)), inv.cpu(), fmt)
    if where == "cpu":
        assert_same_quantised(got, want)
    else:  # compiled tl.dot sums in another order: neighbours at rounding boundaries may differ by a step
        assert float((got.float().cpu() != want.float()).float().mean()) < 0.01


def test_quantised_outputs_refuse_half_a_request():
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="go together"):
        bias_residual_layernorm(x, x[0], x, x[0], x[0], 1e-12, quant_out=torch.empty(4, 8, dtype=torch.int8))
