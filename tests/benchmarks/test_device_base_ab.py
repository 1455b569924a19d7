"""benchmarks/device_base_ab.py measures a GPU; on the CPU its patching of the engine's tables and
its whole dry run (toy sizes under Triton's interpreter, in a subprocess) are checked."""

from __future__ import annotations

import importlib.util
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bertrt.engine import sublayers
from bertrt.engine.format import OP_BACKENDS, EngineError, parse_gemm_choices
from bertrt.ops.attention_triton import TILINGS, AttentionConfig
from bertrt.ops.residual_layernorm import LayerNormConfig

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "device_base_ab.py"


def test_forced_names_extra_tilings_and_a_layernorm_tiling_then_restores_them():
    forced = runpy.run_path(str(SCRIPT))["forced"]
    extra, layernorm = {"ab-test": AttentionConfig(128, 128, 8, 1)}, LayerNormConfig(1, 4)
    tilings, backends, end_norm = dict(TILINGS), OP_BACKENDS["attention"], sublayers.bias_residual_layernorm
    with forced(extra, layernorm):
        assert parse_gemm_choices({"attention": {"128": "ab-test"}}, source="t") == {"attention": {128: "ab-test"}}
        assert sublayers.attention_for("ab-test").keywords["config"] == extra["ab-test"]
        assert sublayers.bias_residual_layernorm.keywords["config"] == layernorm
        x, w, b, residual = torch.randn(5, 8), torch.randn(6, 8), torch.randn(6), torch.randn(5, 6)
        got = sublayers.end_sublayer(x, w, b, residual, torch.ones(6), torch.zeros(6), 1e-12, "cublas")
        torch.testing.assert_close(got, torch.nn.functional.layer_norm(x @ w.T + b + residual, (6,), eps=1e-12))
    assert dict(TILINGS) == tilings and OP_BACKENDS["attention"] == backends
    assert sublayers.bias_residual_layernorm is end_norm
    with pytest.raises(EngineError, match="backends are"):
        parse_gemm_choices({"attention": {"128": "ab-test"}}, source="t")


@pytest.mark.slow
def test_dry_run_checks_and_times_every_candidate(tmp_path):
    if importlib.util.find_spec("triton") is None:
        pytest.skip("needs triton (its interpreter)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path), "--commit", "0123abc"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "base_ab.json").read_text())
    assert report["environment"]["git_sha"] == "0123abc" and report["dry_run"] is True
    module = runpy.run_path(str(SCRIPT))
    sections = report["sections"]
    assert set(sections) == {"attention", "layernorm", "engine"}
    for case in sections["attention"]["cases"].values():
        for name in (*TILINGS, *module["EXTRA_TILINGS"], "triton-default", "torch-varlen"):
            assert "ms" in case["results"][name], (name, case["results"][name])
    for row in sections["layernorm"]["shapes"].values():
        assert set(row) >= {"residual", "accumulated"}
        for results in row.values():
            assert all("ms" in results[f"{c.block_t}x{c.num_warps}w"] for c in module["LAYERNORM_TILINGS"])
    variants = sections["engine"]["variants"]
    assert {"tuned", "attention=torch", *(f"attention={n}" for n in TILINGS)} <= set(variants)
    assert any(name.startswith("layernorm=") for name in variants)
    for name, variant in variants.items():
        for shape in ("b32s128", "b1s128"):
            row = variant["shapes"][shape]
            assert "graphs_ms" in row and "replay_ms" in row, (name, row)
            assert row.get("rel_err", 0.0) <= report["tolerance"]
    assert "engine qa_logits" in done.stdout
