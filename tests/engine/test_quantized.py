"""fp8 and int8 engines on the CPU: the build (recipe, scales, cache), the simulation of their
numerics against an independently fake-quantised reference, and every refusal."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from bertrt.engine import Engine, EngineError, build
from bertrt.engine.quantized import require_fp8_device
from bertrt.quant.calibration import Calibration, calibrate
from bertrt.quant.data import CalibrationSettings
from bertrt.quant.numerics import dequantize_ref, fake_quantize
from bertrt.quant.recipe import PROJECTIONS, QuantError, QuantRecipe
from bertrt.reference import ReferenceBert
from bertrt.weights.schema import Checkpoint

RECIPES = {"fp8": ("fp8", None), "int8-mode1": ("int8", 1), "int8-mode2": ("int8", 2)}


@pytest.fixture
def calibration_batches(tiny_checkpoint, make_batch):
    return [make_batch(tiny_checkpoint.config.vocab_size, [5, 40, 17], seed=s) for s in range(3)]


def _calibration(checkpoint, batches, method="max", fmt="fp8"):
    return calibrate(checkpoint, batches, method=method, fmt=fmt, progress=False)


def fake_quantised_reference(checkpoint: Checkpoint, tensors: dict, recipe: QuantRecipe) -> ReferenceBert:
    """The fp32 reference with every quantised projection's weight dequantised from the engine's and
    its input rounded at the engine's scale (int8 mode 2 also rounds outputs and residuals), and
    cuBLASLt's tanh GELU: what the engine must compute, written the plain way."""
    fmt = recipe.format
    model = ReferenceBert.from_checkpoint(checkpoint)
    for i, layer in enumerate(model.layers):
        for p in recipe.projections:
            linear = layer.get_submodule(p)
            pre = f"layers.{i}.{p}."
            linear.weight.data = dequantize_ref(tensors[pre + "weight"], tensors[pre + "weight_scale"])
            linear.register_forward_pre_hook(
                lambda m, args, s=tensors[pre + "input_scale"]: (fake_quantize(args[0], s, fmt),))
            if recipe.mode2 and p != "ffn.in":
                linear.register_forward_hook(
                    lambda m, args, out, s=tensors[pre + "output_scale"]: fake_quantize(out, s, fmt))
        if recipe.mode2:
            for s in ("attn", "ffn"):
                layer.get_submodule(s).register_forward_pre_hook(
                    lambda m, args, sc=tensors[f"layers.{i}.{s}.residual_scale"]: (fake_quantize(args[0], sc, fmt),
                                                                                    *args[1:]))
        ffn = layer.ffn
        gelu = "tanh" if fmt == "fp8" else "none"  # cuBLASLt's fp8 epilogue; the int8 GEMM's erf

        def forward(x, ffn=ffn, gelu=gelu):
            return ffn.ln(x + ffn.out(F.gelu(getattr(ffn, "in")(x), approximate=gelu)))

        ffn.forward = forward
    return model


@pytest.mark.parametrize("name", RECIPES)
def test_cpu_engine_computes_the_fake_quantised_model(name, tiny_checkpoint, calibration_batches, make_batch,
                                                      tmp_path):
    fmt, mode = RECIPES[name]
    if fmt == "int8":
        pytest.importorskip("bertrt.ops.linear_int8")
    calibration = _calibration(tiny_checkpoint, calibration_batches, fmt=fmt)
    out = build(tiny_checkpoint, tmp_path / name, precision=fmt, int8_mode=mode, device="cpu",
                calibration=calibration)
    engine = Engine.load(out, device="cpu")
    assert engine.spec.precision_name == name and engine.spec.quantization.method == "max"
    batch = make_batch(tiny_checkpoint.config.vocab_size, [3, 50, 21], seed=7)
    got = engine.qa_logits(batch)
    want = fake_quantised_reference(tiny_checkpoint, engine.tensors(), engine.spec.quantization).qa_logits(batch)
    exact = ReferenceBert.from_checkpoint(tiny_checkpoint).qa_logits(batch)
    error, quantisation = (got - want).detach().abs(), (want - exact).detach().abs()
    # nn.Linear adds its bias inside the product, the engine after it: a value at a rounding
    # boundary may land one step apart and move the logits of its sequence a little. Nearly all
    # logits agree exactly; what quantisation itself changes is far larger.
    assert float(quantisation.mean()) > 1e-3, "the quantised model should differ from fp32"
    assert float((error < 1e-4).float().mean()) > 0.6, float(error.max())
    assert float(error.mean()) < 0.1 * float(quantisation.mean())


