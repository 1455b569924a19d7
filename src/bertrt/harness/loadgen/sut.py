"""The system under test: LoadGen hands it samples, worker threads batch them by tokens and answer.

``issue_queries`` only appends the samples to a pending list under a lock and wakes a worker, so
LoadGen's issuing thread is never held up by inference. Workers sleep on a condition variable
(no polling) and, once woken, take a batch from the pending samples:

- Offline: pending samples are kept sorted by length, so each batch holds similar lengths (no
  padding waste for padded backends) and is as large as the token budget allows.
- Server / MultiStream / SingleStream: whatever is pending, oldest first, up to the token budget;
  no waiting for a batch to fill. Under Server the budget is also capped so that one batch takes
  about a third of the latency target, from a running estimate of the backend's tokens/s.

Under Offline (and under Server while a full batch is already waiting) a worker launches a batch
before finishing the one ahead of it, so with an asynchronous backend (``submit``: the bertrt
engine on CUDA) packing, copying and completing one batch overlap the GPU's work on the next.
Batches also stay within the backend's own limits (``max_batch_samples``, ``max_tokens``) so the engine never splits them.

Each sample is completed with its raw logits, a (len, 2) float32 array passed to LoadGen by
pointer; the array stays referenced until ``QuerySamplesComplete`` has returned (LoadGen copies
it then, in accuracy mode).
"""

from __future__ import annotations

import threading
import time

import numpy as np

from bertrt.harness.loadgen.settings import Scenario

# Share of the Server latency target one batch may take: a sample can wait for the batch ahead of
# it and then run in its own, and Poisson arrivals need headroom.
LATENCY_SHARE = 1 / 3


class BatchingSUT:
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
        self.backend, self.qsl, self.scenario = backend, qsl, scenario
        self.max_batch_tokens = max_batch_tokens
        self.latency_target_s = latency_target_s if scenario is Scenario.SERVER else None
        self._cond = threading.Condition()
        self._pending: list[tuple[int, int, float]] = []  # (LoadGen response id, sample index, issue time)
        self._sorted = True
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, name=f"sut-worker-{i}", daemon=True)
                         for i in range(workers)]
        self._tokens_per_s: float | None = None
        self._last_done = 0.0  # perf_counter() when the last batch's result came back
        self.error: BaseException | None = None
        self.batches = 0
        self.samples = 0
        # One row per finished batch (trace.COLUMNS), written to batches.json by the runner.
        self.trace: list[tuple[float, float, float, float, float, int, int, int]] = []
        self._t0 = time.perf_counter()

    # --- LoadGen callbacks ------------------------------------------------------------------

    def issue_queries(self, query_samples) -> None:
        issued = time.perf_counter()
        items = [(s.id, s.index, issued) for s in query_samples]
        with self._cond:
            self._pending.extend(items)
            self._sorted = False
            self._cond.notify()

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
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """Let the workers finish what is pending, then end them."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._threads:
            t.join()

    # --- batching ---------------------------------------------------------------------------

    def _budget(self) -> int:
        budget = self.max_batch_tokens
        engine_tokens = getattr(self.backend, "max_tokens", None)
        if engine_tokens:
            budget = min(budget, engine_tokens)
        if self.latency_target_s is not None and self._tokens_per_s is not None:
            budget = min(budget, int(self._tokens_per_s * self.latency_target_s * LATENCY_SHARE))
        return budget

    def _cost(self, count: int, longest: int, total: int) -> int:
        return count * longest if self.backend.padded else total

    def _next_batch_size(self) -> tuple[int, bool]:
        """How many pending samples, from the front, the next batch takes, and whether a limit (the
        token budget or the backend's sample limit) cut it short: a full batch (caller holds the lock)."""
        lengths = self.qsl.lengths
        budget = self._budget()
        max_samples = getattr(self.backend, "max_batch_samples", None)
        count, longest, total = 0, 0, 0
        for _, index, _ in self._pending:
            n = int(lengths[index])
            if count and (count == max_samples or self._cost(count + 1, max(longest, n), total + n) > budget):
                return count, True
            count, longest, total = count + 1, max(longest, n), total + n
        # Everything pending fits: full only if it reaches a limit exactly.
        return count, count == max_samples or (count > 0 and self._cost(count, longest, total) >= budget)

    def _backlogged(self) -> bool:
        """Whether the pending samples already fill a whole batch."""
        with self._cond:
            return self._next_batch_size()[1]

    def _take_batch(self) -> list[tuple[int, int, float]]:
        """Remove and return the next batch from ``_pending`` (caller holds the lock)."""
        if self.scenario is Scenario.OFFLINE and not self._sorted:
            self._pending.sort(key=lambda item: self.qsl.lengths[item[1]])
            self._sorted = True
        count, _ = self._next_batch_size()
        batch = self._pending[:count]
        del self._pending[:count]
        return batch

    def _work(self) -> None:
        """Take a batch, launch it, then finish the batch launched before it: with backends that
        launch asynchronously (``submit``), the host work of one batch overlaps the GPU work of
        the next. Offline always does this. Under Server it does so only while a full batch is
        already waiting (a backlog): otherwise a batch taken while another runs would close early
        and small, so the running batch is finished first and the next is taken as late as
        possible, with as many samples as have arrived. (Without the backlog rule an H100 Server
        run lost ~10% of Offline's throughput to host work between batches and fell behind at
        3,200-3,500 samples/s.) With nothing pending a batch is finished at once."""
        offline = self.scenario is Scenario.OFFLINE
        in_flight = None
        while True:
            if in_flight is not None and not offline and not self._backlogged():
                self._complete(*in_flight)
                in_flight = None
            with self._cond:
                while not self._pending and not self._stopping and in_flight is None:
                    self._cond.wait()
                batch = self._take_batch() if self._pending else None
                waiting = len(self._pending)
            if batch is None and in_flight is None:
                return  # stopping, and nothing left
            launched = self._launch(batch, waiting) if batch is not None else None
            if in_flight is not None:
                self._complete(*in_flight)
            in_flight = launched

    def _launch(self, batch: list[tuple[int, int, float]], waiting: int = 0):
        ids = [self.qsl.input_ids[index] for _, index, _ in batch]
        types = [self.qsl.token_type_ids[index] for _, index, _ in batch]
        start = time.perf_counter()
        try:
            submit = getattr(self.backend, "submit", None)
            pending = submit(ids, types) if submit is not None else _Ready(self.backend.run(ids, types))
        except BaseException as exc:  # noqa: BLE001 - LoadGen would wait forever for these samples
            pending = _Failed(exc)
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
        # The batch's own service time: from its launch, or from the previous batch's result when
        # it was launched behind that one (pipelined), to its result.
        done = time.perf_counter()
        elapsed = done - max(start, self._last_done)
        self._last_done = done
        rate = self._cost(len(lengths), max(lengths), sum(lengths)) / max(elapsed, 1e-6)
        self._tokens_per_s = rate if self._tokens_per_s is None else 0.8 * self._tokens_per_s + 0.2 * rate
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


class _Ready:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc

    def result(self):
        raise self.exc
