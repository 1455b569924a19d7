"""Session-wide test set-up.

Triton fixes interpreter vs. compiled mode when it is first imported, and some libraries the tests
use (transformers, torch.onnx) may import it. On a machine without a GPU, import it first, under
TRITON_INTERPRET=1, so the kernel tests in tests/ops run through the interpreter in the same pytest
process. The variable is restored at once: elsewhere the ops keep taking their plain-PyTorch refs.
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None
# The project's data sits beside the checkout (CI has it); tests that need it skip without it.
SQUAD_DEV = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dev-v1.1.json"
_INTERPRET_AT_START = os.environ.get("TRITON_INTERPRET", "0") == "1"

if not torch.cuda.is_available():
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton.language  # noqa: F401
    except ImportError:  # triton is an optional extra; tests/ops skip without it
        pass
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


@pytest.fixture
def interpret(monkeypatch):
    """Run Triton kernels on the CPU through Triton's interpreter for this test."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed (optional `gpu` extra)")
    if torch.cuda.is_available() and not _INTERPRET_AT_START:
        pytest.skip("CUDA present: kernels are tested compiled; set TRITON_INTERPRET=1 to interpret")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if "triton" not in sys.modules:
        import triton.language  # noqa: F401  (imported now, under TRITON_INTERPRET=1)
    from bertrt.ops._triton import triton_interprets

    if not triton_interprets():
        pytest.skip("triton was imported in compiled mode earlier in this process")


@pytest.fixture(scope="session")
def squad_dev() -> Path:
    """The official SQuAD v1.1 dev set from ../shared/data."""
    if not SQUAD_DEV.is_file():
        pytest.skip(f"SQuAD v1.1 dev set not found at {SQUAD_DEV} (the shared data folder)")
    return SQUAD_DEV
