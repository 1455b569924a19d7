"""linear_int8 and quantize_int8 against their plain-PyTorch refs.

Under the interpreter the kernels do the refs' fp32 operations in the refs' order, so every result
without GELU must match bit for bit (the integer product is exact; so is each rounding after it).
GELU's erf is an approximation to fp32's resolution: its results may differ from the exact erf by
one step of the output type. Compiled on a GPU, a multiply and add may fuse (one rounding fewer),
so the GPU tests allow that one step everywhere, for a few elements of an int8 output.
"""

import dataclasses

import pytest
import torch

from bertrt.ops._triton import GemmConfig
from bertrt.ops.linear_int8 import (TILINGS, config_for, linear_int8, linear_int8_ref, quantize_int8,
                                    quantize_int8_ref, tma_usable)
from ops_testing import gen, poisoned

# Small tiles keep the interpreter quick and cut the test shapes unevenly; group_m=2 leaves partial groups.
SMALL = GemmConfig(32, 32, 32, group_m=2, num_warps=4, num_stages=2)
SMALL_TMA = dataclasses.replace(SMALL, tma=True)
KERNELS = [pytest.param(SMALL, id="pointers"), pytest.param(SMALL_TMA, id="tma")]


def int8(*shape, generator):
    return torch.randint(-127, 128, shape, generator=generator, dtype=torch.int8)


def inputs(m, n, k, *, seed=0, per_channel=True, device="cpu"):
    """x_q, W_q, a scale that makes outputs of order 1-5 (both regimes of GELU), bias, residual."""
    g = gen(seed)
    x, w = int8(m, k, generator=g), int8(n, k, generator=g)
    base = 2.0 / (k ** 0.5 * 127 * 127 / 3)  # 1 / the accumulator's std, times 2
    scale = base * (0.5 + torch.rand(n, generator=g)) if per_channel else torch.tensor(base)
    bias = torch.randn(n, generator=g).half()
    residual = torch.randn(m, n, generator=g).half()
    return [t.to(device) for t in (x, w, scale, bias, residual)]


def assert_within_one_step(got, want, *, int8_mismatches=0.0):
    """Equal up to one rounding step of the output type: one int8 unit for at most a fraction
    ``int8_mismatches`` of the elements, one ulp of fp16/bf16."""
    assert got.dtype == want.dtype and got.shape == want.shape
    if got.dtype == torch.int8:
        diff = (got.int() - want.int()).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() <= int8_mismatches, diff.float().mean()
    else:
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.float(), want.float(), rtol=torch.finfo(got.dtype).eps, atol=1e-5)


@pytest.mark.parametrize("config", KERNELS)
@pytest.mark.parametrize("m,n,k", [(1, 72, 208), (97, 72, 208), (300, 200, 80), (97, 72, 64)])
def test_integer_product_is_exact(interpret, m, n, k, config):
    # Scale 1, fp32 output: the int32 accumulator itself (|acc| <= 127^2 * 208 < 2^24, exact in fp32).
    # M, N and K cut 32-wide tiles unevenly (K=208: 6.5 blocks); K=64 takes the unmasked K loop.
    x, w, *_ = inputs(m, n, k)
    out = poisoned((m, n), torch.float32)
    got = linear_int8(x, w, torch.ones(n), out_dtype=torch.float32, out=out, config=config)
    assert got is out
    assert torch.equal(got, (x.long() @ w.long().T).float())


# (per-channel scale, bias, GELU, residual, output): the epilogues an INT8 engine runs, and a few more.
EPILOGUES = {
    "channel-bias-fp16": (True, True, False, False, torch.float16),
    "tensor-fp16": (False, False, False, False, torch.float16),
    "tensor-bias-gelu-fp16": (False, True, True, False, torch.float16),
    "channel-bias-residual-fp16": (True, True, False, True, torch.float16),
    "channel-bias-gelu-residual-bf16": (True, True, True, True, torch.bfloat16),
    "channel-gelu-fp32": (True, False, True, False, torch.float32),
    "tensor-bias-int8": (False, True, False, False, torch.int8),
    "tensor-bias-gelu-int8": (False, True, True, False, torch.int8),
    "channel-residual-int8": (True, False, False, True, torch.int8),
}


