"""Token-budget dynamic batching: the one batcher behind the LoadGen SUT and the HTTP server.

Callers ``put`` items (one model window each) into a pending list under a lock and return at once;
worker threads sleep on a condition variable (no polling) and cut batches off the pending items:

- whatever is pending, oldest first, up to the token budget (``max_batch_tokens`` real tokens, or
  ``count * longest`` for padded backends) and the backend's sequence limit; or, with
  ``sort_by_length`` (LoadGen Offline), the pending items sorted by length first, so each batch
  holds similar lengths;
- items of different ``_group`` (say, question answering and embeddings) never share a batch;
- with ``max_delay_s`` a worker that finds less than a full batch waits until the oldest item has
  waited that long or a full batch has arrived, whichever comes first;
- with ``latency_target_s`` the budget is also capped so that one batch takes about a third of
  the target, from a running estimate of the backend's tokens/s;
- with ``max_queue_tokens`` a ``put`` that would leave more tokens pending is refused
  (``QueueFull``): memory stays bounded under any load.

A worker may launch a batch before finishing the one ahead of it (always with
``always_pipeline``, otherwise only while a full batch is already waiting), so with an
asynchronous backend packing, copying and completing one batch overlap the device's work on the
next. Subclasses say what an item is (``_length``, ``_arrival``, ``_group``) and how a batch is
run (``_launch``, ``_complete``). Workers are numbered: each ``_launch`` is told which worker calls
it, so a subclass may give each worker its own device (one queue feeding several GPUs, each
worker taking the next batch when its device is free, so a faster device takes more).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Sequence
from typing import Any

# Share of the latency target one batch may take: an item can wait for the batch ahead of it and
# then run in its own, and Poisson arrivals need headroom.
LATENCY_SHARE = 1 / 3


class QueueFull(Exception):
    """Admitting the items would leave more than ``max_queue_tokens`` tokens pending."""

    def __init__(self, queued: int, adding: int, limit: int):
        super().__init__(f"{queued} tokens queued, {adding} more would pass the limit of {limit}")
        self.queued, self.adding, self.limit = queued, adding, limit


class TokenBatcher:
    """Pending items, the rule that cuts token-budget batches from them, and the worker threads.

    Args:
        max_batch_tokens: upper bound on a batch's cost in tokens (a single longer item still runs alone).
        max_batch_items: upper bound on a batch's items (the backend's sequence limit), None for none.
        padded: a batch costs ``count * longest`` tokens instead of the sum of its lengths.
        sort_by_length: batch the pending items in length order instead of arrival order.
        always_pipeline: launch the next batch before completing the running one even without a backlog.
        max_delay_s: how long the oldest pending item may wait for a fuller batch.
        latency_target_s: caps the budget at ``LATENCY_SHARE`` of it, at the measured tokens/s.
        max_queue_tokens: bound on the pending tokens (``put`` raises ``QueueFull`` past it).
        workers: threads that run batches, numbered 0 to ``workers - 1`` (one per device; on the CPU
            more than one overlaps host work).
        name: prefix of the worker threads' names.
    """

    def __init__(self, *, max_batch_tokens: int, max_batch_items: int | None = None, padded: bool = False,
                 sort_by_length: bool = False, always_pipeline: bool = False, max_delay_s: float = 0.0,
                 latency_target_s: float | None = None, max_queue_tokens: int | None = None,
                 workers: int = 1, name: str = "batcher"):
        if max_batch_tokens <= 0:
            raise ValueError(f"max_batch_tokens must be positive, got {max_batch_tokens}")
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_items = max_batch_items
        self.padded = padded
        self.sort_by_length = sort_by_length
        self.always_pipeline = always_pipeline
        self.max_delay_s = max_delay_s
        self.latency_target_s = latency_target_s
        self.max_queue_tokens = max_queue_tokens
        self._cond = threading.Condition()
        self._pending: list = []
        self._sorted = True
        self._stopping = False
        self.queued_tokens = 0
        self._tokens_per_s: float | None = None
        # Per worker: perf_counter() when its last batch's result came back, and the seconds its
        # batches took (each from its launch, or from the worker's previous result when pipelined).
        self._last_done = [0.0] * workers
        self.busy_s = [0.0] * workers
        self._threads = [threading.Thread(target=self._work, args=(i,), name=f"{name}-{i}", daemon=True)
                         for i in range(workers)]

    # --- what an item is (subclasses) ---------------------------------------------------------

    def _length(self, item) -> int:
        raise NotImplementedError

    def _arrival(self, item) -> float:
        """perf_counter() when the item was put (for ``max_delay_s``)."""
        raise NotImplementedError

    def _group(self, item) -> Hashable:
        """Items of different groups never share a batch."""
        return None

    # --- how a batch runs (subclasses) --------------------------------------------------------

    def _enter_worker(self, worker: int) -> None:
        """Called once on each worker's own thread before its first batch (say, to pick its device)."""

    def _launch(self, batch: list, waiting: int = 0, worker: int = 0) -> tuple:
        """Start running ``batch`` on ``worker`` (``waiting`` items were left pending); the tuple goes
        to ``_complete``, on the same worker's thread."""
        raise NotImplementedError

    def _complete(self, *launched: Any) -> None:
        """Wait for a launched batch and hand its results out. Must not raise."""
        raise NotImplementedError

    # --- queue -------------------------------------------------------------------------------

    def put(self, items: Sequence) -> None:
        """Add items to the pending list and wake a worker; all of them or, on ``QueueFull``, none."""
        tokens = sum(self._length(item) for item in items)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the batcher is stopping")
            if self.max_queue_tokens is not None and self.queued_tokens + tokens > self.max_queue_tokens:
                raise QueueFull(self.queued_tokens, tokens, self.max_queue_tokens)
            self._pending.extend(items)
            self.queued_tokens += tokens
            self._sorted = False
            self._cond.notify()

    def discard(self, items: Sequence) -> int:
        """Remove those of ``items`` still pending (their caller gave up); returns how many were."""
        drop = {id(item) for item in items}
        with self._cond:
            kept = [item for item in self._pending if id(item) not in drop]
            removed = [item for item in self._pending if id(item) in drop]
            self._pending = kept
            self.queued_tokens -= sum(self._length(item) for item in removed)
        return len(removed)

    @property
    def pending_items(self) -> int:
        return len(self._pending)

    @property
    def alive(self) -> bool:
        """Every worker thread is running (false before ``start`` and after ``stop``)."""
        return all(t.is_alive() for t in self._threads)

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self):
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """Refuse new items, let the workers finish what is pending, then end them."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._threads:
            if t.is_alive():
                t.join()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # --- batching ------------------------------------------------------------------------------

    def _budget(self) -> int:
        budget = self.max_batch_tokens
        if self.latency_target_s is not None and self._tokens_per_s is not None:
            budget = min(budget, int(self._tokens_per_s * self.latency_target_s * LATENCY_SHARE))
        return budget

    def _cost(self, count: int, longest: int, total: int) -> int:
        return count * longest if self.padded else total

    def _next_batch_size(self) -> tuple[int, bool]:
        """How many pending items, from the front, the next batch takes, and whether a limit (the
        token budget, the sequence limit or a change of group) cut it short: a full batch (caller
        holds the lock)."""
        budget = self._budget()
        limit = self.max_batch_items
        count, longest, total = 0, 0, 0
        group = self._group(self._pending[0]) if self._pending else None
        for item in self._pending:
            n = self._length(item)
            if count and (count == limit or self._group(item) != group
                          or self._cost(count + 1, max(longest, n), total + n) > budget):
                return count, True
            count, longest, total = count + 1, max(longest, n), total + n
        # Everything pending fits: full only if it reaches a limit exactly.
        return count, count == limit or (count > 0 and self._cost(count, longest, total) >= budget)

    def _backlogged(self) -> bool:
        """Whether the pending items already fill a whole batch."""
        with self._cond:
            return bool(self._pending) and self._next_batch_size()[1]

    def _take_batch(self) -> list:
        """Remove and return the next batch from the pending items (caller holds the lock)."""
        if self.sort_by_length and not self._sorted:
            self._pending.sort(key=self._length)
            self._sorted = True
        count, _ = self._next_batch_size()
        batch = self._pending[:count]
        del self._pending[:count]
        self.queued_tokens -= sum(self._length(item) for item in batch)
        return batch

    def _wait_for_work(self, in_flight) -> None:
        """Sleep until there is a batch worth taking, or something to finish (caller holds the lock)."""
        while not self._stopping and in_flight is None:
            if not self._pending:
                self._cond.wait()
                continue
            if self.max_delay_s <= 0 or self._next_batch_size()[1]:
                return
            remaining = self._arrival(self._pending[0]) + self.max_delay_s - time.perf_counter()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def _work(self, worker: int = 0) -> None:
        """Take a batch, launch it, then finish the batch launched before it. Without
        ``always_pipeline`` this overlap happens only while a full batch is already waiting (a
        backlog): otherwise a batch taken while another runs would close early and small, so the
        running batch is finished first and the next is taken as late as possible, with as many
        items as have arrived. (Without the backlog rule an H100 LoadGen Server run lost ~10% of
        Offline's throughput to host work between batches and fell behind at 3,200-3,500
        samples/s.) With nothing pending a batch is finished at once."""
        self._enter_worker(worker)
        in_flight = None
        while True:
            if in_flight is not None and not self.always_pipeline and not self._backlogged():
                self._complete(*in_flight)
                in_flight = None
            with self._cond:
                self._wait_for_work(in_flight)
                batch = self._take_batch() if self._pending else None
                waiting = len(self._pending)
                if waiting and len(self._threads) > 1:
                    self._cond.notify()  # one put of many items woke one worker: pass the rest on
            if batch is None and in_flight is None:
                return  # stopping, and nothing left
            launched = self._launch(batch, waiting, worker) if batch is not None else None
            if in_flight is not None:
                self._complete(*in_flight)
            in_flight = launched

    def _observe(self, cost: int, start: float, worker: int = 0) -> float:
        """Note a finished batch of ``cost`` tokens launched at ``start`` by ``worker``; returns
        perf_counter() now.

        The batch's own service time runs from its launch, or from the worker's previous batch's
        result when it was launched behind that one (pipelined), to its result. The tokens/s
        estimate is of one worker (one device), which is what bounds one batch's latency.
        """
        done = time.perf_counter()
        elapsed = done - max(start, self._last_done[worker])
        self._last_done[worker] = done
        self.busy_s[worker] += elapsed
        rate = cost / max(elapsed, 1e-6)
        self._tokens_per_s = rate if self._tokens_per_s is None else 0.8 * self._tokens_per_s + 0.2 * rate
        return done


class Ready:
    """A batch that ran synchronously: ``result()`` gives its value."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


class Failed:
    """A batch whose launch raised: ``result()`` raises it again."""

    def __init__(self, exc: BaseException):
        self.exc = exc

    def result(self):
        raise self.exc
