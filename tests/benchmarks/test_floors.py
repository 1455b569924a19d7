"""benchmarks/floors.py measures a GPU; on the CPU only what it measures and its refusal are checked."""

import runpy
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "floors.py"


def test_one_floor_per_token_count_of_the_latency_table():
    module = runpy.run_path(str(SCRIPT))
    assert module["cells"]() == [(128, 1, 128), (384, 1, 384), (1024, 8, 128), (3072, 8, 384), (4096, 32, 128),
                                 (12288, 32, 384), (16384, 128, 128), (49152, 128, 384)]


def test_the_engine_projections_compute_what_the_engine_does():
    module = runpy.run_path(str(SCRIPT))
    x, w, b = torch.randn(5, 8), torch.randn(6, 8), torch.randn(6)
    out = torch.randn(5, 6)
    torch.testing.assert_close(module["engine_projection"]("qkv", x, w, b, out)(), x @ w.T + b)
    expected = out + x @ w.T
    torch.testing.assert_close(module["engine_projection"]("attn_out", x, w, b, out.clone())(), expected)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_refuses_without_a_gpu(tmp_path):
    module = runpy.run_path(str(SCRIPT))
    with pytest.raises(SystemExit, match="no CUDA device"):
        module["main"]([str(tmp_path)])
