"""One model process shared by several HTTP workers: the same answers as a model of the worker's own,
one batcher for every worker's windows, and the queue bound, timeouts, model failures and a lost
model process answered as the server answers them with its own model."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import multiprocessing
import os
import re
import secrets
import signal
import socket
import threading
import time

import httpx
import numpy as np
import pytest

from bertrt.serve import ServeSettings, create_app
from bertrt.serve.metrics import Metrics
from bertrt.serve.model_process import ModelHost, RemoteBatcher, RemoteModel
from bertrt.serve.worker import Outputs, Overloaded, Window
from bertrt.tasks.qa import answer_question

from serve_testing import running, serve_command

CONTEXT = "The cat sat on the mat in the kitchen of the old house."
QUESTION = "Where did the cat sit?"
ASK = {"question": QUESTION, "context": CONTEXT}


@contextlib.contextmanager
def hosted(model, tmp_path, *, warm_up: bool = True, **limits):
    """``model`` behind a ModelHost on a socket in ``tmp_path``; yields (host, connect), where
    ``connect(settings)`` gives a client of a worker app connected to it."""
    options = {"max_batch_tokens": 8192, "max_delay_s": 0.0, "max_queue_tokens": 100_000, **limits}
    key = secrets.token_bytes(16)
    host = ModelHost(model, str(tmp_path / "model.sock"), key, **options).start(warm_up=warm_up)
    with contextlib.ExitStack() as workers:
        def connect(settings: ServeSettings = ServeSettings()):
            remote = RemoteModel.connect(host.address, key)
            return workers.enter_context(running(create_app(remote, settings)))
        try:
            yield host, connect
        finally:
            workers.close()
            host.stop()


def _error(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["code"] == code and body["request_id"] == r.headers["x-request-id"]
    return body["error"]["message"]


def _wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.01)


def test_workers_answer_as_the_model_itself(served, tmp_path):
    expected = answer_question(served.runner, served.tokenizer, QUESTION, CONTEXT)
    with hosted(served, tmp_path) as (_, connect):
        client = connect()
        one = client.post("/v1/qa", json=ASK).json()
        many = client.post("/v1/qa", json={"inputs": [ASK, {"question": "What sat on the mat?",
                                                            "context": CONTEXT}]}).json()["results"]
        info = client.get("/v1/info").json()
        assert client.get("/ready").status_code == 200
    assert one["answer"] == expected.text and CONTEXT[one["start"]:one["end"]] == expected.text
    assert many[0] == one and many[1]["answer"] in CONTEXT
    assert info["device"] == "cpu" and info["precision"] == served.info.precision


def test_embeddings_through_the_model_process_are_the_model_s_own(served, tmp_path, serve):
    texts = ["A cat sat on the mat.", "Stocks fell sharply on Monday."]
    with serve() as own:
        expected = own.post("/v1/embed", json={"inputs": texts}).json()
    with hosted(served, tmp_path) as (_, connect):
        got = connect().post("/v1/embed", json={"inputs": texts}).json()
    assert len(got["embeddings"]) == 2
    np.testing.assert_allclose(got["embeddings"], expected["embeddings"], atol=1e-6)


def test_concurrent_mixed_requests_of_two_workers_get_their_own_answers(served, tmp_path, serve):
    """Many requests in flight at once, so that a worker's message carries several requests of
    different kinds and sizes, and a batch holds windows of both workers: each gets its own result."""
    contexts = [CONTEXT, "Paris is the capital of France. It lies on the Seine.",
                " ".join(f"filler{i}" for i in range(150)) + " The key was under the red stone."]
    questions = ["Where did the cat sit?", "What is the capital of France?", "Where was the key?"]
    bodies = []
    for i in range(24):
        c, q = contexts[i % 3], questions[i % 3]
        if i % 4 == 0:
            bodies.append(("/v1/embed", {"inputs": [q, c[:200]]}))
        elif i % 4 == 1:
            bodies.append(("/v1/qa", {"inputs": [{"question": q, "context": c},
                                                 {"question": questions[(i + 1) % 3], "context": contexts[(i + 1) % 3]}]}))
        else:
            bodies.append(("/v1/qa", {"question": q, "context": c}))
    with serve() as own:
        expected = [own.post(route, json=body).json() for route, body in bodies]
    with hosted(served, tmp_path, max_delay_s=0.005) as (_, connect), \
            concurrent.futures.ThreadPoolExecutor(16) as pool:
        clients = [connect(), connect()]
        got = list(pool.map(lambda i: clients[i % 2].post(bodies[i][0], json=bodies[i][1]), range(len(bodies))))
    for (route, _), want, reply in zip(bodies, expected, got):
        assert reply.status_code == 200, reply.text
        if route == "/v1/embed":
            np.testing.assert_allclose(reply.json()["embeddings"], want["embeddings"], atol=1e-6)
        else:
            assert reply.json() == want


class _Front:
    def __init__(self, conn):
        self.conn, self.max_batch_tokens = conn, 4096


def _windows(loop, *lengths):
    outputs = Outputs(len(lengths), loop)
    return [Window("qa", np.arange(n, dtype=np.int32), np.zeros(n, dtype=np.int32), 0.0, outputs, i)
            for i, n in enumerate(lengths)]


def test_requests_put_in_one_turn_of_the_loop_go_in_one_message():
    worker_end, host_end = multiprocessing.Pipe()
    batcher = RemoteBatcher(_Front(worker_end), Metrics()).start()

    async def turn():
        loop = asyncio.get_running_loop()
        first, second, dropped = _windows(loop, 3, 2), _windows(loop, 4), _windows(loop, 5)
        for windows in (first, second, dropped):
            batcher.put(windows)
        batcher.discard(dropped)  # before the turn ends: never sent
        await asyncio.sleep(0)
        return first, second

    first, second = asyncio.run(turn())
    message = host_end.recv()
    assert not host_end.poll(0.2)  # nothing else: one message, no discard for what was never sent
    tag, table, ids, types = message
    assert tag == "put" and table == [(first[0].outputs.tag, "qa", [3, 2]), (second[0].outputs.tag, "qa", [4])]
    assert np.frombuffer(ids, dtype=np.int32).tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3]
    assert np.frombuffer(types, dtype=np.int32).tolist() == [0] * 9
    host_end.send(("closed",))
    batcher._reader.join(5)


class _CutConnection:
    """A connection whose sends fail and whose reads wait until it is closed."""

    def __init__(self):
        self.closed = threading.Event()

    def send(self, message):
        raise BrokenPipeError(32, "Broken pipe")

    def recv(self):
        self.closed.wait(10)
        raise EOFError


def test_requests_that_cannot_be_sent_fail_as_overloaded():
    conn = _CutConnection()
    batcher = RemoteBatcher(_Front(conn), Metrics()).start()

    async def turn():
        windows = _windows(asyncio.get_running_loop(), 3)
        batcher.put(windows)  # the send at the turn's end fails
        with pytest.raises(Overloaded, match="model process is gone"):
            await asyncio.wait_for(windows[0].outputs.future, 5)

    asyncio.run(turn())
    conn.closed.set()
    batcher._reader.join(5)


def test_one_batch_takes_windows_of_several_workers(gated, tmp_path):
    runner = gated.runner
    runner.gate.clear()
    with hosted(gated, tmp_path, warm_up=False) as (host, connect), \
            concurrent.futures.ThreadPoolExecutor(3) as pool:
        first, second = connect(), connect()
        held = pool.submit(first.post, "/v1/qa", json=ASK)  # runs alone, held at the gate
        assert runner.entered.wait(10)
        queued = [pool.submit(c.post, "/v1/qa", json=ASK) for c in (first, second)]
        _wait_for(lambda: host.batcher.pending_items == 2)
        runner.gate.set()
        replies = [f.result() for f in (held, *queued)]
        # Each worker's /metrics counts the batches its windows were in, sizes as the model saw them.
        text = second.get("/metrics").text
    assert [r.status_code for r in replies] == [200, 200, 200]
    assert len({r.json()["answer"] for r in replies}) == 1
    window = runner.batches[0][0]
    assert runner.batches == [[window], [window, window]]
    assert 'bertrt_batch_sequences_sum{kind="qa"} 2.0' in text


def test_full_queue_of_the_model_process_answers_503_with_retry_after(gated, tmp_path):
    runner, tok = gated.runner, gated.tokenizer
    window = len(tok.pair(tok.encode(QUESTION).ids, tok.encode(CONTEXT).ids)[0])
    runner.gate.clear()
    with hosted(gated, tmp_path, warm_up=False, max_queue_tokens=window) as (host, connect), \
            concurrent.futures.ThreadPoolExecutor(2) as pool:
        client = connect()
        first = pool.submit(client.post, "/v1/qa", json=ASK)
        assert runner.entered.wait(10)
        second = pool.submit(client.post, "/v1/qa", json=ASK)  # fills the queue
        _wait_for(lambda: host.batcher.queued_tokens == window)
        other = connect()  # a worker that has not yet heard the queue's depth: the model process refuses
        r = other.post("/v1/qa", json={"question": "What sat on the mat?", "context": CONTEXT})
        assert "busy" in _error(r, 503, "overloaded") and int(r.headers["retry-after"]) >= 1
        runner.gate.set()
        assert first.result().status_code == 200 and second.result().status_code == 200
        assert other.post("/v1/qa", json=ASK).status_code == 200


def test_timeout_answers_504_and_the_model_process_drops_the_work(gated, tmp_path):
    runner = gated.runner
    runner.gate.clear()
    with hosted(gated, tmp_path, warm_up=False) as (host, connect), \
            concurrent.futures.ThreadPoolExecutor(2) as pool:
        client = connect(ServeSettings(timeout_s=1.0, max_delay_ms=0))
        first = pool.submit(client.post, "/v1/qa", json=ASK)
        assert runner.entered.wait(10)
        late = client.post("/v1/qa", json={"question": "Where is the mat?", "context": CONTEXT + " Really."})
        _error(late, 504, "timeout")
        _wait_for(lambda: host.batcher.queued_tokens == 0)  # its window left the model's queue
        runner.gate.set()
        _error(first.result(), 504, "timeout")
        assert client.post("/v1/qa", json=ASK).status_code == 200
    tok = gated.tokenizer
    ask_tokens = len(tok.pair(tok.encode(QUESTION).ids, tok.encode(CONTEXT).ids)[0])
    assert runner.batches == [[ask_tokens], [ask_tokens]]  # never the dropped, longer window


def test_model_failure_answers_500_with_request_id_and_serving_goes_on(gated, tmp_path):
    gated.runner.fail_next = True
    with hosted(gated, tmp_path, warm_up=False) as (_, connect):
        client = connect()
        r = client.post("/v1/qa", json=ASK, headers={"x-request-id": "trace-7"})
        assert "trace-7" in _error(r, 500, "model_error")
        assert client.post("/v1/qa", json=ASK).status_code == 200


def test_a_lost_model_process_fails_what_waits_and_turns_the_worker_unready(gated, tmp_path):
    runner = gated.runner
    runner.gate.clear()
    with hosted(gated, tmp_path, warm_up=False) as (host, connect), \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        client = connect()
        waiting = pool.submit(client.post, "/v1/qa", json=ASK)
        assert runner.entered.wait(10)
        for sink in list(host._sinks):  # every connection is cut, as when the model process dies
            with socket.socket(fileno=os.dup(sink.conn.fileno())) as end:
                end.shutdown(socket.SHUT_RDWR)
        _error(waiting.result(), 500, "model_error")
        runner.gate.set()
        _error(client.post("/v1/qa", json=ASK), 503, "not_ready")
        assert client.get("/ready").status_code == 503
        assert client.get("/health").status_code == 200


@pytest.mark.slow
def test_serve_with_a_shared_model_process_answers_and_stops_on_sigterm(tmp_path):
    log = tmp_path / "serve.log"
    with serve_command(log, "--workers", "2", "--model-process", "shared", workers=2) as (proc, base):
        model_pid = int(re.search(r"model process \[(\d+)\] ready", log.read_text()).group(1))
        answers = {httpx.post(f"{base}/v1/qa", json=ASK, timeout=30).json()["answer"] for _ in range(6)}
        assert len(answers) == 1 and answers.pop() in CONTEXT
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert not os.path.exists(f"/proc/{model_pid}") or "zombie" in open(f"/proc/{model_pid}/status").read().lower()


def test_serve_with_a_bad_model_path_fails_in_one_line_before_the_workers(tmp_path, capsys):
    from bertrt.cli import main

    assert main(["serve", "--device", "cpu", "--workers", "2", "--model-process", "shared",
                 "--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bertrt serve: error:") and "missing" in err and len(err.strip().splitlines()) == 1


def test_a_failed_request_s_queued_windows_are_dropped(gated, tmp_path):
    runner = gated.runner
    long_context = " ".join(f"word{i}" for i in range(900))  # 20 windows of the default model
    runner.fail_next = True
    # One window per batch: the first fails, and the request's other windows leave the queue.
    with hosted(gated, tmp_path, warm_up=False, max_batch_tokens=gated.features.max_seq_length) as (host, connect):
        r = connect().post("/v1/qa", json={"question": QUESTION, "context": long_context})
        _error(r, 500, "model_error")
        _wait_for(lambda: host.batcher.queued_tokens == 0)
    assert 1 <= len(runner.batches) <= 2  # the failed batch, and at most the one launched behind it
