import math

import pytest
import torch
import torch.nn.functional as F

from bertrt.ops._triton import GemmConfig
from bertrt.ops.linear_splitk import (LARGE_M, MEDIUM_M, SMALL_M, config_for, k_per_split, linear_splitk,
                                      linear_splitk_ref)
from ops_testing import assert_like_torch, gen, poisoned, randn


def make_inputs(m, n, k, *, dtype=torch.float32, device="cpu", seed=0):
    """Weights scaled like a trained layer's (x @ W.T of order 1)."""
    g = gen(seed)
    return (randn(m, k, generator=g, dtype=dtype, device=device),
            randn(n, k, generator=g, dtype=dtype, device=device, scale=1.5 / math.sqrt(k)))


def check(x, w, splits, config=None):
    out = poisoned((splits, x.shape[0], w.shape[0]), torch.float32, x.device)
    got = linear_splitk(x, w, splits, config=config, out=out)
    assert got is out
    # The same slices in fp32 (fp16 products are exact in fp32): only the summation order differs.
    torch.testing.assert_close(got, linear_splitk_ref(x, w, splits, config=config), rtol=1e-4, atol=1e-4)
    # Summed, the partials are the product, at least as accurate as PyTorch's own in x's dtype.
    assert_like_torch(got.sum(0), F.linear(x, w), F.linear(x.double(), w.double()), x.dtype)


# bf16 is left to the GPU: Triton's interpreter (3.9) mishandles bf16 in tl.dot (see test_linear_gelu).
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("splits", [1, 2, 3, 4])
@pytest.mark.parametrize("k", [80, 200, 1024])
@pytest.mark.parametrize("m,n", [(1, 96), (37, 160), (130, 96)])
def test_kernel_matches_ref(interpret, m, n, k, splits, dtype):
    # M, N and K all cut the 64-wide tiles unevenly; K=80 in 4 splits leaves two slices empty (zeros),
    # K=200 has a ragged last block, K=1024 is BERT-Large's attention output width.
    check(*make_inputs(m, n, k, dtype=dtype, seed=k + splits), splits)


@pytest.mark.parametrize("config", [SMALL_M, MEDIUM_M, LARGE_M, GemmConfig(32, 32, 32, group_m=2)],
                         ids=["small", "medium", "large", "grouped"])
def test_every_tiling_covers_the_output(interpret, config):
    # 200 rows with group_m=2 gives partial groups and edge tiles on both axes; K=336 is 10.5 blocks of 32.
    check(*make_inputs(200, 160, 336, dtype=torch.float16, seed=1), 3, config=config)


def test_strided_input_rows(interpret):
    x, w = make_inputs(9, 96, 80)
    wide = torch.zeros(9, 130)
    wide[:, 20:100] = x
    torch.testing.assert_close(linear_splitk(wide[:, 20:100], w, 2), linear_splitk_ref(x, w, 2), rtol=1e-5,
                               atol=1e-5)


def test_empty_batch(interpret):
    x, w = make_inputs(0, 96, 80)
    assert linear_splitk(x, w, 3).shape == (3, 0, 96)


def test_slices_are_whole_k_blocks():
    assert k_per_split(1024, 2, 64) == 512 and k_per_split(1024, 3, 64) == 384  # 384, 384, 256
    assert k_per_split(4096, 6, 64) == 704 and k_per_split(200, 3, 64) == 128  # 128, 72, empty
    assert k_per_split(80, 4, 64) == 64


def test_ref_partials_sum_to_the_linear_layer(no_interpret):
    x, w = make_inputs(5, 12, 200)
    got = linear_splitk(x, w, 3)  # no Triton here: the ref
    assert got.shape == (3, 5, 12) and got.dtype == torch.float32
    width = k_per_split(200, 3, config_for(5).block_k)
    torch.testing.assert_close(got[1], F.linear(x[:, width:2 * width], w[:, width:2 * width]))
    torch.testing.assert_close(got.sum(0), F.linear(x, w), rtol=1e-5, atol=1e-5)


def test_rejects_mismatched_arguments(no_interpret):
    x, w = make_inputs(3, 12, 8)
    with pytest.raises(ValueError, match="weight"):
        linear_splitk(x, w.T.contiguous(), 2)
    with pytest.raises(ValueError, match="must match"):
        linear_splitk(x, w.half(), 2)
    with pytest.raises(ValueError, match="splits"):
        linear_splitk(x, w, 0)
    with pytest.raises(ValueError, match="out must be"):
        linear_splitk(x, w, 2, out=torch.empty(2, 3, 12, dtype=torch.float16))
    with pytest.raises(ValueError, match="tma=False"):
        linear_splitk(x, w, 2, config=GemmConfig(64, 64, 64, tma=True))


def test_config_choice_is_a_pure_function_of_m():
    assert config_for(1) == config_for(384) == SMALL_M
    assert config_for(768) == MEDIUM_M and config_for(3072) == LARGE_M


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [128, 384, 3072])
@pytest.mark.parametrize("n,k", [(1024, 1024), (1024, 4096)])
def test_bert_large_on_gpu(gpu, m, n, k, dtype):
    for splits in (2, 4):
        check(*make_inputs(m, n, k, dtype=dtype, device="cuda"), splits)
