"""The GEMM backend choice as engine data: recorded by build, checked on load, honoured by the runtime."""

from __future__ import annotations

import importlib
import importlib.util
import json

import pytest
import torch

from bertrt.engine import Engine, EngineError, build, runtime
from bertrt.config import BertConfig
from bertrt.engine.format import content_checksum
from bertrt.engine.tuning import SPLITK_MAX_TOKENS, tune_gemm_choices
from bertrt.engine.format import ATTENTION_TILINGS, OP_BACKENDS, SPLITK_BACKENDS, gemm_choice, parse_gemm_choices
from bertrt.ops.attention_triton import TILINGS as TILINGS_ATTENTION
from bertrt.reference import ReferenceBert
from bertrt.weights import random_checkpoint

HAS_TRITON = importlib.util.find_spec("triton") is not None
tuning = importlib.import_module("bertrt.engine.tuning")
sublayers = importlib.import_module("bertrt.engine.sublayers")
CHOICES = {"ffn_in_gelu": {64: "cublas", 256: "triton"}}


@pytest.fixture
def count_fused(monkeypatch):
    """Counts the engine's calls of linear_bias_gelu (still running the real op): token counts, or
    (token count, tiling) when the engine names a tiling."""
    calls = []

    def spy(x, weight, bias, config=None):
        calls.append(x.shape[0] if config is None else (x.shape[0], config))
        return real(x, weight, bias, config=config)

    real = runtime.linear_bias_gelu
    monkeypatch.setattr(runtime, "linear_bias_gelu", spy)
    return calls


def test_lookup_takes_the_smallest_bound_that_holds_the_tokens():
    assert gemm_choice({}, "ffn_in_gelu", 100) == "cublas"
    assert gemm_choice({}, "attention", 100) == "triton"
    assert gemm_choice({}, "attn_out", 100) == gemm_choice(CHOICES, "ffn_out", 100) == "cublas"
    assert [gemm_choice(CHOICES, "ffn_in_gelu", t) for t in (1, 64, 65, 256, 10_000)] == \
        ["cublas", "cublas", "triton", "triton", "triton"]


def test_cpu_build_records_cublas_only(tiny_engine_dir):
    spec = json.loads((tiny_engine_dir / "engine.json").read_text())
    assert spec["gemm_choices"] == {}
    assert Engine.load(tiny_engine_dir, device="cpu").spec.gemm_choices == {}


def test_given_choices_are_recorded_and_loaded(tiny_checkpoint, tmp_path):
    out = build(tiny_checkpoint, tmp_path / "e", precision="fp32", max_batch=4, device="cpu", gemm_choices=CHOICES)
    spec = json.loads((out / "engine.json").read_text())
    assert spec["gemm_choices"] == {"ffn_in_gelu": {"64": "cublas", "256": "triton"}}
    assert Engine.load(out, device="cpu").spec.gemm_choices == CHOICES


@pytest.mark.parametrize("bad", [{"ffn_in_gelu": {"64": "cutlass"}}, {"ffn_in_gelu": {"many": "triton"}},
                                 {"qkv": {"64": "triton"}}, {"attention": {"64": "cublas"}}, ["triton"],
                                 {"attn_out": {"64": "splitk3"}}, {"ffn_out": {"64": "triton"}}])
def test_a_bad_recorded_choice_is_refused_on_load(tiny_engine_dir, bad):
    path = tiny_engine_dir / "engine.json"
    spec = json.loads(path.read_text())
    spec["gemm_choices"] = bad
    spec["checksum"] = content_checksum({k: v for k, v in spec.items() if k != "checksum"})
    path.write_text(json.dumps(spec))
    with pytest.raises(EngineError, match="gemm_choices"):
        Engine.load(tiny_engine_dir, device="cpu")


