"""Requests' windows through the one token-budget batcher (``bertrt.batching``) onto the model.

A request turns into windows (one model sequence each) that are put into the batcher together;
the request's coroutine then awaits one future for all of them. The batcher's worker thread packs
the windows of many requests into one forward pass and hands a batch's results to each event loop
in one call (one wake-up of the loop per batch, not per window), which fills the windows' slots
and settles each request whose windows are all done. A request that gives up (timeout, client
gone) takes its windows out of the queue, so work nobody waits for is not run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import math
import time

import numpy as np

from bertrt.batching import Failed, QueueFull, TokenBatcher
from bertrt.serve.metrics import Metrics
from bertrt.serve.model import ServedModel

log = logging.getLogger("bertrt.serve")


def freeze_heap() -> None:
    """Move everything alive now (the model, torch, the app: ~200k objects) out of the garbage
    collector's reach. A full collection over them takes ~100 ms on an EPYC core, a pause every
    request in flight would wait through; after the freeze one takes well under a millisecond.
    Called once the model is loaded and warm; ``thaw_heap`` at shutdown gives them back, so that
    extension types see their objects freed at exit (nanobind reports leaks otherwise)."""
    gc.collect()
    gc.freeze()


def thaw_heap() -> None:
    gc.unfreeze()


class Overloaded(Exception):
    """The queue is full (or the server is stopping): come back after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TimedOut(Exception):
    """The request's deadline passed before all its windows ran."""


class ModelFailure(Exception):
    """The model raised while running a batch that held this request's windows."""


@dataclasses.dataclass(frozen=True)
class LoopSink:
    """Where a request's results go when it waits on an event loop: the batcher's thread hands a
    batch's results to the loop in one call, whatever the number of windows."""

    loop: asyncio.AbstractEventLoop

    def deliver(self, items: list, error: BaseException | None = None, stats: dict | None = None) -> None:
        def apply():
            for w, value in items:
                w.outputs.fill(w.index, value, error)
        try:
            self.loop.call_soon_threadsafe(apply)
        except RuntimeError:  # the loop has closed: nobody is waiting any more
            pass


class Outputs:
    """What one request waits for: a slot per window and one future, set once every slot is filled
    (or failed with the first error). Only the request's event loop touches it; ``tag`` is free for
    whoever queues its windows (the model process's client keys requests by it)."""

    def __init__(self, count: int, loop: asyncio.AbstractEventLoop):
        self.values: list = [None] * count
        self.remaining = count
        self.future = loop.create_future()
        self.sink = LoopSink(loop)
        self.tag: int | None = None

    def fill(self, index: int, value=None, error: BaseException | None = None) -> None:
        if self.future.done():
            return
        if error is not None:
            self.future.set_exception(error)
            return
        self.values[index] = value
        self.remaining -= 1
        if not self.remaining:
            self.future.set_result(self.values)


@dataclasses.dataclass(eq=False)
class Window:
    """One model sequence of one request, and where its result goes (``outputs.sink``)."""

    kind: str
    input_ids: np.ndarray  # (len,) int32
    token_type_ids: np.ndarray  # (len,) int32
    arrived: float  # perf_counter() when it was queued
    outputs: Outputs
    index: int  # its slot in ``outputs``


def settle(windows: list[Window], values=None, error: BaseException | None = None, stats: dict | None = None) -> None:
    """Hand results (``values[i]`` for ``windows[i]``, or ``error`` for all) to the windows' sinks
    from the batcher's thread: one hand-off per sink (an event loop, or a connection to an HTTP
    worker), with the batch's ``stats`` (queue and inference seconds, sizes) for sinks that report them."""
    by_sink: dict = {}
    for i, w in enumerate(windows):
        by_sink.setdefault(w.outputs.sink, []).append((w, None if values is None else values[i]))
    for sink, items in by_sink.items():
        sink.deliver(items, error, stats)