@pytest.mark.parametrize("config", KERNELS)
@pytest.mark.parametrize("epilogue", EPILOGUES)
def test_epilogue_matches_ref(interpret, epilogue, config):
    per_channel, has_bias, gelu, has_residual, out_dtype = EPILOGUES[epilogue]
    x, w, scale, bias, residual = inputs(97, 72, 208, per_channel=per_channel)
    kwargs = dict(bias=bias if has_bias else None, gelu=gelu, residual=residual if has_residual else None,
                  out_dtype=out_dtype, out_scale=torch.tensor(0.03) if out_dtype == torch.int8 else None)
    got = linear_int8(x, w, scale, config=config, **kwargs)
    want = linear_int8_ref(x, w, scale, **kwargs)
    if out_dtype == torch.int8:
        assert (want.abs() == 127).any() and (want.abs() < 127).float().mean() > 0.5  # clamps, mostly not
    if gelu:
        assert_within_one_step(got, want, int8_mismatches=0.01)
    else:
        assert torch.equal(got, want)


@pytest.mark.parametrize("name", TILINGS)
def test_every_named_tiling(interpret, name):
    # One tile or a few of each engine tiling, through the descriptor kernel (K=208: rows 16-byte
    # aligned) and the pointer kernel (K=200).
    for k in (208, 200):
        x, w, scale, bias, residual = inputs(300, 200, k)
        assert tma_usable(x, w) == (k == 208)
        got = linear_int8(x, w, scale, bias, residual=residual, config=TILINGS[name])
        assert torch.equal(got, linear_int8_ref(x, w, scale, bias, residual=residual))


def test_int8_output_rounds_half_to_even_and_clamps_symmetrically(interpret):
    # Scale 1/2 makes half of the values ties; out_scale 1 leaves them there. -128 must never appear.
    g = gen(3)
    x, w = int8(64, 64, generator=g), int8(40, 64, generator=g)
    x[0, :] = 0
    x[0, :3] = torch.tensor([1, 3, 5], dtype=torch.int8)  # row 0 of the product: 1, 3, 5, ... / 2 ties
    got = linear_int8(x, w, torch.tensor([0.5]), out_dtype=torch.int8, out_scale=torch.tensor(1.0), config=SMALL)
    halves = (x.long() @ w.long().T).double() / 2
    assert torch.equal(got, torch.round(halves).clamp(-127, 127).to(torch.int8))
    assert (halves.frac().abs() == 0.5).any() and got.min() == -127 and got.max() == 127


def test_quantize_int8(interpret):
    # 2,100 elements: two full blocks of 1,024 and a partial one.
    x = torch.randn(3, 700, generator=gen(4)) * 3
    x[0, :8] = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 1e4, -1e4, 126.5]) * 0.02
    scale = torch.tensor(0.02)
    for dtype in (torch.float16, torch.float32):
        got = quantize_int8(x.to(dtype), scale)
        assert got.dtype == torch.int8 and torch.equal(got, quantize_int8_ref(x.to(dtype), scale))
    ties = quantize_int8(torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 1e4, -1e4, 126.5]), torch.tensor([1.0]))
    assert ties.tolist() == [0, 2, 2, 0, -2, 127, -127, 126]
    assert quantize_int8(torch.empty(0, 5), scale).shape == (0, 5)


def test_strided_rows_and_empty_batch(interpret):
    x, w, scale, bias, residual = inputs(9, 72, 64)
    wide = torch.zeros(9, 100, dtype=torch.int8)
    wide[:, 20:84] = x
    wide_residual = torch.zeros(9, 80, dtype=torch.float16)
    wide_residual[:, 3:75] = residual
    got = linear_int8(wide[:, 20:84], w, scale, bias, residual=wide_residual[:, 3:75], config=SMALL_TMA)
    assert torch.equal(got, linear_int8_ref(x, w, scale, bias, residual=residual))
    assert linear_int8(x[:0], w, scale, bias).shape == (0, 72)


def test_cpu_takes_the_ref(no_interpret):
    x, w, scale, bias, residual = inputs(5, 12, 8)
    assert torch.equal(linear_int8(x, w, scale, bias, gelu=True, residual=residual),
                       linear_int8_ref(x, w, scale, bias, gelu=True, residual=residual))
    # The ref: the exact integer product, dequantised, then the fp32 epilogue.
    want = ((x.double() @ w.double().T).float() * scale + bias.float() + residual.float()).half()
    assert torch.equal(linear_int8_ref(x, w, scale, bias, residual=residual), want)


