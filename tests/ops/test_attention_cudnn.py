import pytest
import torch

from bertrt.ops.attention import varlen_attention_ref
from bertrt.ops.attention_cudnn import varlen_attention_cudnn
from bertrt.packed import cu_seqlens_from_lengths
from ops_testing import assert_like_torch, gen, randn


def make_inputs(lengths, heads, head_dim, *, dtype=torch.float32, device="cpu", seed=0):
    """q, k, v as views of one fused (T, 3, heads, head_dim) projection, as the engine has them."""
    g = gen(seed)
    qkv = randn(sum(lengths), 3, heads, head_dim, generator=g, dtype=dtype, device=device)
    q, k, v = qkv.unbind(1)
    return q, k, v, cu_seqlens_from_lengths(lengths, device=device), max(lengths)


def torch_math(inputs, dtype):
    q, k, v, cu, max_len = inputs
    return varlen_attention_ref(q.to(dtype), k.to(dtype), v.to(dtype), cu, max_len)


def test_falls_back_to_ref_off_the_gpu():
    inputs = make_inputs([7, 1, 30], 2, 16)
    torch.testing.assert_close(varlen_attention_cudnn(*inputs, scale=0.3),
                               varlen_attention_ref(*inputs, scale=0.3))


def cudnn_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("lengths", [[384] * 4, [7, 1, 97, 384, 200], [384]], ids=["equal", "ragged", "one"])
def test_matches_fp64_like_torch_on_gpu(lengths, dtype):
    cudnn_gpu()
    inputs = make_inputs(lengths, 16, 64, dtype=dtype, device="cuda")
    got = varlen_attention_cudnn(*inputs)
    assert got.shape == inputs[0].shape and got.dtype == dtype
    assert_like_torch(got, torch_math(inputs, dtype), torch_math(inputs, torch.float64), dtype)


def test_graph_layout_with_empty_sequences_on_gpu():
    # What a CUDA graph bucket passes: real sequences, one sequence of padding, then empty ones,
    # with max_seqlen fixed at max_seq_length.
    cudnn_gpu()
    lengths = [100, 37, 250, 61] + [0] * 124
    inputs = make_inputs(lengths, 16, 64, dtype=torch.float16, device="cuda")
    q, k, v, cu, _ = inputs
    got = varlen_attention_cudnn(q, k, v, cu, 384)
    assert_like_torch(got, torch_math(inputs, torch.float16), torch_math(inputs, torch.float64), torch.float16)


def test_replays_in_a_cuda_graph_on_gpu():
    cudnn_gpu()
    q, k, v, cu, max_len = make_inputs([300, 84, 384], 16, 64, dtype=torch.float16, device="cuda")
    expected = varlen_attention_cudnn(q, k, v, cu, 384)  # warm-up outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = varlen_attention_cudnn(q, k, v, cu, 384)
    q.normal_()  # new inputs in the same buffers
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, varlen_attention_cudnn(q, k, v, cu, 384), rtol=0, atol=0)
    assert not torch.equal(out, expected)
