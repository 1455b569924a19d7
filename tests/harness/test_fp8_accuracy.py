import runpy
from pathlib import Path

import pytest
import torch

from bertrt.config import BertConfig
from bertrt.packed import pack_sequences
from bertrt.reference import ReferenceBert
from bertrt.weights import random_checkpoint

SCRIPT = runpy.run_path(str(Path(__file__).parents[2] / "benchmarks" / "fp8_accuracy_cpu.py"))
TINY = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=64)


def test_e4m3_rounding_keeps_three_mantissa_bits_and_clips_at_448():
    fake = SCRIPT["fake_e4m3"]
    exact = torch.tensor([1.0, -0.5, 448.0, 0.015625, 1.125])  # representable in e4m3
    assert torch.equal(fake(exact, 1.0), exact)
    x = torch.linspace(-400, 400, 10001)
    x = x[x.abs() > 1]
    assert ((fake(x, 1.0) - x).abs() / x.abs()).max() <= 2 ** -4
    assert fake(torch.tensor([1e4, -1e4]), 1.0).tolist() == [448.0, -448.0]
    assert fake(torch.tensor([3.0]), 0.5).item() == 3.0  # 6 * 0.5


def test_calibrated_fp8_model_is_close_to_fp32_and_leaves_it_alone():
    model = ReferenceBert.from_checkpoint(random_checkpoint(TINY, std=0.2)).eval()
    gen = torch.Generator().manual_seed(0)
    batches = [pack_sequences([torch.randint(5, 120, (n,), generator=gen).tolist() for n in (9, 17, 30)],
                              [[0] * n for n in (9, 17, 30)]) for _ in range(2)]
    by_percentile = SCRIPT["calibrate"](model, batches, percentiles=(99.9, 100.0))
    scales, peaks = by_percentile[99.9], by_percentile[100.0]
    assert all(0 < scales[k] <= peaks[k] for k in scales)
    assert sorted(scales) == sorted(f"layers.{i}.{p}" for i in range(2) for p in ("attn.qkv", "attn.out", "ffn.in", "ffn.out"))
    assert all(s > 0 for s in scales.values())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        expected = model.qa_logits(batches[0])
        errors = []
        for quant in (SCRIPT["quantized"](model), SCRIPT["quantized"](model, scales),
                      SCRIPT["quantized"](model, scales, keep=SCRIPT["PROJECTIONS"])):
            got = quant.qa_logits(batches[0])
            errors.append(((got - expected).abs().max() / expected.abs().max()).item())
        assert all(0 < e < 0.1 for e in errors)  # rounded, but only by fp8's few bits
        assert errors[2] == errors[0]  # every input kept: the weights-only model
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="no calibration"):
        SCRIPT["calibrate"](model, [])