def test_fp8_attention_is_data_in_the_recipe(tiny_checkpoint, calibration_batches, make_batch, tmp_path):
    calibration = _calibration(tiny_checkpoint, calibration_batches)
    engines = {}
    for attention in ("fp16", "fp8"):
        recipe = QuantRecipe(format="fp8", method="max", attention=attention)
        out = build(tiny_checkpoint, tmp_path / attention, precision="fp8", device="cpu", calibration=calibration,
                    recipe=recipe)
        assert json.loads((out / "engine.json").read_text())["quantization"]["attention"] == attention
        engines[attention] = Engine.load(out, device="cpu")
    assert engines["fp8"].spec.quantization.attention == "fp8"
    batch = make_batch(tiny_checkpoint.config.vocab_size, [3, 50, 21], seed=7)
    fp16_attention, fp8_attention = (engines[a].qa_logits(batch) for a in ("fp16", "fp8"))
    exact = ReferenceBert.from_checkpoint(tiny_checkpoint).qa_logits(batch)
    # fp8 products move the logits, by less than the projections' own quantisation does.
    moved = float((fp8_attention - fp16_attention).abs().mean())
    assert 0 < moved < float((fp16_attention - exact).abs().mean())
    with pytest.raises(QuantError, match="fp8 attention needs an fp8 recipe"):
        QuantRecipe(format="int8", int8_mode=1, attention="fp8")
    with pytest.raises(QuantError, match="attention precision"):
        QuantRecipe(format="fp8", attention="int4")


def test_engine_files_record_the_recipe_and_hold_the_scales(tiny_checkpoint, calibration_batches, tmp_path):
    from safetensors.torch import load_file

    calibration = _calibration(tiny_checkpoint, calibration_batches)
    out = build(tiny_checkpoint, tmp_path / "e", precision="fp8", device="cpu", calibration=calibration)
    spec = json.loads((out / "engine.json").read_text())
    assert spec["format_version"] == 2 and spec["precision"] == "fp32"
    q = spec["quantization"]
    assert (q["format"], q["method"], q["weights"], q["projections"]) == ("fp8", "max", "per-tensor", list(PROJECTIONS))
    assert q["calibration"]["model_sha256"] == calibration.model_sha256
    tensors = load_file(str(out / "weights.safetensors"))
    assert tensors["layers.1.ffn.in.weight"].dtype == torch.float8_e4m3fn
    assert tensors["layers.1.ffn.in.input_scale"].shape == () and tensors["layers.1.ffn.in.weight_scale"].shape == ()
    assert tensors["embeddings.word"].dtype == torch.float32
    assert float(tensors["layers.0.attn.qkv.input_scale"]) == pytest.approx(
        calibration.amax["layers.0.attn.qkv.input"] / 448)


def test_per_channel_int8_weights(tiny_checkpoint, calibration_batches, tmp_path):
    pytest.importorskip("bertrt.ops.linear_int8")
    out = build(tiny_checkpoint, tmp_path / "e", precision="int8", device="cpu",
                calibration=_calibration(tiny_checkpoint, calibration_batches, fmt="int8"))
    engine = Engine.load(out, device="cpu")
    assert engine.spec.quantization.weights == "per-channel"
    assert engine.tensors()["layers.0.attn.qkv.weight_scale"].shape == (3 * tiny_checkpoint.config.hidden_size,)


def test_methods_order_their_clip_values(tiny_checkpoint, calibration_batches):
    by = {m: _calibration(tiny_checkpoint, calibration_batches, method=m).amax
          for m in ("max", "percentile:99.9", "mse")}
    name = "layers.1.ffn.out.input"
    assert by["percentile:99.9"][name] < by["max"][name]
    assert 0 < by["mse"][name] <= by["max"][name]


