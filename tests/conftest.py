"""Session-wide test set-up.

Triton fixes interpreter vs. compiled mode when it is first imported, and some libraries the tests
use (transformers, torch.onnx) may import it. On a machine without a GPU, import it first, under
TRITON_INTERPRET=1, so the kernel tests in tests/ops run through the interpreter in the same pytest
process. The variable is restored at once: elsewhere the ops keep taking their plain-PyTorch refs.
"""

import os

import torch

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
