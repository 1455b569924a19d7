"""linear_fp8 (cuBLASLt on e4m3 operands) against its reference."""

from __future__ import annotations

import pytest
import torch
from ops_testing import assert_same_quantised, inv_scale

from bertrt.ops.linear_fp8 import linear_fp8, linear_fp8_ref
from bertrt.quant.numerics import format_of, quantize_ref, quantize_weight, scale_for


@pytest.mark.parametrize("gelu, out", [(False, torch.float16), (True, torch.float16), (True, torch.float8_e4m3fn),
                                       (False, torch.float32)])
def test_linear_fp8_ref_is_the_dequantised_product(gelu, out):
    g = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(33, 48, generator=g), torch.randn(80, 48, generator=g) * 0.1, torch.randn(80, generator=g)
    x_scale, w_scale = scale_for(x.abs().max(), "fp8"), scale_for(w.abs().max(), "fp8")
    x_q = quantize_ref(x, 1 / x_scale, "fp8")
    w_q, w_scale = quantize_weight(w, "fp8", "per-tensor")
    out_inv = inv_scale(2.0, "fp8") if out == torch.float8_e4m3fn else None
    got = linear_fp8(x_q, w_q, x_scale, w_scale, b.half(), gelu=gelu, out_dtype=out, out_inv_scale=out_inv)
    y = x_q.float() * x_scale @ (w_q.float() * w_scale).T + b.half().float()
    y = torch.nn.functional.gelu(y, approximate="tanh") if gelu else y
    if out == torch.float8_e4m3fn:
        assert_same_quantised(got, quantize_ref(y, out_inv, "fp8"))
    else:
        torch.testing.assert_close(got.float(), y.to(out).float(), atol=2e-3, rtol=2e-3)
    # and the rounding really happened: the result differs from the unquantised product
    assert float((torch.nn.functional.linear(x, w, b) - y).abs().max()) > 1e-3


@pytest.mark.parametrize("tokens", [1, 97, 384, 4096])
@pytest.mark.parametrize("gelu, out", [
    (False, torch.float16), (True, torch.float16),
    # cuBLASLt's GELU epilogue writing e4m3 lands up to 2.7 e4m3 steps from exact rounding on an
    # H200 (and costs the default model 0.19 held-out F1: results/h200/lowprec_accuracy.json).
    pytest.param(True, torch.float8_e4m3fn, marks=pytest.mark.xfail(
        strict=True, reason="cuBLASLt's e4m3 GELU epilogue does not round as the reference does"))])
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
    out_inv = inv_scale(3.0, "fp8", "cuda") if out == torch.float8_e4m3fn else None
    got = linear_fp8(x_q, w_q, x_scale, w_scale.cuda(), b, gelu=gelu, out_dtype=out, out_inv_scale=out_inv)
    want = linear_fp8_ref(x_q, w_q, x_scale, w_scale.cuda(), b, gelu=gelu, out_dtype=out, out_inv_scale=out_inv)
    if out == torch.float8_e4m3fn:  # one e4m3 step apart at most, where fp32 sums round differently
        steps = (got.float() - want.float()).abs() / want.float().abs().clamp_min(2 ** -6) * 8
        assert float(steps.max()) <= 1.01 and float((got.float() != want.float()).float().mean()) < 0.02
    else:
        torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=1e-2)
    assert format_of(torch.float8_e4m3fn) == "fp8"