class ModelBatcher(TokenBatcher):
    """The batcher of ``bertrt.batching`` running ``ServedModel`` batches, one kind per batch.
    ``metrics`` None: nothing observed here (a model process, whose workers observe each batch
    from the stats its sinks are handed)."""

    def __init__(self, model: ServedModel, metrics: Metrics | None, *, max_batch_tokens: int, max_delay_s: float,
                 max_queue_tokens: int):
        engine_tokens = getattr(model.runner, "max_tokens", None)
        super().__init__(max_batch_tokens=min(max_batch_tokens, engine_tokens or max_batch_tokens),
                         max_batch_items=getattr(model.runner, "max_batch", None), max_delay_s=max_delay_s,
                         max_queue_tokens=max_queue_tokens, name="serve-worker")
        self.model, self.metrics = model, metrics

    def _length(self, item: Window) -> int:
        return len(item.input_ids)

    def _arrival(self, item: Window) -> float:
        return item.arrived

    def _group(self, item: Window) -> str:
        return item.kind

    def _launch(self, batch: list[Window], waiting: int = 0, worker: int = 0):
        start = time.perf_counter()
        kind = batch[0].kind
        if self.metrics is not None:
            self.metrics.observe_queue(kind, [start - w.arrived for w in batch])
        try:
            pending = self.model.run(kind, [w.input_ids for w in batch], [w.token_type_ids for w in batch])
        except Exception as exc:  # noqa: BLE001 - answered to the batch's requests, the worker goes on
            pending = Failed(exc)
        return batch, pending, start

    def _complete(self, batch: list[Window], pending, start: float) -> None:
        kind = batch[0].kind
        lengths = [len(w.input_ids) for w in batch]
        try:
            out = pending.result()
            rows = sum(lengths) if kind == "qa" else len(batch)
            if out.shape[0] != rows:
                raise RuntimeError(f"the model returned {out.shape[0]} rows for {rows}")
        except Exception as exc:  # noqa: BLE001
            log.exception("a %s batch of %d windows failed", kind, len(batch))
            if self.metrics is not None:
                self.metrics.batch_failures.labels(kind).inc()
            failure = ModelFailure(f"the model failed on this request's batch ({type(exc).__name__})")
            settle(batch, error=failure)
            return
        tokens = sum(lengths)
        self._observe(tokens, start)
        inference_s = time.perf_counter() - start
        if self.metrics is not None:
            self.metrics.observe_batch(kind, inference_s, len(batch), tokens)
        stats = {"kind": kind, "started": start, "inference_s": inference_s, "windows": len(batch), "tokens": tokens}
        settle(batch, np.split(out, np.cumsum(lengths)[:-1]) if kind == "qa" else list(out), stats=stats)

    def retry_after_s(self) -> int:
        """Seconds until the queue has drained at the measured rate (at least 1)."""
        rate = self._tokens_per_s
        if not rate:
            return 1
        return int(min(60, max(1, math.ceil(self.queued_tokens / rate))))


async def run_windows(batcher: ModelBatcher, kind: str, sequences: list[tuple[list[int], list[int]]],
                      deadline: float) -> list[np.ndarray]:
    """Queue one request's sequences and wait for their outputs, in order, until ``deadline``
    (a perf_counter() time).

    Raises:
        Overloaded: the queue would pass its token bound, or the server is stopping.
        TimedOut: the deadline passed; the request's windows still queued are dropped.
        ModelFailure: the model raised on a batch holding one of the windows.
    """
    if not sequences:
        return []
    loop = asyncio.get_running_loop()
    now = time.perf_counter()
    outputs = Outputs(len(sequences), loop)
    windows = [Window(kind, np.asarray(ids, dtype=np.int32), np.asarray(types, dtype=np.int32), now, outputs, i)
               for i, (ids, types) in enumerate(sequences)]
    try:
        batcher.put(windows)
    except QueueFull as exc:
        raise Overloaded(f"the server is busy ({exc})", batcher.retry_after_s()) from None
    except RuntimeError:
        raise Overloaded("the server is shutting down", 1) from None
    try:
        async with asyncio.timeout(max(0.0, deadline - time.perf_counter())):
            return await outputs.future
    except TimeoutError:
        raise TimedOut("the request took longer than the server's timeout") from None
    finally:
        future = outputs.future
        # Unless every window was answered, those still queued would run for nobody.
        if not future.done() or future.cancelled() or future.exception() is not None:
            batcher.discard(windows)