def test_runtime_honours_a_recorded_triton_choice(interpret, count_fused, tiny_checkpoint, make_batch):
    engine = Engine.from_checkpoint(tiny_checkpoint, device="cpu", precision="fp32", max_batch=4, max_tokens=256,
                                    max_seq_length=64, gemm_choices=CHOICES)
    reference = ReferenceBert.from_checkpoint(tiny_checkpoint)
    layers = tiny_checkpoint.config.num_hidden_layers
    small, large = make_batch(120, [30, 20]), make_batch(120, [64, 60, 50, 7], seed=1)  # 50 and 181 tokens
    for batch, fused_calls in ((small, []), (large, [181] * layers)):
        logits = engine.qa_logits(batch)
        with torch.inference_mode():
            expected = reference.qa_logits(batch)
        assert (logits - expected).abs().max().item() <= 1e-4
        assert count_fused == fused_calls
        count_fused.clear()
    from bertrt.ops import _triton, linear_gelu

    assert (linear_gelu._linear_bias_gelu_kernel, True) in _triton._JITTED  # the interpreted kernel ran


def test_a_retired_up_projection_tiling_is_refused(tiny_engine_dir):
    # "triton-overlapped" (two programs per SM) never won a timing; format 2 no longer knows it.
    with pytest.raises(EngineError, match="gemm_choices"):
        parse_gemm_choices({"ffn_in_gelu": {"256": "triton-overlapped"}}, source="engine.json")


def test_runtime_runs_a_recorded_cublaslt_choice(monkeypatch, tiny_checkpoint, make_batch):
    calls = []
    real = runtime.linear_bias_gelu_tanh

    def spy(x, weight, bias):
        calls.append(x.shape[0])
        return real(x, weight, bias)

    monkeypatch.setattr(runtime, "linear_bias_gelu_tanh", spy)
    engine = Engine.from_checkpoint(tiny_checkpoint, device="cpu", precision="fp32", max_batch=4, max_tokens=256,
                                    max_seq_length=64, gemm_choices={"ffn_in_gelu": {64: "cublas",
                                                                                     256: "cublaslt-gelu"}})
    reference = ReferenceBert.from_checkpoint(tiny_checkpoint)
    layers = tiny_checkpoint.config.num_hidden_layers
    for batch, expected in ((make_batch(120, [30, 20]), []), (make_batch(120, [64, 60, 50, 7], seed=1), [181])):
        logits = engine.qa_logits(batch)
        with torch.inference_mode():
            error = (logits - reference.qa_logits(batch)).abs().max().item()
        # The tanh form of GELU (<= 4.7e-4 from erf) moves the logits a little; exact elsewhere.
        assert error <= (1e-2 if expected else 1e-4)
        assert calls == expected * layers
        calls.clear()


@pytest.fixture
def attention_calls(monkeypatch):
    """Records the engine's calls of the Triton attention kernel (still running it): (tokens, tiling)."""
    calls = []
    real = sublayers.varlen_attention_triton

    def spy(q, k, v, cu_seqlens, max_seqlen, config=None):
        calls.append((q.shape[0], config))
        return real(q, k, v, cu_seqlens, max_seqlen, config=config)

    monkeypatch.setattr(sublayers, "varlen_attention_triton", spy)
    return calls


def _check_attention_choices(checkpoint, make_batch, calls, choices, expected_per_batch):
    """Two batches (50 and 181 tokens) through an engine with ``choices``: reference logits, and
    the Triton kernel called as ``expected_per_batch`` says for each (a list of calls per layer)."""
    engine = Engine.from_checkpoint(checkpoint, device="cpu", precision="fp32", max_batch=4, max_tokens=256,
                                    max_seq_length=64, gemm_choices=choices)
    reference = ReferenceBert.from_checkpoint(checkpoint)
    layers = checkpoint.config.num_hidden_layers
    for batch, expected in zip((make_batch(120, [30, 20]), make_batch(120, [64, 60, 50, 7], seed=1)),
                               expected_per_batch):
        logits = engine.qa_logits(batch)
        with torch.inference_mode():
            assert (logits - reference.qa_logits(batch)).abs().max().item() <= 1e-4
        assert calls == expected * layers
        calls.clear()


def test_runtime_honours_a_recorded_triton_attention_choice(interpret, tiny_checkpoint, make_batch,
                                                            attention_calls):
    _check_attention_choices(tiny_checkpoint, make_batch, attention_calls,
                             {"attention": {64: "torch", 256: "triton"}}, ([], [(181, None)]))
    # Nothing recorded (a CPU build): the Triton kernel is the default, falling back to the reference
    # where Triton cannot run.
    _check_attention_choices(tiny_checkpoint, make_batch, attention_calls, {}, ([(50, None)], [(181, None)]))


