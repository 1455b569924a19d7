"""MLPerf Inference BERT on the real LoadGen (``mlcommons-loadgen``, an optional dependency).

- ``settings``: scenario/mode/backend options and their LoadGen ``TestSettings``.
- ``qsl``: SQuAD dev features as the query sample library (tokenised before timing).
- ``sut``: the non-blocking, token-budget batching system under test.
- ``backends``: bertrt (packed), Hugging Face PyTorch and onnxruntime (padded).
- ``accuracy``: accuracy-log parsing and EM/F1; ``report``: summary parsing and tables.
- ``runner``: ``prepare`` + ``run_test`` tie them together.

LoadGen itself is imported only inside the functions that call it.
"""

from bertrt.harness.loadgen.settings import BackendName, HarnessOptions, Mode, Scenario

__all__ = ["BackendName", "HarnessOptions", "Mode", "Scenario"]
