import math

import pytest
import torch
import torch.nn.functional as F

from bertrt.ops.attention import varlen_attention_fp8_ref, varlen_attention_ref, windowed_attention_ref
from bertrt.ops.attention_triton import TILINGS, AttentionConfig, attention_config_for, varlen_attention_triton
from bertrt.packed import cu_seqlens_from_lengths
from ops_testing import DTYPES, assert_like_torch, gen, poisoned, randn


def make_inputs(lengths, heads, head_dim, *, dtype=torch.float32, device="cpu", seed=0):
    g = gen(seed)
    total = sum(lengths)
    q, k, v = (randn(total, heads, head_dim, generator=g, dtype=dtype, device=device) for _ in range(3))
    return q, k, v, cu_seqlens_from_lengths(lengths, device=device), max(lengths)


def torch_math(inputs, dtype):
    q, k, v, cu, max_len = inputs
    return varlen_attention_ref(q.to(dtype), k.to(dtype), v.to(dtype), cu, max_len)


def check(inputs, dtype, config=None):
    q = inputs[0]
    out = poisoned(q.shape, dtype, q.device)
    got = varlen_attention_triton(*inputs, out=out, config=config)
    assert got is out and got.dtype == dtype
    assert_like_torch(got, torch_math(inputs, dtype), torch_math(inputs, torch.float64), dtype)


# Triton's interpreter (3.9) multiplies the raw uint16 bit patterns of bf16 in tl.dot, so bf16 is
# checked on the GPU only.
INTERPRETABLE = [pytest.param(d, marks=pytest.mark.skip(reason="interpreter tl.dot mishandles bf16"))
                 if d == torch.bfloat16 else d for d in DTYPES]


@pytest.mark.parametrize("dtype", INTERPRETABLE)
@pytest.mark.parametrize("head_dim", [32, 64, 48])
def test_kernel_matches_fp64_like_torch(interpret, head_dim, dtype):
    # Lengths 1, 7 and 97 cut the 64-wide query and key blocks unevenly.
    check(make_inputs([7, 1, 97], 2, head_dim, dtype=dtype), dtype)


@pytest.mark.parametrize("programs", [1, 200, 5000], ids=["one_sequence", "few", "many"])
def test_every_chosen_tiling_is_correct(interpret, programs):
    # Each tiling attention_config_for can pick, on lengths that cut its query and key blocks unevenly.
    config = attention_config_for(programs, 64)
    check(make_inputs([1, 130, 65, 200], 2, 64, dtype=torch.float16), torch.float16, config=config)


@pytest.mark.parametrize("name", sorted(TILINGS))
def test_every_named_tiling_is_correct(interpret, name):
    # The tilings a GPU build may record instead of attention_config_for's pick.
    check(make_inputs([1, 130, 65, 33], 2, 64, dtype=torch.float16), torch.float16, config=TILINGS[name])


@pytest.mark.parametrize("lengths", [[5, 0, 70, 1, 0, 0], [3] * 40 + [130], [0, 64, 128, 0]],
                         ids=["empty_sequences", "programs_loop_over_many_short_ones", "exact_blocks"])
def test_block_numbering_covers_every_query(interpret, lengths):
    # Empty sequences (a CUDA graph's unused slots), more sequences than programs (each program then
    # takes several blocks) and lengths that are exact multiples of the block.
    inputs = make_inputs(lengths, 2, 32, dtype=torch.float16)
    check(inputs, torch.float16, config=AttentionConfig(64, 64, 4, 2))


def test_tiling_grows_with_the_launch():
    small, mid, big, huge = (attention_config_for(p, 64) for p in (96, 256, 6144, 8192))
    assert small.block_n > small.block_m  # one sequence: few programs, fewer serial key steps
    assert big.block_m == 128 and big.num_warps == 8
    assert huge == mid  # 128-query blocks lost to 64 from 32k tokens in graph replays on an H100
    assert attention_config_for(6144, 128) == AttentionConfig(64, 32, num_warps=8)  # wide heads: smaller tiles
    assert mid != big


