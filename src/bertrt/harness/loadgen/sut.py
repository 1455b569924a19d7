"""The system under test: LoadGen hands it samples, ``bertrt.batching`` batches them by tokens.

``issue_queries`` only appends the samples to the batcher's pending list under a lock and wakes a
worker, so LoadGen's issuing thread is never held up by inference. The batching policy follows the
scenario:

- Offline: pending samples are kept sorted by length, so each batch holds similar lengths (no
  padding waste for padded backends) and is as large as the token budget allows, and a batch is
  always launched before the one ahead of it is finished.
- Server / MultiStream / SingleStream: whatever is pending, oldest first, up to the token budget;
  no waiting for a batch to fill. Under Server the budget is also capped so that one batch takes
  about a third of the latency target, from a running estimate of the backend's tokens/s.

Batches also stay within the backend's own limits (``max_batch_samples``, ``max_tokens``) so the
engine never splits them.

Each sample is completed with its raw logits, a (len, 2) float32 array passed to LoadGen by
pointer; the array stays referenced until ``QuerySamplesComplete`` has returned (LoadGen copies
it then, in accuracy mode).
"""

from __future__ import annotations

import time

import numpy as np

from bertrt.batching import Failed, Ready, TokenBatcher
from bertrt.harness.loadgen.settings import Scenario


class BatchingSUT(TokenBatcher):
    """Token-budget batcher in front of a backend.

    Args:
        backend: ``run(ids_list, types_list) -> (total_tokens, 2) float32``; ``padded`` attribute.
        qsl: the ``SquadQSL`` whose sample indices LoadGen issues.
        scenario: decides the batching policy (see the module docstring).
        max_batch_tokens: upper bound on a batch's tokens (padded tokens for padded backends).
        latency_target_s: Server latency target; caps batches as described above.
        workers: inference threads (1 is right for one GPU; more overlap host work on CPU).
    """

    def __init__(self, backend, qsl, *, scenario: Scenario, max_batch_tokens: int,
                 latency_target_s: float | None = None, workers: int = 1):
        engine_tokens = getattr(backend, "max_tokens", None)
        offline = scenario is Scenario.OFFLINE
        super().__init__(max_batch_tokens=min(max_batch_tokens, engine_tokens or max_batch_tokens),
                         max_batch_items=getattr(backend, "max_batch_samples", None), padded=backend.padded,
                         sort_by_length=offline, always_pipeline=offline,
                         latency_target_s=latency_target_s if scenario is Scenario.SERVER else None,
                         workers=workers, name="sut-worker")
        self.backend, self.qsl, self.scenario = backend, qsl, scenario
        # Pending items are (LoadGen response id, sample index, issue time).
        self.error: BaseException | None = None
        self.batches = 0
        self.samples = 0
        # One row per finished batch (trace.COLUMNS), written to batches.json by the runner.
        self.trace: list[tuple[float, float, float, float, float, int, int, int]] = []
        self._t0 = time.perf_counter()

    def _length(self, item: tuple[int, int, float]) -> int:
        return int(self.qsl.lengths[item[1]])

    def _arrival(self, item: tuple[int, int, float]) -> float:
        return item[2]

    # --- LoadGen callbacks ------------------------------------------------------------------

    def issue_queries(self, query_samples) -> None:
        issued = time.perf_counter()
        self.put([(s.id, s.index, issued) for s in query_samples])

    def flush_queries(self) -> None:
        # Workers never hold samples back waiting for a fuller batch, so there is nothing to flush.
        with self._cond:
            self._cond.notify_all()

    # --- lifecycle --------------------------------------------------------------------------

    def construct(self):
        """Register with LoadGen; returns its handle (free it with ``mlperf_loadgen.DestroySUT``)."""
        import mlperf_loadgen as lg

        return lg.ConstructSUT(self.issue_queries, self.flush_queries)

    def start(self) -> "BatchingSUT":
        self._t0 = time.perf_counter()
        return super().start()

    # --- running batches (TokenBatcher hooks) ----------------------------------------------

    def _launch(self, batch: list[tuple[int, int, float]], waiting: int = 0):
        ids = [self.qsl.input_ids[index] for _, index, _ in batch]
        types = [self.qsl.token_type_ids[index] for _, index, _ in batch]
        start = time.perf_counter()
        try:
            submit = getattr(self.backend, "submit", None)
            pending = submit(ids, types) if submit is not None else Ready(self.backend.run(ids, types))
        except BaseException as exc:  # noqa: BLE001 - LoadGen would wait forever for these samples
            pending = Failed(exc)
        return batch, [len(x) for x in ids], pending, start, waiting, time.perf_counter()

    def _complete(self, batch: list[tuple[int, int, float]], lengths: list[int], pending, start: float,
                  waiting: int = 0, submitted: float | None = None) -> None:
        import mlperf_loadgen as lg

        try:
            logits = np.ascontiguousarray(pending.result(), dtype=np.float32)
            if logits.shape != (sum(lengths), 2):
                raise RuntimeError(f"backend {self.backend.name} returned logits of shape {logits.shape}, "
                                   f"expected ({sum(lengths)}, 2)")
        except BaseException as exc:  # noqa: BLE001 - LoadGen would wait forever for these samples
            self.error = self.error or exc
            lg.QuerySamplesComplete([lg.QuerySampleResponse(qid, 0, 0) for qid, _, _ in batch])
            return
        done = self._observe(self._cost(len(lengths), max(lengths), sum(lengths)), start)
        # Each sample's rows by address, computed rather than through a numpy view and its ctypes
        # per sample: half the host time per 128-sample batch (0.18 against 0.37 ms on CI's CPU).
        base, row = logits.ctypes.data, logits.strides[0]
        offsets = np.cumsum([0, *lengths]).tolist()
        responses = [lg.QuerySampleResponse(qid, base + row * offsets[k], row * n)
                     for k, ((qid, _, _), n) in enumerate(zip(batch, lengths))]
        lg.QuerySamplesComplete(responses)
        # `logits` is released only now, after LoadGen has copied the data.
        del logits
        self.batches += 1
        self.samples += len(batch)
        completed = time.perf_counter()
        issued = min(item[2] for item in batch)
        submitted = start if submitted is None else submitted
        self.trace.append((*(round(t - self._t0, 6) for t in (issued, start, submitted, done, completed)),
                           len(batch), sum(lengths), waiting))

