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

Several devices (a ``DeviceBackends``, ``bertrt loadgen --devices``): the one pending list feeds
them all, with a worker thread per device that takes the next batch whenever its device is free,
so a faster device takes more. Each sample is taken off the list by exactly one worker and
completed by that worker exactly once. A backend that raises ends the run: the failing batch and
every batch after it, on any device, are completed at once with empty responses (LoadGen never
waits on them, and nothing more is computed for a run that measures nothing), and the runner
raises the first error, naming its device. Per device the SUT counts samples, batches, tokens
and busy seconds (``device_counters``).
"""

from __future__ import annotations

import time

import numpy as np

from bertrt.batching import Failed, Ready, TokenBatcher
from bertrt.harness.loadgen.settings import Scenario


class _Aborted(Exception):
    """What a batch launched after another batch failed is answered with (never run)."""


class BatchingSUT(TokenBatcher):
    """Token-budget batcher in front of one backend, or of one backend per device.

    Args:
        backend: ``run(ids_list, types_list) -> (total_tokens, 2) float32``; ``padded`` attribute;
            or a ``DeviceBackends`` (``.backends``: one such backend per device).
        qsl: the ``SquadQSL`` whose sample indices LoadGen issues.
        scenario: decides the batching policy (see the module docstring).
        max_batch_tokens: upper bound on a batch's tokens (padded tokens for padded backends).
        latency_target_s: Server latency target; caps batches as described above.
        workers: inference threads per device (1 is right for a GPU; more overlap host work on CPU).
    """

    def __init__(self, backend, qsl, *, scenario: Scenario, max_batch_tokens: int,
                 latency_target_s: float | None = None, workers: int = 1):
        backends = list(getattr(backend, "backends", (backend,)))
        engine_tokens = _smallest(getattr(b, "max_tokens", None) for b in backends)
        offline = scenario is Scenario.OFFLINE
        super().__init__(max_batch_tokens=min(max_batch_tokens, engine_tokens or max_batch_tokens),
                         max_batch_items=_smallest(getattr(b, "max_batch_samples", None) for b in backends),
                         padded=backend.padded, sort_by_length=offline, always_pipeline=offline,
                         latency_target_s=latency_target_s if scenario is Scenario.SERVER else None,
                         workers=workers * len(backends), name="sut-worker")
        self.backend, self.qsl, self.scenario = backend, qsl, scenario
        # Worker w runs on backend w % len(backends): with one backend, every worker on it.
        self._backends = [backends[w % len(backends)] for w in range(len(self._threads))]
        self._device_index = [w % len(backends) for w in range(len(self._threads))]
        self.device_names = [str(getattr(b, "device", "?")) for b in backends]
        # Pending items are (LoadGen response id, sample index, issue time).
        self.error: BaseException | None = None
        self.error_device: str | None = None
        # Per worker (each counter written by its own thread only): batches, samples, tokens, and
        # samples answered empty after a failure.
        self._batches = [0] * len(self._threads)
        self._samples = [0] * len(self._threads)
        self._tokens = [0] * len(self._threads)
        self._failed = [0] * len(self._threads)
        # One row per finished batch (trace.COLUMNS), written to batches.json by the runner.
        self.trace: list[tuple] = []
        self._t0 = time.perf_counter()

    @property
    def batches(self) -> int:
        return sum(self._batches)

    @property
    def samples(self) -> int:
        """Samples answered with their logits so far (not those answered empty after a failure)."""
        return sum(self._samples)

    @property
    def failed_samples(self) -> int:
        """Samples answered empty because their batch, or one before it, failed."""
        return sum(self._failed)

    def device_counters(self) -> list[dict]:
        """Per device: its name, samples, batches, tokens, busy seconds (the sum of its batches'
        service times) and share of all samples answered."""
        total = max(1, self.samples)
        rows = [{"device": name, "samples": 0, "batches": 0, "tokens": 0, "busy_s": 0.0}
                for name in self.device_names]
        for w, d in enumerate(self._device_index):
            rows[d]["samples"] += self._samples[w]
            rows[d]["batches"] += self._batches[w]
            rows[d]["tokens"] += self._tokens[w]
            rows[d]["busy_s"] += self.busy_s[w]
        for row in rows:
            row["busy_s"] = round(row["busy_s"], 4)
            row["share"] = round(row["samples"] / total, 4)
        return rows

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

    def _enter_worker(self, worker: int) -> None:
        # A thread's current CUDA device is what Triton launches on and what streams and events
        # default to: each worker makes its own device current, once. (A device without an index
        # is left as it is: ``make_backends`` gives every GPU its index.)
        device = getattr(self._backends[worker], "device", None)
        if getattr(device, "type", None) != "cuda" or getattr(device, "index", None) is None:
            return
        try:
            import torch

            torch.cuda.set_device(device.index)
        except BaseException as exc:  # noqa: BLE001 - a worker that died here would leave LoadGen waiting
            if self.error is None:
                self.error, self.error_device = exc, self.device_names[self._device_index[worker]]

    def _launch(self, batch: list[tuple[int, int, float]], waiting: int = 0, worker: int = 0):
        ids = [self.qsl.input_ids[index] for _, index, _ in batch]
        types = [self.qsl.token_type_ids[index] for _, index, _ in batch]
        start = time.perf_counter()
        backend = self._backends[worker]
        try:
            if self.error is not None:
                raise _Aborted("not run: a batch failed earlier in the run")
            submit = getattr(backend, "submit", None)
            pending = submit(ids, types) if submit is not None else Ready(backend.run(ids, types))
        except BaseException as exc:  # noqa: BLE001 - LoadGen would wait forever for these samples
            pending = Failed(exc)
        return batch, [len(x) for x in ids], pending, start, waiting, time.perf_counter(), worker

    def _complete(self, batch: list[tuple[int, int, float]], lengths: list[int], pending, start: float,
                  waiting: int = 0, submitted: float | None = None, worker: int = 0) -> None:
        import mlperf_loadgen as lg

        try:
            logits = np.ascontiguousarray(pending.result(), dtype=np.float32)
            if logits.shape != (sum(lengths), 2):
                raise RuntimeError(f"backend {self._backends[worker].name} returned logits of shape "
                                   f"{logits.shape}, expected ({sum(lengths)}, 2)")
        except BaseException as exc:  # noqa: BLE001 - LoadGen would wait forever for these samples
            if self.error is None and not isinstance(exc, _Aborted):
                self.error, self.error_device = exc, self.device_names[self._device_index[worker]]
            self._failed[worker] += len(batch)
            lg.QuerySamplesComplete([lg.QuerySampleResponse(qid, 0, 0) for qid, _, _ in batch])
            return
        done = self._observe(self._cost(len(lengths), max(lengths), sum(lengths)), start, worker)
        # Each sample's rows by address, computed rather than through a numpy view and its ctypes
        # per sample: half the host time per 128-sample batch (0.18 against 0.37 ms on CI's CPU).
        base, row = logits.ctypes.data, logits.strides[0]
        offsets = np.cumsum([0, *lengths]).tolist()
        responses = [lg.QuerySampleResponse(qid, base + row * offsets[k], row * n)
                     for k, ((qid, _, _), n) in enumerate(zip(batch, lengths))]
        lg.QuerySamplesComplete(responses)
        # `logits` is released only now, after LoadGen has copied the data.
        del logits
        self._batches[worker] += 1
        self._samples[worker] += len(batch)
        self._tokens[worker] += offsets[-1]
        completed = time.perf_counter()
        issued = min(item[2] for item in batch)
        submitted = start if submitted is None else submitted
        self.trace.append((*(round(t - self._t0, 6) for t in (issued, start, submitted, done, completed)),
                           len(batch), offsets[-1], waiting, self._device_index[worker]))


def _smallest(values) -> int | None:
    """The smallest of the values that are not None (None when all are)."""
    known = [v for v in values if v is not None]
    return min(known) if known else None