def test_sequences_do_not_attend_to_each_other(interpret):
    q, k, v, cu, max_len = make_inputs([5, 9], 1, 32)
    alone = varlen_attention_triton(q[:5], k[:5], v[:5], cu[:2], 5)
    v2 = v.clone()
    v2[5:] += 100  # changing the second sequence must not move the first one's output
    together = varlen_attention_triton(q, k, v2, cu, max_len)
    torch.testing.assert_close(together[:5], alone, rtol=1e-5, atol=1e-5)


def test_views_of_fused_qkv_and_custom_scale(interpret):
    g = gen(1)
    lengths, heads, head_dim = [3, 20], 2, 32
    qkv = torch.randn(sum(lengths), 3, heads, head_dim, generator=g)
    q, k, v = qkv.unbind(1)  # strided views, as the engine slices its QKV GEMM output
    cu = cu_seqlens_from_lengths(lengths)
    got = varlen_attention_triton(q, k, v, cu, 20, scale=0.3)
    torch.testing.assert_close(got, varlen_attention_ref(q, k, v, cu, 20, scale=0.3), rtol=1e-5, atol=1e-5)


def test_falls_back_to_ref_on_plain_cpu(no_interpret):
    inputs = make_inputs([4, 6], 2, 16)
    torch.testing.assert_close(varlen_attention_triton(*inputs),
                               varlen_attention_ref(*inputs, 1 / math.sqrt(16)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_bert_large_on_gpu(gpu, dtype):
    lengths = [384, 200, 333, 97, 384, 512, 150]
    check(make_inputs(lengths + [3072 - sum(lengths)], 16, 64, dtype=dtype, device="cuda"), dtype)


def test_odd_head_dim_on_gpu(gpu):
    check(make_inputs([1, 97, 300], 3, 48, dtype=torch.bfloat16, device="cuda"), torch.bfloat16)


# --- fp8 products -----------------------------------------------------------------------------------


def fp8_inputs(lengths, heads, head_dim, *, device="cpu", seed=3):
    # BERT-like magnitudes: scores of a few units, so the softmax is neither flat nor one-hot.
    q, k, v, cu, max_len = make_inputs(lengths, heads, head_dim, dtype=torch.float16, device=device, seed=seed)
    return (q * 1.5).half(), (k * 1.5).half(), v, cu, max_len


def check_fp8(inputs, config=None):
    q = inputs[0]
    got = varlen_attention_triton(*inputs, out=poisoned(q.shape, torch.float16, q.device), config=config, fp8=True)
    want = varlen_attention_fp8_ref(*inputs)
    q, k, v, cu, max_len = inputs
    exact = varlen_attention_ref(q.double(), k.double(), v.double(), cu, max_len)
    # The kernel rounds each block's probabilities against the running maximum, the ref against
    # the row's: the same values rounded on slightly different grids, so the two differ far less
    # than either differs from exact attention.
    fp8_error = (want.double() - exact).abs()
    assert 0 < fp8_error.mean() < 0.05
    diff = (got.double() - want.double()).abs()
    assert diff.max() <= 0.25 * fp8_error.max() and diff.mean() <= 0.25 * fp8_error.mean()
    assert (got.double() - exact).abs().max() <= 1.1 * fp8_error.max()


@pytest.mark.parametrize("head_dim", [64, 48])
def test_fp8_kernel_matches_its_ref(interpret, head_dim):
    check_fp8(fp8_inputs([7, 1, 97, 130], 2, head_dim))


def test_fp8_long_sequences(interpret):
    # Eight key blocks: the running maximum, against which the kernel rounds, moves block by block.
    check_fp8(fp8_inputs([384, 512, 97], 1, 64))


@pytest.mark.parametrize("name", sorted(TILINGS))
def test_fp8_every_named_tiling(interpret, name):
    check_fp8(fp8_inputs([1, 130, 65, 33], 2, 64), config=TILINGS[name])


def test_fp8_refuses_fp32(interpret):
    with pytest.raises(ValueError, match="fp16 or bf16"):
        varlen_attention_triton(*make_inputs([4], 1, 32), fp8=True)


def test_fp8_bert_large_on_gpu(gpu):
    lengths = [384, 200, 333, 97, 384, 512, 150]
    check_fp8(fp8_inputs(lengths + [3072 - sum(lengths)], 16, 64, device="cuda"))


# --- sliding-window attention (ModernBERT's local layers) -------------------------------------------


def windowed_math(inputs, reach, dtype):
    q, k, v, cu, _ = inputs
    return windowed_attention_ref(q.to(dtype), k.to(dtype), v.to(dtype), cu, reach)


def check_windowed(inputs, reach, dtype, config=None):
    q = inputs[0]
    out = poisoned(q.shape, dtype, q.device)
    got = varlen_attention_triton(*inputs, out=out, config=config, reach=reach)
    assert got is out
    assert_like_torch(got, windowed_math(inputs, reach, dtype), windowed_math(inputs, reach, torch.float64), dtype)


@pytest.mark.parametrize("dtype", INTERPRETABLE)
@pytest.mark.parametrize("reach", [4, 1, 0, 70])
def test_windowed_kernel_matches_fp64_like_torch(interpret, reach, dtype):
    # 37 tokens against a 9-token window (reach 4), mixed lengths packed; reach 70 spans more than
    # a 64-key block each side, and reach 0 leaves each token only itself.
    check_windowed(make_inputs([37, 1, 5, 150, 70], 2, 18, dtype=dtype), reach, dtype)


@pytest.mark.parametrize("name", sorted(TILINGS))
def test_windowed_kernel_with_every_named_tiling(interpret, name):
    check_windowed(make_inputs([130, 1, 97], 2, 64, dtype=torch.float16), 64, torch.float16, config=TILINGS[name])


def test_window_skips_nothing_it_needs_and_sees_nothing_beyond(interpret):
    q, k, v, cu, max_len = make_inputs([200], 1, 32)
    reach = 8
    base = varlen_attention_triton(q, k, v, cu, max_len, reach=reach)
    v2 = v.clone()
    v2[150:] += 100  # keys of tokens 150.. are outside the window of every query up to 141
    moved = varlen_attention_triton(q, k, v2, cu, max_len, reach=reach)
    torch.testing.assert_close(moved[:142], base[:142], rtol=0, atol=0)
    assert (moved[142:] - base[142:]).abs().amax() > 1.0
    # A window as wide as the sequence is global attention.
    torch.testing.assert_close(varlen_attention_triton(q, k, v, cu, max_len, reach=200),
                               varlen_attention_ref(q, k, v, cu, max_len), rtol=1e-5, atol=1e-5)


def test_windowed_extreme_scores_stay_finite(interpret):
    # Rows whose first visited key block lies wholly outside their window, with scores far below 0.
    q, k, v, cu, max_len = make_inputs([300], 1, 16)
    q = q * 30
    check_windowed((q, k, v, cu, max_len), 3, torch.float32, config=AttentionConfig(32, 64, 4, 2))


def test_windowed_falls_back_to_ref_on_plain_cpu(no_interpret):
    inputs = make_inputs([40, 9], 2, 16)
    torch.testing.assert_close(varlen_attention_triton(*inputs, reach=4),
                               windowed_attention_ref(*inputs[:4], 4))


def banded_sdpa(inputs, reach, dtype):
    """PyTorch's own attention in ``dtype``, one sequence at a time, with the window as a boolean mask."""
    q, k, v, cu, _ = inputs
    out = []
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        pos = torch.arange(b - a, device=q.device)
        band = (pos[:, None] - pos[None, :]).abs() <= reach
        qs, ks, vs = (t[a:b].to(dtype).transpose(0, 1) for t in (q, k, v))  # (heads, len, head_dim)
        out.append(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=band).transpose(0, 1))
    return torch.cat(out)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_windowed_on_gpu(gpu, dtype):
    # ModernBERT's 128-token window (reach 64) over one 8,192-token sequence and shorter ones.
    inputs = make_inputs([8192, 1000, 97, 3], 12, 64, dtype=dtype, device="cuda")
    got = varlen_attention_triton(*inputs, reach=64)
    assert_like_torch(got, banded_sdpa(inputs, 64, dtype), windowed_math(inputs, 64, torch.float64), dtype)
