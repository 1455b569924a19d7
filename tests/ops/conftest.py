"""Fixtures of the kernel tests: where and how the Triton kernels run.

Triton 3.x fixes interpreter vs. compiler for its own standard library when ``triton`` is first
imported. bertrt imports triton only when a kernel runs, so on a CPU-only machine the ``interpret``
fixture sets TRITON_INTERPRET=1 and imports triton under it; tests elsewhere never see triton and
their ops take the plain-PyTorch refs (TRITON_INTERPRET is unset again after each test). On a CUDA
machine the kernels are tested compiled (``gpu``) and the interpreter tests are skipped, unless
TRITON_INTERPRET=1 was already set when pytest started.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

from ops_testing import HAS_TRITON

_INTERPRET_AT_START = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_interprets() -> bool:
    from bertrt.ops._triton import triton_interprets

    return triton_interprets()


@pytest.fixture
def gpu(monkeypatch):
    """Run Triton kernels compiled on the GPU for this test."""
    if not (HAS_TRITON and torch.cuda.is_available()):
        pytest.skip("needs a CUDA GPU and triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if "triton" in sys.modules and _triton_interprets():
        pytest.skip("triton was imported in interpreter mode (TRITON_INTERPRET=1)")


@pytest.fixture
def no_interpret(monkeypatch):
    """Plain CPU: the public ops must take their refs."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.fixture(params=["interpret", "gpu"])
def where(request):
    """Each kernel test twice: under the interpreter and compiled on the GPU (where there is one)."""
    request.getfixturevalue(request.param)
    return "cuda" if request.param == "gpu" else "cpu"
