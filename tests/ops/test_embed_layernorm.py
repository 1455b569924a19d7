import pytest
import torch
import torch.nn.functional as F

from bertrt.ops.embed_layernorm import embed_layernorm, embed_layernorm_ref
from ops_testing import DTYPES, assert_like_torch, gen, poisoned, randn

EPS = 1e-12  # BERT's


def make_inputs(tokens, hidden, *, vocab=50, positions=40, dtype=torch.float32, device="cpu", seed=0):
    g = gen(seed)
    ids = torch.randint(0, vocab, (tokens,), generator=g)
    types = torch.randint(0, 2, (tokens,), generator=g)
    pos = torch.randint(0, positions, (tokens,), generator=g)
    tables = [randn(n, hidden, generator=g, dtype=dtype, device=device) for n in (vocab, positions, 2)]
    gamma = randn(hidden, generator=g, device=device) * 0.5 + 1
    beta = randn(hidden, generator=g, device=device) * 0.1
    return [t.to(device) for t in (ids, types, pos)] + tables + [gamma, beta]


def torch_math(inputs, dtype):
    """The unfused PyTorch sequence, every step in ``dtype``."""
    ids, types, pos, word, position, token_type, gamma, beta = inputs
    x = word.to(dtype)[ids] + position.to(dtype)[pos] + token_type.to(dtype)[types]
    return F.layer_norm(x, x.shape[-1:], gamma.to(dtype), beta.to(dtype), EPS)


def check(inputs, dtype):
    tokens, hidden = inputs[0].numel(), inputs[3].shape[1]
    out = poisoned((tokens, hidden), dtype, inputs[3].device)
    got = embed_layernorm(*inputs, EPS, out=out)
    assert got is out and got.dtype == dtype
    assert_like_torch(got, torch_math(inputs, dtype), torch_math(inputs, torch.float64), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,hidden", [(1, 48), (7, 100), (97, 96)])
def test_kernel_matches_fp64_like_torch(interpret, tokens, hidden, dtype):
    check(make_inputs(tokens, hidden, dtype=dtype), dtype)


def test_kernel_equals_ref_in_fp32(interpret):
    inputs = make_inputs(13, 100)
    torch.testing.assert_close(embed_layernorm(*inputs, EPS), embed_layernorm_ref(*inputs, EPS),
                               rtol=1e-5, atol=1e-5)


def test_int32_ids_and_strided_tables(interpret):
    inputs = make_inputs(9, 48)
    wide = torch.zeros(50, 64)
    wide[:, 8:56] = inputs[3]
    strided = [t.int() for t in inputs[:3]] + [wide[:, 8:56]] + inputs[4:]
    torch.testing.assert_close(embed_layernorm(*strided, EPS), embed_layernorm_ref(*inputs, EPS),
                               rtol=1e-5, atol=1e-5)


def test_ref_is_layernorm_of_summed_rows(no_interpret):
    inputs = make_inputs(5, 48)
    ids, types, pos, word, position, token_type, gamma, beta = inputs
    x = word[ids] + position[pos] + token_type[types]
    expected = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + EPS)
    torch.testing.assert_close(embed_layernorm_ref(*inputs, EPS), expected * gamma + beta)
    # On CPU without the interpreter the public op is the ref.
    torch.testing.assert_close(embed_layernorm(*inputs, EPS), expected * gamma + beta)


def test_bert_large_on_gpu(gpu):
    check(make_inputs(384 * 8, 1024, vocab=30522, positions=512, dtype=torch.float16, device="cuda"),
          torch.float16)