def test_runtime_runs_a_recorded_attention_tiling(interpret, tiny_checkpoint, make_batch, attention_calls):
    _check_attention_choices(tiny_checkpoint, make_batch, attention_calls,
                             {"attention": {64: "triton-32x64", 256: "triton"}},
                             ([(50, TILINGS_ATTENTION["triton-32x64"])], [(181, None)]))


def test_every_attention_tiling_is_a_recordable_choice():
    assert set(TILINGS_ATTENTION) == set(ATTENTION_TILINGS)
    assert set(ATTENTION_TILINGS) <= set(OP_BACKENDS["attention"])
    assert parse_gemm_choices({"attention": {"128": "triton-32x64"}}, source="t") == {
        "attention": {128: "triton-32x64"}}


def test_tuning_times_only_on_a_gpu(tiny_checkpoint):
    assert tune_gemm_choices(dict(tiny_checkpoint.tensors), max_tokens=256) == {}


@pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs a CUDA GPU and triton")
def test_tuning_on_the_gpu_decides_every_bound_up_to_max_tokens(tiny_checkpoint):
    tensors = {k: v.to("cuda", torch.float16) for k, v in tiny_checkpoint.tensors.items()}
    choices = tune_gemm_choices(tensors, max_tokens=2000, token_counts=(64, 1024, 4096),
                                num_heads=tiny_checkpoint.config.num_attention_heads, max_seq_length=64)
    assert list(choices) == ["ffn_in_gelu", "attn_out", "ffn_out", "attention"]
    assert all(sorted(table) == [64, 1024, 2000] for table in choices.values())
    assert set(choices["ffn_in_gelu"].values()) <= {"cublas", "triton", "cublaslt-gelu"}  # tilings: not timed
    assert set(choices["attention"].values()) <= {"torch", "triton", *ATTENTION_TILINGS}
    assert set(choices["attn_out"].values()) | set(choices["ffn_out"].values()) <= {
        "cublas", "cublas-accumulate", *SPLITK_BACKENDS}


def test_fastest_never_picks_a_wrong_or_broken_candidate(monkeypatch):
    # Timings are faked (no GPU here): what is tested is the choice among them.
    speed = {"good": 2.0, "faster_but_wrong": 0.5, "broken": 0.1, "default": 3.0}
    monkeypatch.setattr(tuning, "graph_time_ms", lambda fn: speed[fn.__name__])
    right = torch.arange(10.0)

    def default():
        return right

    def good():
        return right + 1e-4

    def faster_but_wrong():
        return right * 1.5

    def broken():
        raise RuntimeError("no kernel image for this GPU")

    with pytest.warns(RuntimeWarning) as caught:
        chosen = tuning._fastest("default", default, {f.__name__: f for f in (faster_but_wrong, broken, good)},
                                       "test op")
    assert chosen == "good"
    assert len(caught) == 2 and "relative error" in str(caught[0].message) and "no kernel" in str(caught[1].message)
    speed["default"] = 1.0
    with pytest.warns(RuntimeWarning):
        assert tuning._fastest("default", default, {"good": good, "broken": broken}, "test op") == "default"


# Wider than TINY, so that the 64-wide K blocks of linear_splitk really split: K=128 in 2 slices, K=512 in 4.
WIDE = BertConfig(vocab_size=120, hidden_size=128, num_hidden_layers=1, num_attention_heads=2, intermediate_size=512,
                  max_position_embeddings=64)


@pytest.mark.parametrize("precision,tolerance", [("fp32", 1e-4), ("fp16", 3e-2)])
def test_splitk_projections_give_the_cublas_logits(interpret, make_batch, monkeypatch, precision, tolerance):
    calls = []
    real = sublayers.linear_splitk

    def spy(x, weight, splits):
        calls.append((x.shape[1], splits))
        return real(x, weight, splits)

    monkeypatch.setattr(sublayers, "linear_splitk", spy)
    checkpoint = random_checkpoint(WIDE, std=0.2)
    limits = dict(device="cpu", precision=precision, max_batch=4, max_tokens=256, max_seq_length=64)
    torch_attention = {"attention": {256: "torch"}}  # the interpreted attention kernel would only add time
    split = Engine.from_checkpoint(checkpoint, gemm_choices={"attn_out": {64: "cublas", 256: "splitk2"},
                                                             "ffn_out": {256: "splitk4"}, **torch_attention}, **limits)
    # As an engine.json from before split-K existed records it: cuBLAS for both projections.
    plain = Engine.from_checkpoint(checkpoint, gemm_choices=torch_attention, **limits)
    batch = make_batch(120, [40, 30, 7], seed=1)  # 77 tokens
    expected = plain.qa_logits(batch)
    assert calls == [] and expected.abs().max().item() > 0.1
    logits = split.qa_logits(batch)
    assert (logits - expected).abs().max().item() <= tolerance
    assert calls == [(128, 2), (512, 4)] * WIDE.num_hidden_layers
    calls.clear()
    split.qa_logits(make_batch(120, [30, 20]))  # 50 tokens: attn_out is cuBLAS there
    assert calls == [(512, 4)] * WIDE.num_hidden_layers


