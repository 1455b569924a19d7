"""Programmatic dependent launch: asked for only where it can work, and results stay exact with it."""

import pytest
import torch
import torch.nn.functional as F

from bertrt.ops import _triton
from bertrt.ops.attention import varlen_attention_ref
from bertrt.ops.attention_triton import varlen_attention_triton
from bertrt.ops.residual_layernorm import bias_residual_layernorm, bias_residual_layernorm_ref


def test_not_asked_for_off_the_gpu_or_under_the_interpreter(monkeypatch):
    x = torch.zeros(4, 8)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert _triton.dependent_launch(x) == {"WAIT_PRIOR": False}
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _triton.dependent_launch(x) == {"WAIT_PRIOR": False}


def test_switched_off_for_every_kernel(gpu, monkeypatch):
    x = torch.zeros(4, 8, device="cuda")
    monkeypatch.setattr(_triton, "PDL_ENABLED", False)
    assert _triton.dependent_launch(x) == {"WAIT_PRIOR": False}
    monkeypatch.setattr(_triton, "PDL_ENABLED", True)
    expected = torch.cuda.get_device_capability()[0] >= 9 and _triton._pdl_supported(torch.cuda.current_device())
    assert _triton.dependent_launch(x).get("launch_pdl", False) == expected


@pytest.mark.parametrize("pdl", [True, False])
def test_kernels_after_a_long_gemm_read_its_finished_output(gpu, monkeypatch, pdl):
    # A large cuBLAS product, then the LayerNorm that reads it and attention that reads that, all
    # captured in one graph as the engine runs them: a dependent launch that did not wait for the
    # product would read unwritten (NaN-filled) or stale memory.
    monkeypatch.setattr(_triton, "PDL_ENABLED", pdl)
    torch.manual_seed(0)
    tokens, hidden, heads = 4096, 1024, 16
    x = torch.randn(tokens, 4 * hidden, device="cuda").half()
    w = (torch.randn(hidden, 4 * hidden, device="cuda") * 0.02).half()
    bias, gamma, beta = (torch.randn(hidden, device="cuda").half() for _ in range(3))
    residual = torch.randn(tokens, hidden, device="cuda").half()
    cu = torch.arange(0, tokens + 1, 512, device="cuda", dtype=torch.int32)
    product = torch.empty(tokens, hidden, device="cuda").half()

    def chain():
        torch.matmul(x, w.t(), out=product)
        normed = bias_residual_layernorm(product, bias, residual, gamma, beta, 1e-12)
        q = normed.view(tokens, heads, hidden // heads)
        return normed, varlen_attention_triton(q, q, q, cu, 512)

    chain()  # compile outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        normed, attended = chain()
    for _ in range(3):
        product.fill_(float("nan"))
        normed.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        expected = bias_residual_layernorm_ref(x @ w.t(), bias, residual, gamma, beta, 1e-12)
        torch.testing.assert_close(normed, expected, rtol=2e-2, atol=2e-2)
        q = normed.view(tokens, heads, hidden // heads)
        torch.testing.assert_close(attended, varlen_attention_ref(q, q, q, cu, 512), rtol=2e-2, atol=2e-2)