def test_a_cache_is_reused_without_data_and_refused_for_other_weights(tiny_checkpoint, calibration_batches,
                                                                       tmp_path):
    cache = _calibration(tiny_checkpoint, calibration_batches).save(tmp_path / "calib.json")
    before = cache.read_bytes()
    out = build(tiny_checkpoint, tmp_path / "e", precision="fp8", device="cpu",
                calibration=CalibrationSettings(cache=cache, method="max"))
    assert Engine.load(out, device="cpu").spec.quantization.calibration["model_sha256"]
    assert cache.read_bytes() == before
    other = Checkpoint(tiny_checkpoint.config, {k: v * 1.01 for k, v in tiny_checkpoint.tensors.items()})
    with pytest.raises(QuantError, match="made for other weights"):
        build(other, tmp_path / "e2", precision="fp8", device="cpu",
              calibration=CalibrationSettings(cache=cache, method="max"))
    with pytest.raises(QuantError, match="made with --calib-method max, not mse"):
        build(tiny_checkpoint, tmp_path / "e3", precision="fp8", device="cpu",
              calibration=CalibrationSettings(cache=cache, method="mse"))
    assert not (tmp_path / "e2").exists() and not (tmp_path / "e3").exists()


def test_overflow_during_calibration_names_the_tensor(tiny_checkpoint, calibration_batches):
    tensors = dict(tiny_checkpoint.tensors)
    tensors["layers.1.ffn.in.weight"] = tensors["layers.1.ffn.in.weight"] * 1e38
    broken = Checkpoint(tiny_checkpoint.config, tensors)
    with pytest.raises(QuantError, match=r"(Inf|NaN) in layers\.1\.ffn\.in\.output"):
        _calibration(broken, calibration_batches)


def test_a_build_needs_scales_and_checks_its_data_first(tiny_checkpoint, tmp_path):
    with pytest.raises(QuantError, match="needs calibration data"):
        build(tiny_checkpoint, tmp_path / "e", precision="fp8", device="cpu")
    with pytest.raises(QuantError, match="no such file"):
        build("/nonexistent/model", tmp_path / "e", precision="fp8", device="cpu",
              calibration=CalibrationSettings(data=tmp_path / "missing.json"))  # data is checked before the model
    with pytest.raises(EngineError, match="calibration applies to fp8 and int8"):
        build(tiny_checkpoint, tmp_path / "e", precision="fp16", device="cpu",
              calibration=CalibrationSettings(data="x.json"))
    with pytest.raises(QuantError, match="int8 mode 3"):
        build(tiny_checkpoint, tmp_path / "e", precision="int8", int8_mode=3, device="cpu")
    assert not (tmp_path / "e").exists()


def test_an_interrupted_build_leaves_nothing(tiny_checkpoint, calibration_batches, tmp_path, monkeypatch):
    import safetensors.torch

    calibration = _calibration(tiny_checkpoint, calibration_batches)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build(tiny_checkpoint, tmp_path / "e", precision="fp8", device="cpu", calibration=calibration)
    assert list(tmp_path.iterdir()) == []


def test_fp8_on_an_older_gpu_names_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-40GB")
    with pytest.raises(QuantError, match="A100-SXM4-40GB is 8.0"):
        require_fp8_device(torch.device("cuda", 0))


def test_a_quantised_engine_with_a_wrong_scale_is_refused(tiny_checkpoint, calibration_batches, tmp_path):
    from safetensors.torch import load_file, save_file

    from bertrt.engine.format import content_checksum, file_sha256

    out = build(tiny_checkpoint, tmp_path / "e", precision="fp8", device="cpu",
                calibration=_calibration(tiny_checkpoint, calibration_batches))
    weights = out / "weights.safetensors"
    tensors = load_file(str(weights))
    tensors["layers.0.attn.out.input_scale"] = torch.tensor(float("nan"))
    save_file(tensors, str(weights))
    spec = json.loads((out / "engine.json").read_text())
    spec["weights"].update(sha256=file_sha256(weights), bytes=weights.stat().st_size)
    spec["checksum"] = content_checksum({k: v for k, v in spec.items() if k != "checksum"})
    (out / "engine.json").write_text(json.dumps(spec))
    with pytest.raises(EngineError, match="input_scale holds a scale that is not positive"):
        Engine.load(out, device="cpu")


def test_calibration_cache_round_trip_and_refusals(tmp_path):
    cal = Calibration(method="percentile:99.9", amax={"layers.0.attn.qkv.input": 3.5}, model_sha256="ab" * 32,
                      data={"file": "dev-v1.1.json"})
    assert Calibration.load(cal.save(tmp_path / "c.json")) == cal
    (tmp_path / "bad.json").write_text(json.dumps({**cal.to_json(), "amax": {"x": float("inf")}}))
    with pytest.raises(QuantError, match="positive finite"):
        Calibration.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"format": "tensorrt"}')
    with pytest.raises(QuantError, match="not a bertrt calibration cache"):
        Calibration.load(tmp_path / "other.json")
