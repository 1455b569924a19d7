"""Which path the public ops take, checked in fresh interpreters (import-time behaviour)."""

import os
import subprocess
import sys
import textwrap

import pytest

from ops_testing import HAS_TRITON

CALL_EVERY_OP = """
import torch
from bertrt.ops.bias_gelu import bias_gelu, bias_gelu_ref
from bertrt.ops.embed_layernorm import embed_layernorm, embed_layernorm_ref
from bertrt.ops.linear_splitk import linear_splitk, linear_splitk_ref
from bertrt.ops.qa_head import qa_head, qa_head_ref
from bertrt.ops.residual_layernorm import bias_residual_layernorm, bias_residual_layernorm_ref

x, res, table = torch.randn(5, 8), torch.randn(5, 8), torch.randn(10, 8)
ids, w, b, head = torch.arange(5), torch.randn(8), torch.randn(8), torch.randn(2, 8)
results = {
    "embed": (embed_layernorm(ids, ids % 2, ids, table, table, table, w, b, 1e-12),
              embed_layernorm_ref(ids, ids % 2, ids, table, table, table, w, b, 1e-12)),
    "residual": (bias_residual_layernorm(x, b, res, w, b, 1e-12), bias_residual_layernorm_ref(x, b, res, w, b, 1e-12)),
    "gelu": (bias_gelu(x, b), bias_gelu_ref(x, b)),
    "qa": (qa_head(x, head, b[:2]), qa_head_ref(x, head, b[:2])),
    "splitk": (linear_splitk(x, table, 3), linear_splitk_ref(x, table, 3)),
}
"""


def run_python(*parts: str, env_interpret: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if env_interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, "-c", "\n".join(textwrap.dedent(p) for p in parts)], env=env, capture_output=True,
                          text=True, timeout=120)


def test_ops_import_and_run_without_triton():
    # Even with TRITON_INTERPRET=1, a missing triton means the refs, and importing never needs it.
    proc = run_python("""
        import importlib.abc, sys

        class NoTriton(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] == "triton":
                    raise ModuleNotFoundError(f"No module named {name!r}")

        sys.meta_path.insert(0, NoTriton())
        import bertrt, bertrt.reference
    """, CALL_EVERY_OP, """
        for name, (got, ref) in results.items():
            assert torch.equal(got, ref), name
        assert "triton" not in sys.modules
        print("ok")
    """, env_interpret=True)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_importing_ops_does_not_import_triton_and_late_interpret_is_a_clear_error():
    proc = run_python("""
        import os, sys
        import bertrt.ops.bias_gelu, bertrt.ops.embed_layernorm, bertrt.ops.qa_head
        import bertrt.ops.linear_splitk, bertrt.ops.residual_layernorm
        assert "triton" not in sys.modules, "importing an op imported triton"
        import triton  # compiled mode: TRITON_INTERPRET is unset here
        os.environ["TRITON_INTERPRET"] = "1"
        import torch
        from bertrt.ops.bias_gelu import bias_gelu
        try:
            bias_gelu(torch.randn(2, 4), torch.randn(4))
        except RuntimeError as e:
            assert "set TRITON_INTERPRET before triton is imported" in str(e), e
            print("ok")
    """, env_interpret=False)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
