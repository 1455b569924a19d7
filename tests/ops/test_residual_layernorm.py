import pytest
import torch
import torch.nn.functional as F

from bertrt.ops.residual_layernorm import bias_residual_layernorm, bias_residual_layernorm_ref
from ops_testing import DTYPES, assert_like_torch, gen, poisoned, randn

EPS = 1e-12


def make_inputs(tokens, hidden, *, dtype=torch.float32, device="cpu", seed=0):
    g = gen(seed)
    x = randn(tokens, hidden, generator=g, dtype=dtype, device=device)
    bias = randn(hidden, generator=g, dtype=dtype, device=device, scale=0.5)
    residual = randn(tokens, hidden, generator=g, dtype=dtype, device=device, scale=2.0)
    gamma = randn(hidden, generator=g, dtype=dtype, device=device, scale=0.5) + 1
    beta = randn(hidden, generator=g, dtype=dtype, device=device, scale=0.1)
    return [x, bias, residual, gamma, beta]


def torch_math(inputs, dtype):
    """The unfused PyTorch sequence, every step in ``dtype``."""
    x, bias, residual, gamma, beta = (t.to(dtype) for t in inputs)
    s = x + bias + residual
    return F.layer_norm(s, s.shape[-1:], gamma, beta, EPS)


def check(inputs, dtype):
    out = poisoned(inputs[0].shape, dtype, inputs[0].device)
    got = bias_residual_layernorm(*inputs, EPS, out=out)
    assert got is out and got.dtype == dtype
    assert_like_torch(got, torch_math(inputs, dtype), torch_math(inputs, torch.float64), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,hidden", [(1, 48), (7, 100), (97, 96)])
def test_kernel_matches_fp64_like_torch(interpret, tokens, hidden, dtype):
    check(make_inputs(tokens, hidden, dtype=dtype), dtype)


def test_strided_input_fp32_params_and_in_place(interpret):
    # x as a column slice of a wider GEMM output, fp16 activations with fp32 LayerNorm parameters.
    inputs = make_inputs(11, 100, dtype=torch.float16)
    wide = torch.zeros(11, 160, dtype=torch.float16)
    wide[:, 30:130] = inputs[0]
    params = [t.float() for t in inputs[3:]]
    expected = bias_residual_layernorm_ref(inputs[0], inputs[1], inputs[2], *params, EPS)
    residual = inputs[2].clone()
    got = bias_residual_layernorm(wide[:, 30:130], inputs[1], residual, *params, EPS, out=residual)
    assert got is residual
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-3)


def test_ref_is_layernorm_of_sum(no_interpret):
    x, bias, residual, gamma, beta = make_inputs(5, 48)
    s = x + bias + residual
    expected = (s - s.mean(-1, keepdim=True)) / torch.sqrt(s.var(-1, unbiased=False, keepdim=True) + EPS)
    torch.testing.assert_close(bias_residual_layernorm(x, bias, residual, gamma, beta, EPS),
                               expected * gamma + beta)


def test_bert_large_on_gpu(gpu):
    check(make_inputs(384 * 8, 1024, dtype=torch.float16, device="cuda"), torch.float16)