def test_tuning_offers_accumulate_everywhere_and_splitk_up_to_its_bound(tiny_checkpoint, monkeypatch):
    # The timing itself needs a GPU: here, which candidates are offered, and that they agree.
    offered = []

    def fastest(default_name, default, candidates, what, timed=None):
        for name, candidate in candidates.items():
            torch.testing.assert_close(candidate(), default(), rtol=1e-5, atol=1e-5)
            if name in (timed or {}):
                timed[name]()  # runs in place on its scratch tensor
        offered.append(list(candidates))
        return default_name

    monkeypatch.setattr(tuning, "_fastest", fastest)
    tensors = dict(tiny_checkpoint.tensors)
    assert tuning._projection_choice(tensors, "layers.0.attn.", 64) == "cublas"
    assert tuning._projection_choice(tensors, "layers.0.ffn.", SPLITK_MAX_TOKENS + 1) == "cublas"
    assert offered == [["cublas-accumulate", *SPLITK_BACKENDS], ["cublas-accumulate"]]


def test_accumulating_projections_give_the_cublas_logits(interpret, make_batch):
    # cuBLAS adding into the residual in place, the LayerNorm then reading that one tensor.
    checkpoint = random_checkpoint(WIDE, std=0.2)
    limits = dict(device="cpu", precision="fp32", max_batch=4, max_tokens=256, max_seq_length=64)
    torch_attention = {"attention": {256: "torch"}}
    accumulate = Engine.from_checkpoint(checkpoint, gemm_choices={
        "attn_out": {256: "cublas-accumulate"}, "ffn_out": {64: "cublas", 256: "cublas-accumulate"},
        **torch_attention}, **limits)
    plain = Engine.from_checkpoint(checkpoint, gemm_choices=torch_attention, **limits)
    for lengths in ([40, 30, 7], [30, 20]):
        batch = make_batch(120, lengths, seed=1)
        expected = plain.qa_logits(batch)
        assert expected.abs().max().item() > 0.1
        assert (accumulate.qa_logits(batch) - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("count", [1, 100, 384, 1000, 49152])
def test_attention_timing_batches_are_ragged_and_exact(count):
    from bertrt.engine.tuning import ragged_lengths

    lengths = ragged_lengths(count, 384)
    assert sum(lengths) == count
    assert all(1 <= n <= 384 for n in lengths)
    if count >= 1000:  # real packed batches mix short and long sequences
        assert min(lengths) <= 384 // 4 and max(lengths) == 384
    if count <= 384:  # one request
        assert lengths == [count]


def test_a_timed_default_attention_is_recorded_by_its_tiling():
    # Recorded as "triton", the tiling would be re-picked per token count at run time, which is
    # not what the build timed for the whole bound.
    from bertrt.engine.tuning import pinned_attention
    from bertrt.ops.attention_triton import AttentionConfig

    assert pinned_attention("triton", TILINGS_ATTENTION["triton-64x64"]) == "triton-64x64"
    assert pinned_attention("triton", TILINGS_ATTENTION["triton-128x64"]) == "triton-128x64"
    assert pinned_attention("triton", AttentionConfig(64, 32, num_warps=8)) == "triton"  # no name: as it was
    assert pinned_attention("torch", TILINGS_ATTENTION["triton-64x64"]) == "torch"
    assert pinned_attention("triton-32x64", TILINGS_ATTENTION["triton-64x64"]) == "triton-32x64"
