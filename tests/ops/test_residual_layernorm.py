import pytest
import torch
import torch.nn.functional as F

from bertrt.ops.residual_layernorm import (LayerNormConfig, bias_residual_layernorm, bias_residual_layernorm_ref,
                                           default_config)
from ops_testing import ATOL, DTYPES, assert_like_torch, gen, poisoned, randn

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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,hidden", [(1, 48), (7, 100), (97, 96)])
def test_residual_already_in_x(interpret, tokens, hidden, dtype):
    # A GEMM that accumulated into the residual: LayerNorm(x + bias), written over x.
    x, bias, residual, gamma, beta = make_inputs(tokens, hidden, dtype=dtype)
    summed = (x.double() + residual.double()).to(dtype)
    zero = torch.zeros_like(residual)
    expected = torch_math([summed, bias, zero, gamma, beta], dtype)
    reference = torch_math([summed, bias, zero, gamma, beta], torch.float64)
    target = summed.clone()
    got = bias_residual_layernorm(target, bias, None, gamma, beta, EPS, out=target)
    assert got is target
    assert_like_torch(got, expected, reference, dtype)
    torch.testing.assert_close(bias_residual_layernorm_ref(summed, bias, None, gamma, beta, EPS).float(),
                               reference.to(dtype).float(), atol=ATOL[dtype], rtol=0)
    with pytest.raises(ValueError, match="without a residual"):
        bias_residual_layernorm(torch.stack([x, x]), bias, None, gamma, beta, EPS)


def test_ref_is_layernorm_of_sum(no_interpret):
    x, bias, residual, gamma, beta = make_inputs(5, 48)
    s = x + bias + residual
    expected = (s - s.mean(-1, keepdim=True)) / torch.sqrt(s.var(-1, unbiased=False, keepdim=True) + EPS)
    torch.testing.assert_close(bias_residual_layernorm(x, bias, residual, gamma, beta, EPS),
                               expected * gamma + beta)


def split(x, splits, seed=1):
    """fp32 partials (splits, T, H) that sum to ``x`` (random shares, not equal ones)."""
    shares = torch.randn((splits, *x.shape), generator=gen(seed)).to(x.device)
    shares[-1] = x.float() - shares[:-1].sum(0)
    return shares


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("splits", [1, 2, 3])
@pytest.mark.parametrize("tokens,hidden", [(1, 48), (7, 100), (97, 96)])
def test_partials_are_summed_in_the_kernel(interpret, tokens, hidden, splits, dtype):
    inputs = make_inputs(tokens, hidden, dtype=dtype)  # the 2-D test's inputs, x cut into partials
    partials = split(inputs[0], splits, seed=splits)
    out = poisoned((tokens, hidden), dtype)
    got = bias_residual_layernorm(partials, *inputs[1:], EPS, out=out)
    assert got is out and got.dtype == dtype  # residual's dtype: the partials are fp32
    # Up to one rounding step of the output dtype apart from the ref (summation order differs).
    torch.testing.assert_close(got, bias_residual_layernorm_ref(partials, *inputs[1:], EPS),
                               rtol=2 * torch.finfo(dtype).eps, atol=ATOL[dtype])
    assert_like_torch(got, torch_math(inputs, dtype), torch_math(inputs, torch.float64), dtype)


def test_partials_strided_and_in_place(interpret):
    # Partials as a slice of a larger buffer (split and row strides both non-trivial), written over residual.
    inputs = make_inputs(11, 100, dtype=torch.float16)
    big = torch.zeros(5, 13, 160)
    big[1:4, :11, 30:130] = split(inputs[0], 3)
    expected = bias_residual_layernorm_ref(big[1:4, :11, 30:130], *inputs[1:], EPS)
    residual = inputs[2].clone()
    got = bias_residual_layernorm(big[1:4, :11, 30:130], inputs[1], residual, *inputs[3:], EPS, out=residual)
    assert got is residual
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-3)


def test_ref_sums_the_partials(no_interpret):
    x, bias, residual, gamma, beta = make_inputs(5, 48, dtype=torch.float16)
    got = bias_residual_layernorm(split(x, 3), bias, residual, gamma, beta, EPS)
    assert got.dtype == torch.float16
    torch.testing.assert_close(got, bias_residual_layernorm(x, bias, residual, gamma, beta, EPS), rtol=0, atol=2e-3)


# Tilings beside the default: one row per program on one warp, more rows than 7 or 97 tokens fill
# evenly, and rows spread over fewer warps than the default gives them.
TILINGS = [LayerNormConfig(1, 1), LayerNormConfig(4, 4), LayerNormConfig(8, 2), LayerNormConfig(16, 8)]


@pytest.mark.parametrize("config", TILINGS, ids=lambda c: f"{c.block_t}x{c.num_warps}w")
@pytest.mark.parametrize("tokens,hidden", [(1, 48), (7, 100), (97, 96)])
def test_every_tiling_matches_the_ref(interpret, tokens, hidden, config):
    # Token counts that leave every BLOCK_T a partial last block, widths that are no power of two;
    # with a residual, with it already in x (written over x), and as split-K partials.
    x, bias, residual, gamma, beta = make_inputs(tokens, hidden, dtype=torch.float16)
    summed = (x.float() + residual.float()).half()
    for args in ((x, bias, residual), (summed.clone(), bias, None), (split(x, 3), bias, residual)):
        expected = bias_residual_layernorm_ref(*args, gamma, beta, EPS)
        out = args[0] if args[2] is None else poisoned((tokens, hidden), torch.float16)
        got = bias_residual_layernorm(*args, gamma, beta, EPS, out=out, config=config)
        assert got is out
        torch.testing.assert_close(got, expected, rtol=2 * torch.finfo(torch.float16).eps, atol=ATOL[torch.float16])


def test_default_tiling_and_bad_tilings(no_interpret):
    assert default_config(768) == LayerNormConfig(2, 4)  # BERT-Base: 2 rows of 1,024 on 4 warps
    assert default_config(1024) == LayerNormConfig(2, 4)
    assert default_config(96) == LayerNormConfig(4, 1)
    assert default_config(4096) == LayerNormConfig(1, 8)
    inputs = make_inputs(5, 48)
    for bad in (LayerNormConfig(3, 4), LayerNormConfig(2, 0), LayerNormConfig(0, 4)):
        with pytest.raises(ValueError, match="powers of two"):
            bias_residual_layernorm(*inputs, EPS, config=bad)


def test_rejects_mismatched_shapes(no_interpret):
    x, bias, residual, gamma, beta = make_inputs(5, 48)
    for bad in (x[:4], x.unsqueeze(0)[:0], x[None, None]):
        with pytest.raises(ValueError, match="want x"):
            bias_residual_layernorm(bad, bias, residual, gamma, beta, EPS)


def test_bert_large_on_gpu(gpu):
    check(make_inputs(384 * 8, 1024, dtype=torch.float16, device="cuda"), torch.float16)


@pytest.mark.parametrize("splits", [2, 4])
def test_bert_large_partials_on_gpu(gpu, splits):
    inputs = make_inputs(384 * 8, 1024, dtype=torch.float16, device="cuda")
    got = bias_residual_layernorm(split(inputs[0], splits), *inputs[1:], EPS)
    assert got.dtype == torch.float16
    assert_like_torch(got, torch_math(inputs, torch.float16), torch_math(inputs, torch.float64), torch.float16)
