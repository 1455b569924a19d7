"""What the server tests share: a free port, an app under a real uvicorn, a runner behind a gate."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(app, *, timeout_s: float = 30.0):
    """``app`` under uvicorn on a free loopback port, in a thread; yields an httpx client for it."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=timeout_s) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout_s)


@contextlib.contextmanager
def serve_command(log: Path, *args: str, workers: int = 1, timeout_s: float = 120.0):
    """``bertrt serve --device cpu --port P ARGS`` in a child process logging to ``log``, awaited
    until ``workers`` workers have started; yields (process, base URL). Killed on the way out if
    the test left it running."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bertrt.cli", "serve", "--device", "cpu", "--port", str(port),
                                 *args], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + timeout_s
        while log.read_text().count("Application startup complete") < workers:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class GatedRunner:
    """The real runner behind a gate: each forward pass waits until ``release`` (or the gate is
    left open), and may be told to fail once; every batch's sequence lengths are recorded."""

    def __init__(self, runner):
        self._runner = runner
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_next = False
        self.batches: list[list[int]] = []

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def _enter(self, batch):
        self.batches.append(batch.seqlens.tolist())
        self.entered.set()
        if not self.gate.wait(30):
            raise TimeoutError("gate never opened")
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def qa_logits(self, batch):
        self._enter(batch)
        return self._runner.qa_logits(batch)

    def encode(self, batch):
        self._enter(batch)
        return self._runner.encode(batch)
