"""The fp8/int8 copies written by the LayerNorm, embedding and attention kernels, and linear_fp8:
each against its plain-PyTorch reference, bit for bit, on shapes that break the tiling."""

from __future__ import annotations

import pytest
import torch

from bertrt.ops.attention import varlen_attention_ref
from bertrt.ops.attention_triton import varlen_attention_triton
from bertrt.ops.embed_layernorm import embed_layernorm, embed_layernorm_ref
from bertrt.ops.linear_fp8 import linear_fp8, linear_fp8_ref
from bertrt.ops.residual_layernorm import bias_residual_layernorm, bias_residual_layernorm_ref
from bertrt.quant.numerics import format_of, quantize_ref, quantize_weight, scale_for

FORMATS = {"fp8": torch.float8_e4m3fn, "int8": torch.int8}


def _inv(amax: float, fmt: str, device="cpu") -> torch.Tensor:
    return (1.0 / scale_for(amax, fmt)).to(device)


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype
    mismatched = int((a.float() != b.float()).sum())
    assert mismatched == 0, f"{mismatched} of {a.numel()} quantised values differ"


@pytest.fixture(params=["interpret", "gpu"])
def where(request):
    request.getfixturevalue(request.param)
    return "cuda" if request.param == "gpu" else "cpu"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("tokens, hidden", [(1, 32), (37, 72), (130, 384)])
def test_residual_layernorm_writes_its_quantised_copy(where, fmt, tokens, hidden):
    g = torch.Generator().manual_seed(tokens)
    x, r = (torch.randn(tokens, hidden, generator=g).to(where) for _ in range(2))
    bias, beta = (torch.randn(hidden, generator=g).to(where) for _ in range(2))
    gamma = (torch.rand(hidden, generator=g) + 0.5).to(where)
    inv = _inv(4.0, fmt, where)  # clips the largest values: saturation is exercised too
    got, want = (torch.empty(tokens, hidden, dtype=FORMATS[fmt], device=where) for _ in range(2))
    y = bias_residual_layernorm(x, bias, r, gamma, beta, 1e-12, quant_out=got, quant_inv_scale=inv)
    y_ref = bias_residual_layernorm_ref(x, bias, r, gamma, beta, 1e-12, quant_out=want, quant_inv_scale=inv)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    _same(got.cpu(), want.cpu())
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
    inv = _inv(3.0, fmt, where)
    got, want = (torch.empty(tokens, hidden, dtype=FORMATS[fmt], device=where) for _ in range(2))
    embed_layernorm(*args, 1e-12, quant_out=got, quant_inv_scale=inv)
    embed_layernorm_ref(*args, 1e-12, quant_out=want, quant_inv_scale=inv)
    _same(got.cpu(), want.cpu())


@pytest.mark.parametrize("fmt", FORMATS)
def test_attention_writes_a_quantised_output(where, fmt):
    g = torch.Generator().manual_seed(2)
    lengths = [1, 97, 30]
    total = sum(lengths)
    q, k, v = (torch.randn(total, 2, 16, generator=g).to(where) for _ in range(3))
    cu = torch.tensor([0, 1, 98, 128], dtype=torch.int32, device=where)
    inv = _inv(1.5, fmt, where)
    got = torch.empty(total, 2, 16, dtype=FORMATS[fmt], device=where)
    varlen_attention_triton(q, k, v, cu, max(lengths), out=got, out_inv_scale=inv)
    want = quantize_ref(varlen_attention_ref(q.cpu(), k.cpu(), v.cpu(), cu.cpu(), max(lengths)), inv.cpu(), fmt)
    if where == "cpu":
        _same(got, want)
    else:  # compiled tl.dot sums in another order: neighbours at rounding boundaries may differ by a step
        assert float((got.float().cpu() != want.float()).float().mean()) < 0.01


def test_quantised_outputs_refuse_half_a_request():
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="go together"):
        bias_residual_layernorm(x, x[0], x, x[0], x[0], 1e-12, quant_out=torch.empty(4, 8, dtype=torch.int8))


@pytest.mark.parametrize("gelu, out", [(False, torch.float16), (True, torch.float16), (True, torch.float8_e4m3fn),
                                       (False, torch.float32)])
def test_linear_fp8_ref_is_the_dequantised_product(gelu, out):
    g = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(33, 48, generator=g), torch.randn(80, 48, generator=g) * 0.1, torch.randn(80, generator=g)
    x_scale, w_scale = scale_for(x.abs().max(), "fp8"), scale_for(w.abs().max(), "fp8")
    x_q = quantize_ref(x, 1 / x_scale, "fp8")
    w_q, w_scale = quantize_weight(w, "fp8", "per-tensor")
    out_inv = _inv(2.0, "fp8") if out == torch.float8_e4m3fn else None
    got = linear_fp8(x_q, w_q, x_scale, w_scale, b.half(), gelu=gelu, out_dtype=out, out_inv_scale=out_inv)
    y = x_q.float() * x_scale @ (w_q.float() * w_scale).T + b.half().float()
    y = torch.nn.functional.gelu(y, approximate="tanh") if gelu else y
    if out == torch.float8_e4m3fn:
        _same(got, quantize_ref(y, out_inv, "fp8"))
    else:
        torch.testing.assert_close(got.float(), y.to(out).float(), atol=2e-3, rtol=2e-3)
    # and the rounding really happened: the result differs from the unquantised product
    assert float((torch.nn.functional.linear(x, w, b) - y).abs().max()) > 1e-3


@pytest.mark.parametrize("tokens", [1, 97, 384, 4096])
@pytest.mark.parametrize("gelu, out", [(False, torch.float16), (True, torch.float8_e4m3fn), (True, torch.float16)])
def test_linear_fp8_on_gpu_matches_its_ref(gpu, tokens, gelu, out):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs compute capability 8.9")
    g = torch.Generator(device="cuda").manual_seed(tokens)
    x = torch.randn(tokens, 1024, device="cuda", generator=g)
    w = torch.randn(4096, 1024, device="cuda", generator=g) * 0.03
    b = torch.randn(4096, device="cuda", generator=g).half()
    x_scale = scale_for(x.abs().max(), "fp8").cuda()
    x_q = quantize_ref(x, 1 / x_scale, "fp8")
    w_q, w_scale = quantize_weight(w, "fp8", "per-tensor")
    out_inv = _inv(3.0, "fp8", "cuda") if out == torch.float8_e4m3fn else None
    got = linear_fp8(x_q, w_q, x_scale, w_scale.cuda(), b, gelu=gelu, out_dtype=out, out_inv_scale=out_inv)
    want = linear_fp8_ref(x_q, w_q, x_scale, w_scale.cuda(), b, gelu=gelu, out_dtype=out, out_inv_scale=out_inv)
    if out == torch.float8_e4m3fn:  # one e4m3 step apart at most, where fp32 sums round differently
        steps = (got.float() - want.float()).abs() / want.float().abs().clamp_min(2 ** -6) * 8
        assert float(steps.max()) <= 1.01 and float((got.float() != want.float()).float().mean()) < 0.02
    else:
        torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=1e-2)
    assert format_of(torch.float8_e4m3fn) == "fp8"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", [(1, 7), (97, 300), (3, 2049)])
def test_quantize_pass_matches_its_ref(where, fmt, shape):
    from bertrt.ops.quantize import quantize

    x = (torch.randn(shape, generator=torch.Generator().manual_seed(5)) * 3).to(where)
    inv = _inv(4.0, fmt, where)
    _same(quantize(x, inv, fmt).cpu(), quantize_ref(x.cpu(), inv.cpu(), fmt))
