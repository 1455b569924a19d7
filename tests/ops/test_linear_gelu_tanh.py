import pytest
import torch
import torch.nn.functional as F

from bertrt.ops import _cublaslt
from bertrt.ops.linear_gelu_tanh import linear_bias_gelu_tanh, linear_bias_gelu_tanh_ref
from ops_testing import assert_like_torch, linear_inputs, poisoned




def torch_math(inputs, dtype):
    x, w, b = (t.to(dtype) for t in inputs)
    return F.gelu(F.linear(x, w, b), approximate="tanh")


def test_cpu_computes_the_tanh_form_not_erf(no_interpret):
    x, w, b = linear_inputs(9, 40, 24)
    got = linear_bias_gelu_tanh(x, w, b)
    pre = F.linear(x.double(), w.double(), b.double())
    torch.testing.assert_close(got.double(), F.gelu(pre, approximate="tanh"), rtol=1e-5, atol=1e-6)
    tanh_vs_erf = (F.gelu(pre, approximate="tanh") - F.gelu(pre)).abs().max()
    assert tanh_vs_erf > 1e-5  # the forms differ on these inputs, so the check above tells them apart
    torch.testing.assert_close(got, linear_bias_gelu_tanh_ref(x, w, b))


def test_out_is_written_and_checked(no_interpret):
    x, w, b = linear_inputs(5, 8, 16)
    out = poisoned((5, 8), torch.float32)
    assert linear_bias_gelu_tanh(x, w, b, out=out) is out
    torch.testing.assert_close(out, linear_bias_gelu_tanh_ref(x, w, b))
    with pytest.raises(ValueError, match="out must be"):
        linear_bias_gelu_tanh(x, w, b, out=torch.empty(5, 9))


def test_cublaslt_is_not_offered_off_the_gpu(no_interpret):
    x, w, b = linear_inputs(4, 8, 16, dtype=torch.float16)
    assert not _cublaslt.supported(x, w, b)
    if not torch.cuda.is_available():
        _cublaslt.library.cache_clear()
        with pytest.raises(_cublaslt.CublasLtError, match="CUDA"):
            _cublaslt.library()


def test_support_needs_aligned_contiguous_half_tensors():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    x, w, b = linear_inputs(8, 32, 64, dtype=torch.float16, device="cuda")
    assert _cublaslt.supported(x, w, b)
    assert not _cublaslt.supported(x.float(), w.float(), b.float())
    assert not _cublaslt.supported(x[:, 1:33], w[:, :32], b)  # misaligned start
    assert not _cublaslt.supported(x.t().contiguous().t(), w, b)  # column-major


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tokens,n,k", [(1, 4096, 1024), (97, 136, 64), (3072, 4096, 1024)])
def test_cublaslt_matches_fp64_like_torch(gpu, tokens, n, k, dtype):
    inputs = linear_inputs(tokens, n, k, dtype=dtype, device="cuda")
    assert _cublaslt.supported(*inputs)
    out = poisoned((tokens, n), dtype, "cuda")
    got = linear_bias_gelu_tanh(*inputs, out=out)
    assert got is out
    assert_like_torch(got, torch_math(inputs, dtype), torch_math(inputs, torch.float64), dtype)


def test_cublaslt_epilogue_is_the_tanh_form(gpu):
    # GELU of the bias alone over [-5, -1.5]: outputs of |y| <= 0.11, where fp16 resolves ~3e-5,
    # while the two forms differ by up to 4.7e-4 there.
    k, n = 64, 256
    x = torch.eye(k, device="cuda", dtype=torch.float16)
    w = torch.zeros(n, k, device="cuda", dtype=torch.float16)
    b = torch.linspace(-5, -1.5, n, device="cuda").half()
    got = linear_bias_gelu_tanh(x, w, b)[0].double()
    pre = b.double()
    assert (got - F.gelu(pre, approximate="tanh")).abs().max() < 1e-4 < (got - F.gelu(pre)).abs().max()


