"""A QSL and a backend for the SUT's tests: fast, and exact about what comes back; and a plain
LoadGen run against a started SUT (``drive``)."""

from __future__ import annotations

import time

import mlperf_loadgen as lg
import numpy as np


class FakeQSL:
    """``count`` samples of random lengths whose token ids encode (sample, position)."""

    def __init__(self, count: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.lengths = rng.integers(5, 61, size=count).astype(np.int64)
        self.input_ids = [np.arange(n, dtype=np.int32) + 1000 * i for i, n in enumerate(self.lengths)]
        self.token_type_ids = [np.ones(n, dtype=np.int32) * (i % 2) for i, n in enumerate(self.lengths)]

    def __len__(self) -> int:
        return len(self.lengths)

    def construct(self):
        return lg.ConstructQSL(len(self), len(self), lambda _: None, lambda _: None)


class FakeBackend:
    """Logits = (input id, token type) of each token, so every response can be traced to its sample."""

    name = "fake"

    def __init__(self, padded: bool = False, delay_s: float = 0.0, fail: bool = False):
        self.padded, self.delay_s, self.fail = padded, delay_s, fail
        self.batches: list[list[int]] = []  # lengths of each batch, in run order

    def run(self, input_ids, token_type_ids):
        if self.fail:
            raise RuntimeError("device lost")
        self.batches.append([len(x) for x in input_ids])
        time.sleep(self.delay_s)
        return np.stack([np.concatenate(input_ids), np.concatenate(token_type_ids)], axis=1).astype(np.float32)


def drive(sut, qsl, options, out):
    """LoadGen against the started ``sut`` as ``runner.run_test`` does, without its scoring and
    interrupt handling; stops the SUT and returns it."""
    from bertrt.harness.loadgen.settings import log_settings, loadgen_settings

    sut_handle, qsl_handle = sut.construct(), qsl.construct()
    try:
        lg.StartTestWithLogSettings(sut_handle, qsl_handle, loadgen_settings(options, len(qsl)),
                                    log_settings(out), str(out / "audit.config"))
    finally:
        sut.stop()
        lg.DestroySUT(sut_handle)
        lg.DestroyQSL(qsl_handle)
    return sut
