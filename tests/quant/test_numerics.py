"""The rounding of fp8 and int8 values, and the weights' scales."""

from __future__ import annotations

import pytest
import torch

from bertrt.quant.numerics import dequantize_ref, fake_quantize, quantize_ref, quantize_weight, scale_for


def test_int8_rounds_ties_to_even_and_saturates():
    x = torch.tensor([0.5, 1.5, -0.5, -2.5, 126.6, 300.0, -300.0])
    assert quantize_ref(x, torch.tensor(1.0), "int8").tolist() == [0, 2, 0, -2, 127, 127, -127]


def test_fp8_saturates_instead_of_overflowing():
    x = torch.tensor([1e6, -1e6, 447.0, 0.3])
    q = quantize_ref(x, torch.tensor(1.0), "fp8").float()
    assert q.tolist()[:3] == [448.0, -448.0, 448.0] and torch.isfinite(q).all()


def test_per_channel_weight_scales_follow_each_row():
    w = torch.tensor([[1.0, -2.0], [0.01, 0.02]])
    q, scale = quantize_weight(w, "int8", "per-channel")
    assert scale.shape == (2,) and torch.allclose(scale, torch.tensor([2.0, 0.02]) / 127)
    assert q.tolist() == [[64, -127], [64, 127]]
    torch.testing.assert_close(dequantize_ref(q, scale), w, atol=0.01, rtol=0.01)
    _, per_tensor = quantize_weight(w, "int8", "per-tensor")
    assert per_tensor.shape == () and float(per_tensor) == pytest.approx(2.0 / 127)


def test_an_all_zero_tensor_gets_a_usable_scale():
    assert float(scale_for(0.0, "fp8")) == 1.0
    assert torch.equal(fake_quantize(torch.zeros(3), scale_for(0.0, "int8"), "int8"), torch.zeros(3))
