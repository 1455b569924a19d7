import pytest
import torch
import torch.nn.functional as F

from bertrt.ops.geglu import GATED_ACTIVATIONS, gated_act, gated_act_ref
from ops_testing import DTYPES, assert_like_torch, gen, poisoned, randn

TORCH_ACTS = {"gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu, "silu": F.silu}


def torch_math(x, act, dtype):
    value, gate = x.to(dtype).chunk(2, dim=-1)
    return TORCH_ACTS[act](value) * gate


def check(x, act, dtype):
    out = poisoned((x.shape[0], x.shape[1] // 2), dtype)
    got = gated_act(x.to(dtype), act, out=out)
    assert got is out and got.dtype == dtype
    assert_like_torch(got, torch_math(x, act, dtype), torch_math(x, act, torch.float64), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,width", [(1, 37), (7, 48), (97, 130), (3, 1100)])
def test_kernel_matches_fp64_like_torch(interpret, tokens, width, dtype):
    # Widths 37, 130 and 1100 cut the column blocks unevenly (1100 spans two programs).
    check(randn(tokens, 2 * width, generator=gen(), scale=2.0), "gelu", dtype)


@pytest.mark.parametrize("act", sorted(GATED_ACTIVATIONS))
def test_every_activation(interpret, act):
    x = randn(13, 2 * 37, generator=gen(1), scale=3.0)
    x[0, :5] = torch.tensor([-30.0, -9.0, 0.0, 9.0, 30.0])  # both saturated ends of tanh and erf
    check(x, act, torch.float32)


def test_input_is_value_then_gate(no_interpret):
    # ModernBERT's Wi: the first half is the activation's input, the second the gate.
    x = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
    torch.testing.assert_close(gated_act(x), F.gelu(torch.tensor([[1.0, -2.0]])) * torch.tensor([[3.0, 0.5]]))
    torch.testing.assert_close(gated_act_ref(x, "relu"), torch.tensor([[3.0, 0.0]]))


def test_strided_input(interpret):
    x = randn(9, 2 * 40, generator=gen(2))
    wide = torch.zeros(9, 200)
    wide[:, 10:90] = x
    torch.testing.assert_close(gated_act(wide[:, 10:90]), gated_act_ref(x), rtol=1e-5, atol=1e-6)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="even width"):
        gated_act(torch.zeros(2, 7))
    with pytest.raises(ValueError, match="tanh"):
        gated_act(torch.zeros(2, 8), "tanh")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_on_gpu(gpu, dtype):
    x = randn(3000, 2 * 1152, generator=gen(3), scale=2.0, device="cuda")
    out = gated_act(x.to(dtype))
    assert_like_torch(out, torch_math(x, "gelu", dtype), torch_math(x, "gelu", torch.float64), dtype)
