import math

import pytest
import torch
import torch.nn.functional as F

from bertrt.ops.bias_gelu import bias_gelu, bias_gelu_ref
from ops_testing import DTYPES, assert_like_torch, gen, poisoned, randn


def make_inputs(tokens, width, *, dtype=torch.float32, device="cpu", seed=0):
    g = gen(seed)
    return [randn(tokens, width, generator=g, dtype=dtype, device=device, scale=2.0),
            randn(width, generator=g, dtype=dtype, device=device)]


def torch_math(inputs, dtype):
    x, bias = (t.to(dtype) for t in inputs)
    return F.gelu(x + bias)


def check(inputs, dtype):
    out = poisoned(inputs[0].shape, dtype, inputs[0].device)
    got = bias_gelu(*inputs, out=out)
    assert got is out and got.dtype == dtype
    assert_like_torch(got, torch_math(inputs, dtype), torch_math(inputs, torch.float64), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,width", [(1, 130), (7, 48), (97, 130), (3, 1100)])
def test_kernel_matches_fp64_like_torch(interpret, tokens, width, dtype):
    check(make_inputs(tokens, width, dtype=dtype), dtype)


def test_in_place_on_strided_input(interpret):
    x, bias = make_inputs(9, 130)
    expected = bias_gelu_ref(x, bias)
    wide = torch.zeros(9, 200)
    wide[:, 50:180] = x
    view = wide[:, 50:180]
    assert bias_gelu(view, bias, out=view) is view
    torch.testing.assert_close(view, expected, rtol=1e-5, atol=1e-6)
    assert (wide[:, :50] == 0).all() and (wide[:, 180:] == 0).all()  # nothing outside the view


def test_ref_is_exact_erf_gelu_not_tanh(no_interpret):
    x = torch.tensor([[-3.0, -1.0, 0.0, 0.5, 2.0]])
    bias = torch.tensor([0.0, 0.0, 0.0, 0.5, 0.0])
    s = x + bias
    exact = 0.5 * s * (1 + torch.erf(s / math.sqrt(2)))
    torch.testing.assert_close(bias_gelu(x, bias), exact)
    tanh = F.gelu(s, approximate="tanh")
    assert (bias_gelu(x, bias) - tanh).abs().max() > 1e-4  # the two forms differ visibly here


def test_bert_large_on_gpu(gpu):
    check(make_inputs(384 * 8, 4096, dtype=torch.float16, device="cuda"), torch.float16)
