"""One model process shared by the HTTP workers of ``bertrt serve --workers N``.

With a copy of the model in each worker, N workers on one GPU run N batchers whose batches are N
times smaller, each process launching its own (every process a CUDA context of its own, taking
turns on the device). Here one process holds the model and the one ``ModelBatcher``; the workers
validate, tokenise and extract answers, and send each request's windows (int32 ids and token
types) over a Unix socket; each batch's outputs come back in one message per worker. 413 and 422
stay in the workers; the queue bound (503), a timed-out request's discard (504) and model failures
(500) travel as messages, and every reply carries the queue depth, which the workers' 503 check,
``Retry-After`` and ``/metrics`` read.

Messages (``multiprocessing.connection``, authenticated by a random key; tuples of plain values,
with each message's token ids and outputs in one buffer, since pickling an array per window
would cost more than the rest of the message):

- model process -> worker, once: ``("front", ModelFront, max_batch_tokens)``;
- worker -> model process: ``("put", [(request, kind, [window lengths])], ids, types)``, where
  ``ids`` and ``types`` are the bytes of every window's int32 tokens in order (a worker sends the
  requests of one turn of its event loop together); ``("discard", request)``; and ``("close",)``,
  answered by ``("closed",)``;
- model process -> worker: ``("done", [(request, index, rows)], outputs, error, stats, queue)``:
  ``outputs`` stacks the windows' outputs (``rows`` of it each, or -1 for one vector) or is None,
  ``error`` is None or ``(code, message, retry_after_s)`` for every request named, ``stats`` the
  batch's ``{"queue_s": [...], "inference_s", "windows", "tokens", "kind"}`` and ``queue``
  ``(queued_tokens, queued_windows, retry_after_s)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
import traceback
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path

import numpy as np

from bertrt.batching import QueueFull
from bertrt.errors import EXIT_SYSTEM, BertrtError, describe, exit_code
from bertrt.serve.metrics import Metrics
from bertrt.serve.model import ModelFront, ServedModel
from bertrt.serve.worker import ModelBatcher, ModelFailure, Overloaded, Window, freeze_heap, settle, thaw_heap

log = logging.getLogger("bertrt.serve")

# How long the supervisor waits for the model process to load and warm up (a large engine's
# CUDA-graph captures and eager warm-up take a minute or two on a GPU).
READY_TIMEOUT_S = 900.0


# --- the model process ------------------------------------------------------------------------

class _Request:
    """The model process's side of one worker request: where its windows' outputs go."""

    def __init__(self, sink: "_WorkerSink", tag: int):
        self.sink, self.tag = sink, tag


class _WorkerSink:
    """One HTTP worker's connection: its requests' windows go into the batcher, and each batch's
    outputs for them go back in one message (sent from the batcher's thread)."""

    def __init__(self, conn: Connection, batcher: ModelBatcher):
        self.conn, self.batcher = conn, batcher
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._queued: dict[int, list[Window]] = {}  # request -> its windows, until all are answered
        self._left: dict[int, int] = {}

    def send(self, message) -> bool:
        try:
            with self._send_lock:
                self.conn.send(message)
            return True
        except (OSError, ValueError):  # the worker is gone; its windows are discarded by serve()
            return False

    def queue_state(self) -> tuple[int, int, int]:
        return self.batcher.queued_tokens, self.batcher.pending_items, self.batcher.retry_after_s()

    def put(self, requests: list, ids: bytes, types: bytes) -> None:
        """Queue each request's windows (``ids``/``types``: their tokens back to back), refusing
        those the queue cannot take."""
        now = time.perf_counter()
        ids, types = np.frombuffer(ids, dtype=np.int32), np.frombuffer(types, dtype=np.int32)
        start = 0
        for request, kind, lengths in requests:
            owner = _Request(self, request)
            windows = []
            for n, length in enumerate(lengths):
                end = start + length
                windows.append(Window(kind, ids[start:end], types[start:end], now, owner, n))
                start = end
            with self._lock:
                self._queued[request], self._left[request] = windows, len(windows)
            try:
                self.batcher.put(windows)
            except QueueFull as exc:
                self._refuse(request, f"the server is busy ({exc})", self.batcher.retry_after_s())
            except RuntimeError:
                self._refuse(request, "the server is shutting down", 1)

    def _refuse(self, request: int, message: str, retry_after_s: int) -> None:
        with self._lock:
            self._queued.pop(request, None)
            self._left.pop(request, None)
        self.send(("done", [(request, -1, 0)], None, ("overloaded", message, retry_after_s), None, self.queue_state()))

    def discard(self, request: int) -> None:
        with self._lock:
            windows = self._queued.pop(request, None)
            self._left.pop(request, None)
        if windows:
            self.batcher.discard(windows)

    def discard_all(self) -> None:
        with self._lock:
            windows = [w for ws in self._queued.values() for w in ws]
            self._queued.clear()
            self._left.clear()
        if windows:
            self.batcher.discard(windows)

    def deliver(self, items: list, error: BaseException | None = None, stats: dict | None = None) -> None:
        """``settle``'s hand-off: one message with this worker's part of the batch."""
        answered, outputs, queue_s, dropped = [], [], [], []
        with self._lock:
            for w, value in items:
                tag = w.outputs.tag
                if tag not in self._left:
                    continue  # discarded, or already failed
                if value is None:
                    answered.append((tag, w.index, 0))
                elif value.ndim == 1:  # one vector (an embedding, a pair's logits)
                    answered.append((tag, w.index, -1))
                    outputs.append(value[None])
                else:  # rows (a window's start/end logits)
                    answered.append((tag, w.index, value.shape[0]))
                    outputs.append(value)
                if stats is not None:
                    queue_s.append(stats["started"] - w.arrived)
                self._left[tag] -= 1
                if error is not None or not self._left[tag]:
                    dropped += self._queued.pop(tag, [])
                    del self._left[tag]
        if error is not None and dropped:  # a failed request's windows still queued would run for nobody
            self.batcher.discard(dropped)
        if not answered:
            return
        code = None if error is None else ("model", str(error), 0)
        summary = None if stats is None else {"queue_s": queue_s, **{k: stats[k] for k in
                                                                     ("kind", "inference_s", "windows", "tokens")}}
        self.send(("done", answered, np.concatenate(outputs) if outputs else None, code, summary,
                   self.queue_state()))


class ModelHost:
    """The model and its batcher behind a Unix socket, serving any number of HTTP workers.

    Args:
        model: the loaded model.
        address: the socket's path; authkey: the key the workers must present.
        max_batch_tokens, max_delay_s, max_queue_tokens: the batcher's limits (``ServeSettings``'s).
    """

    def __init__(self, model: ServedModel, address: str, authkey: bytes, *, max_batch_tokens: int,
                 max_delay_s: float, max_queue_tokens: int):
        self.model = model
        # No metrics here: each worker observes the batches its windows were in (the stats of "done").
        self.batcher = ModelBatcher(model, None, max_batch_tokens=max_batch_tokens, max_delay_s=max_delay_s,
                                    max_queue_tokens=max_queue_tokens)
        self.address, self.authkey = address, authkey
        self._listener: Listener | None = None
        self._sinks: list[_WorkerSink] = []  # the workers connected now

    def start(self, *, warm_up: bool = True) -> "ModelHost":
        """Start the batcher, warm the model, then listen (a worker that connects finds it warm)."""
        self.batcher.start()
        if warm_up:
            self.model.warm_up(self.batcher.max_batch_tokens)
        freeze_heap()
        self._listener = Listener(self.address, family="AF_UNIX", authkey=self.authkey)
        threading.Thread(target=self._accept, name="model-host-accept", daemon=True).start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                conn = self._listener.accept()
            except (OSError, EOFError):  # closed by stop()
                return
            except Exception:  # noqa: BLE001 - a client with the wrong key; keep listening
                log.warning("refused a connection to the model process", exc_info=True)
                continue
            sink = _WorkerSink(conn, self.batcher)
            self._sinks.append(sink)
            threading.Thread(target=self._serve, args=(sink,), name="model-host-worker", daemon=True).start()

    def _serve(self, sink: _WorkerSink) -> None:
        if not sink.send(("front", self.model.front(), self.batcher.max_batch_tokens)):
            return
        try:
            while True:
                message = sink.conn.recv()
                if message[0] == "put":
                    sink.put(*message[1:])
                elif message[0] == "discard":
                    sink.discard(message[1])
                elif message[0] == "close":
                    sink.send(("closed",))
                    break
        except (EOFError, OSError):  # the worker is gone
            pass
        finally:
            sink.discard_all()
            with contextlib.suppress(OSError):
                sink.conn.close()
            self._sinks.remove(sink)

    def stop(self) -> None:
        """Stop listening, finish every queued window (their workers get the outputs), then close."""
        if self._listener is not None:
            self._listener.close()
        self.batcher.stop()
        for sink in list(self._sinks):
            with contextlib.suppress(OSError):
                sink.conn.close()
        thaw_heap()


def host_main(model: str | None, engine: str | None, device: str, limits: dict, address: str, authkey: bytes,
              status: Connection) -> None:
    """The model process: load and warm the model, report on ``status``, serve until SIGTERM (or
    until the process that started it is gone), then drain."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which stops us in turn
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    parent = os.getppid()
    try:
        served = ServedModel.load(model, engine=engine, device=device, graph_max_tokens=limits["max_batch_tokens"])
        host = ModelHost(served, address, authkey, **limits).start()
    except Exception as exc:  # noqa: BLE001 - told to the supervisor, which prints it
        code = exit_code(exc)
        if code is None:  # a bug: its traceback goes to the log
            traceback.print_exc()
        status.send(("failed", describe(exc), code))
        raise SystemExit(1) from None
    status.send(("ready", os.getpid(), host.model.info.name, host.model.info.device))
    while not stopping.wait(1.0):
        if os.getppid() != parent:  # the supervisor died without stopping us
            break
    host.stop()


class ModelProcess:
    """The supervisor's handle on the model process: start it, wait until it is warm, stop it."""

    def __init__(self, model: str | None, engine: str | None, device: str, limits: dict):
        self._dir = tempfile.mkdtemp(prefix="bertrt-serve-")
        self.address = str(Path(self._dir) / "model.sock")
        self.authkey = secrets.token_bytes(16)
        context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        self._status, child_status = context.Pipe(duplex=False)
        self.process = context.Process(target=host_main, name="bertrt-model",
                                       args=(model, engine, device, limits, self.address, self.authkey, child_status))
        self.process.start()
        child_status.close()

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> tuple:
        """("ready", pid, model name, device) once the model is warm. Raises ``ModelProcessFailed``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._status.poll(0.5):
                try:
                    message = self._status.recv()
                except EOFError:
                    break
                if message[0] == "failed":
                    self.process.join(10)
                    self.stop()
                    if message[2] is None:
                        raise RuntimeError(f"the model process failed: {message[1]}")
                    raise ModelProcessFailed(message[1], exit_code=message[2])
                return message
            if not self.process.is_alive():
                break
        alive = self.process.is_alive()
        self.stop()
        raise ModelProcessFailed(f"the model process was not ready after {timeout_s:g} s" if alive else
                                 f"the model process exited (code {self.process.exitcode}) before it was ready",
                                 exit_code=EXIT_SYSTEM)

    def worker_options(self) -> dict:
        """What a worker needs to connect (``RemoteModel.connect``)."""
        return {"address": self.address, "authkey": self.authkey.hex()}

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM, wait for the drain, then the socket's folder goes; returns the exit code."""
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout_s)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        shutil.rmtree(self._dir, ignore_errors=True)
        return self.process.exitcode


