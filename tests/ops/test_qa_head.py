import pytest
import torch
import torch.nn.functional as F

from bertrt.ops.qa_head import qa_head, qa_head_ref
from ops_testing import DTYPES, assert_like_torch, gen, poisoned, randn


def make_inputs(tokens, hidden, *, dtype=torch.float32, device="cpu", seed=0):
    g = gen(seed)
    return [randn(tokens, hidden, generator=g, dtype=dtype, device=device),
            randn(2, hidden, generator=g, dtype=dtype, device=device, scale=0.05),
            randn(2, generator=g, dtype=dtype, device=device)]


def torch_math(inputs, dtype):
    return F.linear(*(t.to(dtype) for t in inputs)).float()


def check(inputs, dtype):
    out = poisoned((inputs[0].shape[0], 2), torch.float32, inputs[0].device)
    got = qa_head(*inputs, out=out)
    assert got is out
    assert_like_torch(got, torch_math(inputs, dtype), torch_math(inputs, torch.float64), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,hidden", [(1, 48), (7, 100), (97, 300)])
def test_kernel_matches_fp64_like_torch(interpret, tokens, hidden, dtype):
    check(make_inputs(tokens, hidden, dtype=dtype), dtype)


def test_logits_are_fp32_and_columns_are_start_end(interpret):
    hidden = torch.randn(5, 48, generator=gen()).half()
    weight = torch.zeros(2, 48, dtype=torch.float16)
    weight[0, 0], weight[1, 1] = 1, 1
    bias = torch.tensor([10.0, -10.0], dtype=torch.float16)
    logits = qa_head(hidden, weight, bias)
    assert logits.dtype == torch.float32 and logits.shape == (5, 2)
    torch.testing.assert_close(logits, torch.stack([hidden[:, 0].float() + 10, hidden[:, 1].float() - 10], 1))


def test_rejects_other_head_shapes(no_interpret):
    with pytest.raises(ValueError, match=r"\(2, H\)"):
        qa_head(torch.randn(3, 8), torch.randn(3, 8), torch.randn(3))


def test_ref_on_cpu(no_interpret):
    inputs = make_inputs(4, 48)
    torch.testing.assert_close(qa_head(*inputs), inputs[0] @ inputs[1].T + inputs[2])
    assert qa_head_ref(*(t.half() for t in inputs)).dtype == torch.float32


def test_bert_large_on_gpu(gpu):
    check(make_inputs(384 * 8, 1024, dtype=torch.float16, device="cuda"), torch.float16)
