"""Every kernel the engine launches compiles for Hopper (sm_90) on this GPU-less machine.

The interpreter tests check what the kernels compute; lowering to PTX and a cubin is only checked
here, and on the device. Runs ``hopper_compile.py`` in its own process, because this test session
imported Triton in interpreter mode.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bertrt.ops.attention_triton import TILINGS

SCRIPT = Path(__file__).with_name("hopper_compile.py")


def _ptxas_available() -> bool:
    spec = importlib.util.find_spec("triton")
    if spec is None or spec.origin is None:
        return False
    return (Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "ptxas").is_file()


@pytest.mark.skipif(not _ptxas_available(), reason="needs triton with its NVIDIA backend (ptxas)")
def test_every_engine_kernel_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the engine's kernels are tuned with fusion on
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=600)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    failed = [row for row in rows if not row["ok"]]
    assert done.returncode == 0 and not failed, (failed or done.stderr[-3000:])
    kernels = {row["kernel"] for row in rows}
    assert kernels >= {"_embed_layernorm_kernel", "_bias_residual_layernorm_kernel", "_bias_gelu_kernel",
                       "_qa_head_kernel", "_linear_bias_gelu_kernel", "_linear_splitk_kernel",
                       "_varlen_attention_kernel", "_quantize_kernel", "_rotary_kernel", "_gated_act_kernel"}
    windowed = [row for row in rows if row["kernel"] == "_varlen_attention_kernel" and row["constexprs"]["WINDOW"]]
    assert len(windowed) >= 2 * len(TILINGS)  # sliding-window attention in every tiling, fp16 and bf16
    assert all(row["cubin_bytes"] > 0 for row in rows)
    assert {"*fp16", "*bf16"} <= {t for row in rows for t in row["pointers"]}  # both engine dtypes