class ModelProcessFailed(BertrtError):
    """The model process could not load the model: a bad path or checkpoint (``exit_code`` 2) or
    the machine (1), as the command would have said had it loaded the model itself."""

    def __init__(self, message: str, *, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


# --- an HTTP worker ---------------------------------------------------------------------------

class RemoteModel(ModelFront):
    """The front of a model running in a model process, and the connection to it."""

    def __init__(self, front: ModelFront, conn: Connection, max_batch_tokens: int):
        super().__init__(front.info, front.tokenizer, front.features)
        self.conn, self.max_batch_tokens = conn, max_batch_tokens

    @classmethod
    def connect(cls, address: str, authkey: bytes) -> "RemoteModel":
        conn = Client(address, family="AF_UNIX", authkey=authkey)
        tag, front, max_batch_tokens = conn.recv()
        if tag != "front":
            raise RuntimeError(f"the model process sent {tag!r} first")
        return cls(front, conn, max_batch_tokens)

    def warm_up(self, max_batch_tokens: int | None = None) -> None:
        """Nothing to do: the model process was warm before it took connections."""


class RemoteBatcher:
    """The batcher as an HTTP worker sees it (``put``, ``discard``, the queue's depth), run by
    the model process: what ``run_windows`` and the app need of a ``ModelBatcher``.

    Requests put during one turn of the event loop go to the model process in one message, sent
    at the end of that turn: under load a turn starts many requests, and the model process's one
    interpreter, which every worker's messages pass through, pays per message as well as per window.
    """

    def __init__(self, model: RemoteModel, metrics: Metrics, *, drain_timeout_s: float = 60.0):
        self.metrics, self.conn = metrics, model.conn
        self.max_batch_tokens = model.max_batch_tokens
        self.drain_timeout_s = drain_timeout_s
        self.queued_tokens, self.pending_items, self._retry_after_s = 0, 0, 1
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._requests: dict[int, list[Window]] = {}
        self._left: dict[int, int] = {}
        self._outbox: dict[int, None] = {}  # requests put and not yet sent, in order
        self._idle = threading.Condition(self._lock)
        self._stopping = False
        self._reader = threading.Thread(target=self._read, name="model-client", daemon=True)

    @property
    def alive(self) -> bool:
        return self._reader.is_alive()

    def start(self) -> "RemoteBatcher":
        self._reader.start()
        return self

    def retry_after_s(self) -> int:
        return self._retry_after_s

    def put(self, windows: list[Window]) -> None:
        if self._stopping:
            raise RuntimeError("the batcher is stopping")
        if not self.alive:
            raise Overloaded("the model process is gone", 1)
        request = next(self._ids)
        windows[0].outputs.tag = request
        with self._lock:
            self._requests[request], self._left[request] = windows, len(windows)
            self._outbox[request] = None
            first = len(self._outbox) == 1
        if first:
            try:
                asyncio.get_running_loop().call_soon(self._flush)
            except RuntimeError:  # not on an event loop: nothing to gather it with
                self._flush()

    def _flush(self) -> None:
        """Send the requests put since the last flush (those not discarded meanwhile)."""
        with self._lock:
            live = [(r, self._requests[r]) for r in self._outbox]
            self._outbox = {}
        if not live:
            return
        table = [(r, ws[0].kind, [len(w.input_ids) for w in ws]) for r, ws in live]
        ids = np.concatenate([w.input_ids for _, ws in live for w in ws])  # int32, as windows hold them
        types = np.concatenate([w.token_type_ids for _, ws in live for w in ws])
        try:
            with self._send_lock:
                self.conn.send(("put", table, ids.tobytes(), types.tobytes()))
        except (OSError, ValueError):
            failed = [w for r, ws in live if self._forget(r) for w in ws]
            settle(failed, error=Overloaded("the model process is gone", 1))

    def discard(self, windows: list[Window]) -> int:
        request = windows[0].outputs.tag
        if request is None:
            return 0
        with self._lock:
            unsent = request in self._outbox
        if not self._forget(request):
            return 0
        if not unsent:  # the model process has it
            with contextlib.suppress(OSError, ValueError), self._send_lock:
                self.conn.send(("discard", request))
        return len(windows)

    def _forget(self, request: int) -> bool:
        with self._lock:
            known = self._requests.pop(request, None) is not None
            self._left.pop(request, None)
            self._outbox.pop(request, None)
            self._idle.notify_all()
        return known

    def _read(self) -> None:
        try:
            while True:
                message = self.conn.recv()
                if message[0] == "closed":
                    break
                _, answered, outputs, error, stats, queue = message
                self.queued_tokens, self.pending_items, self._retry_after_s = queue
                self._settle(answered, outputs, error, stats)
        except (EOFError, OSError):
            pass
        finally:
            with self._lock:
                windows = [w for ws in self._requests.values() for w in ws]
                self._requests.clear()
                self._left.clear()
                self._idle.notify_all()
            if windows:
                log.error("the model process closed the connection with %d windows unanswered", len(windows))
                settle(windows, error=ModelFailure("the model process exited"))

    def _settle(self, answered: list, outputs, error, stats: dict | None) -> None:
        windows, values, failed = [], [], []
        start = 0
        with self._lock:
            for request, index, rows in answered:
                if rows < 0:
                    value, start = outputs[start], start + 1
                else:
                    value, start = (outputs[start:start + rows] if rows else None), start + rows
                queued = self._requests.get(request)
                if queued is None:
                    continue  # discarded here after the batch had started
                if error is not None:
                    failed.extend(queued)
                    del self._requests[request], self._left[request]
                    continue
                windows.append(queued[index])
                values.append(value)
                self._left[request] -= 1
                if not self._left[request]:
                    del self._requests[request], self._left[request]
            self._idle.notify_all()
        if stats is not None:
            self.metrics.observe_queue(stats["kind"], stats["queue_s"])
            self.metrics.observe_batch(stats["kind"], stats["inference_s"], stats["windows"], stats["tokens"])
        if windows:
            settle(windows, values)
        if failed:
            code, message, retry_after_s = error
            settle(failed, error=Overloaded(message, retry_after_s) if code == "overloaded" else ModelFailure(message))

    def stop(self) -> None:
        """Refuse new requests, wait (up to ``drain_timeout_s``) for those in flight, then close."""
        self._stopping = True
        self._flush()
        deadline = time.monotonic() + self.drain_timeout_s
        with self._lock:
            while self._requests and self.alive and time.monotonic() < deadline:
                self._idle.wait(0.1)
        # The model process answers "close" with "closed", which ends the reader; the connection
        # is closed only then (closing it under a blocked recv would not wake the reader).
        with contextlib.suppress(OSError, ValueError), self._send_lock:
            self.conn.send(("close",))
        self._reader.join(5)
        with contextlib.suppress(OSError):
            self.conn.close()