def test_cublaslt_replays_in_a_cuda_graph(gpu):
    inputs = linear_inputs(384, 4096, 1024, dtype=torch.float16, device="cuda")
    expected = linear_bias_gelu_tanh(*inputs)  # first call: plan and workspace, outside capture
    out = torch.empty_like(expected)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        linear_bias_gelu_tanh(*inputs, out=out)
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_plans_are_cached_per_shape_and_bounded(monkeypatch):
    # cuBLASLt itself needs a GPU; what is checked here is the cache around it: one plan (one
    # heuristic query) per shape, the least recently used freed beyond MAX_PLANS.
    made, freed = [], []

    class FakePlan:
        def __init__(self, device, m, n, k, dtype, epilogue, bias, **options):
            self.m = m
            made.append(m)

        def run(self, x, weight, bias, out):
            out.fill_(self.m)

        def destroy(self):
            freed.append(self.m)

    monkeypatch.setattr(_cublaslt, "Plan", FakePlan)
    monkeypatch.setattr(_cublaslt, "_PLANS", type(_cublaslt._PLANS)())
    monkeypatch.setattr(_cublaslt, "MAX_PLANS", 2)
    w, b = torch.zeros(4, 8, dtype=torch.float16), torch.zeros(4, dtype=torch.float16)
    for m in (1, 2, 1, 3, 1, 2):
        out = _cublaslt.matmul(torch.zeros(m, 8, dtype=torch.float16), w, b, _cublaslt.EPILOGUE_GELU_BIAS)
        assert out.shape == (m, 4) and (out == m).all()
    assert made == [1, 2, 3, 2]  # 1 stayed in use, so 2 was the one freed when 3 came
    assert freed == [2, 3]


def test_evicted_plans_are_freed_and_remade_on_gpu(gpu, monkeypatch):
    monkeypatch.setattr(_cublaslt, "_PLANS", type(_cublaslt._PLANS)())
    monkeypatch.setattr(_cublaslt, "MAX_PLANS", 2)
    _, w, b = linear_inputs(1, 128, 64, dtype=torch.float16, device="cuda")
    for m in (8, 16, 24, 8, 32, 16):
        x = linear_inputs(m, 128, 64, dtype=torch.float16, device="cuda", seed=m)[0]
        inputs = [x, w, b]
        assert_like_torch(linear_bias_gelu_tanh(*inputs), torch_math(inputs, torch.float16),
                          torch_math(inputs, torch.float64), torch.float16)
    assert len(_cublaslt._PLANS) == 2


@pytest.mark.parametrize("tokens,n,k", [(384, 1024, 4096), (97, 136, 64)])
def test_every_suggested_algorithm_computes_the_same_product(gpu, tokens, n, k):
    # What a tuner may pick among: each of the heuristic's algorithms, with and without bias,
    # written fresh or added into out (beta = 1).
    x, w, b = linear_inputs(tokens, n, k, dtype=torch.float16, device="cuda")
    residual = torch.randn(tokens, n, device="cuda").half()
    exact = F.linear(x.double(), w.double())
    plain = _cublaslt.EPILOGUE_DEFAULT
    count = _cublaslt.heuristic_count(x, w, plain, accumulate=True)
    assert count >= 1
    for algorithm in range(count):
        got = _cublaslt.matmul(x, w, None, plain, algorithm=algorithm)
        assert_like_torch(got, F.linear(x, w), exact, torch.float16)
        summed = _cublaslt.matmul(x, w, None, plain, out=residual.clone(), accumulate=True, algorithm=algorithm)
        assert_like_torch(summed, F.linear(x, w) + residual, exact + residual.double(), torch.float16)
    biased = _cublaslt.matmul(x, w, b, _cublaslt.EPILOGUE_BIAS)
    assert_like_torch(biased, F.linear(x, w, b), exact + b.double(), torch.float16)
    with pytest.raises(_cublaslt.CublasLtError, match="not #"):
        _cublaslt.matmul(x, w, None, plain, algorithm=1000)


def test_bias_must_match_the_epilogue_and_accumulate_needs_out(gpu):
    x, w, b = linear_inputs(8, 32, 64, dtype=torch.float16, device="cuda")
    with pytest.raises(ValueError, match="disagree"):
        _cublaslt.matmul(x, w, None, _cublaslt.EPILOGUE_BIAS)
    with pytest.raises(ValueError, match="disagree"):
        _cublaslt.matmul(x, w, b, _cublaslt.EPILOGUE_DEFAULT)
    with pytest.raises(ValueError, match="needs out"):
        _cublaslt.matmul(x, w, None, _cublaslt.EPILOGUE_DEFAULT, accumulate=True)