@pytest.mark.parametrize("bad,match", [
    (dict(x=torch.zeros(3, 8)), "int8"),
    (dict(w=torch.zeros(12, 9, dtype=torch.int8)), "weight_q"),
    (dict(scale=torch.ones(11)), "scale"),
    (dict(scale=torch.ones(12, dtype=torch.float16)), "scale"),
    (dict(bias=torch.ones(11)), "bias"),
    (dict(residual=torch.ones(3, 11)), "residual"),
    (dict(out_dtype=torch.int8), "out_scale"),
    (dict(out_scale=torch.tensor(1.0)), "out_scale"),
    (dict(out_dtype=torch.int32), "out_dtype"),
])
def test_rejects_bad_arguments(no_interpret, bad, match):
    args = dict(x=torch.zeros(3, 8, dtype=torch.int8), w=torch.zeros(12, 8, dtype=torch.int8), scale=torch.ones(12))
    args |= bad
    x, w, scale = args.pop("x"), args.pop("w"), args.pop("scale")
    with pytest.raises(ValueError, match=match):
        linear_int8(x, w, scale, **args)


def test_quantize_rejects_a_scale_per_element(no_interpret):
    with pytest.raises(ValueError, match="scale"):
        quantize_int8(torch.zeros(3), torch.ones(3))


def test_config_choice_is_a_pure_function_of_the_shape():
    assert config_for(49152, 1024, 4096) == config_for(49152, 4096, 1024) == TILINGS["128x256x128"]
    assert config_for(384, 1024, 1024) == TILINGS["64x128x128"]
    assert config_for(8192, 1024, 1024) == TILINGS["128x128x128"]
    # 384 rows: 128 x 128 where it still makes 66 tiles or more (QKV, FFN-in), 64 x 128 below
    assert config_for(384, 3072, 1024) == config_for(384, 4096, 1024) == TILINGS["128x128x128"]
    assert config_for(384, 1024, 4096) == TILINGS["64x128x128"]
    assert all(cfg.block_k == 128 and cfg.tma for cfg in TILINGS.values())


# --- compiled, on a GPU ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [None, *TILINGS])
@pytest.mark.parametrize("m", [384 + 13, 3072])
def test_bert_large_on_gpu(gpu, m, name):
    x, w, scale, bias, residual = inputs(m, 1024, 1024, device="cuda")
    config = TILINGS.get(name)
    for kwargs in (dict(bias=bias, residual=residual), dict(bias=bias, gelu=True),
                   dict(bias=bias, gelu=True, out_dtype=torch.int8, out_scale=torch.tensor(0.03, device="cuda"))):
        got = linear_int8(x, w, scale, config=config, **kwargs)
        assert_within_one_step(got, linear_int8_ref(x, w, scale, **kwargs), int8_mismatches=1e-3)


def test_capturable_and_no_recompile_for_new_token_counts(gpu, monkeypatch):
    knobs = pytest.importorskip("triton.knobs")
    x, w, scale, bias, residual = inputs(3000, 1024, 1024, device="cuda")
    out_scale = torch.tensor(0.03, device="cuda")

    def run(m):
        linear_int8(x[:m], w, scale, bias, residual=residual[:m])
        return linear_int8(x[:m], w, scale, bias, gelu=True, out_dtype=torch.int8, out_scale=out_scale)

    want = run(3000)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = run(3000)
    x.random_(-127, 128)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(got, run(3000)) and not torch.equal(got, want)
    if not hasattr(knobs.runtime, "jit_cache_hook"):
        pytest.skip("this Triton has no jit_cache_hook to count compiles with")
    compiles = []
    monkeypatch.setattr(knobs.runtime, "jit_cache_hook", lambda *a, **kw: compiles.append(kw.get("repr")))
    for m in (2999, 2992, 2048, 2049):  # config_for's tiling at 3,000 rows (128 x 128 from 1,025 to 8,448 at N=1024)
        run(m)
    torch.cuda.synchronize()
    assert compiles == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is the CPU interpreter's; a GPU runs the benchmark itself")
def test_benchmark_dry_run(tmp_path):
    # benchmarks/int8_gemm.py on the CPU: tiny shapes, every tiling through the interpreter, each
    # checked against the ref (its own process: it sets TRITON_INTERPRET before importing triton).
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "int8_gemm.py"
    out = tmp_path / "int8_gemm.json"
    done = subprocess.run([sys.executable, str(script), str(out), "--dry-run", "--commit", "0" * 40],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["commit"] == "0" * 40 and report["environment"]["torch"] == torch.__version__
    row = report["rows"]["qkv_M37"]
    assert row["int_mm"]["ok"] and set(row["tilings"]) == {"default", *TILINGS}
    assert all(t[e]["ok"] and t[e]["tops"] > 0 for t in row["tilings"].values() for e in ("gemm", "mode1", "mode2"))
