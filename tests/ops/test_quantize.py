"""The rounding pass of its own (ops/quantize) against its reference."""

from __future__ import annotations

import pytest
import torch
from ops_testing import FORMATS, assert_same_quantised, inv_scale

from bertrt.ops.quantize import quantize
from bertrt.quant.numerics import quantize_ref


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", [(1, 7), (97, 300), (3, 2049)])
def test_quantize_pass_matches_its_ref(where, fmt, shape):
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(5)) * 3).to(where)
    inv = inv_scale(4.0, fmt, where)
    assert_same_quantised(quantize(x, inv, fmt).cpu(), quantize_ref(x.cpu(), inv.cpu(), fmt))
