"""Limits and failures: 413, 422, 503 + Retry-After, 504 with the work dropped, 500 with a request id
and the server still serving, SIGTERM finishing what was accepted."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from bertrt.serve import ServeSettings
from bertrt.tasks.qa import answer_question

from serve_testing import free_port

CONTEXT = "The cat sat on the mat in the kitchen of the old house."
QUESTION = "Where did the cat sit?"
ASK = {"question": QUESTION, "context": CONTEXT}


def _error(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["code"] == code and body["request_id"] == r.headers["x-request-id"]
    return body["error"]["message"]


def test_limits_answer_413(serve):
    settings = ServeSettings(max_body_bytes=2000, max_text_chars=500, max_question_chars=50, max_inputs=2)
    with serve(settings) as client:
        message = _error(client.post("/v1/qa", json={"question": QUESTION, "context": "x " * 2000}),
                         413, "body_too_large")
        assert "2000 bytes" in message
        # No Content-Length (a chunked body): the limit still holds.
        chunks = iter([b'{"question": "q?", "context": "', *[b"y" * 500] * 6, b'"}'])
        _error(client.post("/v1/qa", content=chunks, headers={"content-type": "application/json"}),
               413, "body_too_large")
        message = _error(client.post("/v1/qa", json={"question": QUESTION, "context": "word " * 120}),
                         413, "too_large")
        assert "context has 600 characters" in message and "500" in message
        _error(client.post("/v1/qa", json={"question": "why " * 20, "context": CONTEXT}), 413, "too_large")
        _error(client.post("/v1/qa", json={"inputs": [ASK] * 3}), 413, "too_large")
        assert client.post("/v1/qa", json={"inputs": [ASK] * 2}).status_code == 200


def test_request_of_more_tokens_than_the_queue_holds_is_413(serve):
    with serve(ServeSettings(max_queue_tokens=200)) as client:
        message = _error(client.post("/v1/qa", json={"question": QUESTION, "context": "word " * 300}),
                         413, "too_large")
    assert "tokens" in message


@pytest.mark.parametrize("body, needle", [
    (b'{"question": "Where?", "context": ', "JSON"),
    (b'[1, 2, 3]', "dictionary"),
    (json.dumps({"question": QUESTION}).encode(), "context"),
    (json.dumps({"question": 3, "context": CONTEXT}).encode(), "question"),
    (json.dumps({"question": "   ", "context": CONTEXT}).encode(), "empty"),
    (json.dumps({"question": QUESTION, "context": ""}).encode(), "empty"),
    (json.dumps({"question": QUESTION, "context": CONTEXT, "inputs": [ASK]}).encode(), "not both"),
    (json.dumps({"inputs": []}).encode(), "inputs"),
    (json.dumps({"question": QUESTION, "context": CONTEXT, "colour": "red"}).encode(), "colour"),
    (b'{"question": "\\ud800?", "context": "text"}', "surrogate"),
])
def test_malformed_requests_answer_422_saying_what_is_wrong(serve, body, needle):
    with serve() as client:
        r = client.post("/v1/qa", content=body, headers={"content-type": "application/json"})
    assert needle.lower() in _error(r, 422, "invalid_request").lower()


def test_text_without_tokens_is_422(serve):
    with serve() as client:
        r = client.post("/v1/qa", json={"question": QUESTION, "context": "\u200b\u200b"})
    assert "no tokens" in _error(r, 422, "no_tokens")


@pytest.mark.parametrize("room", ["for one more window", "for none"])
def test_full_queue_answers_503_with_retry_after(serve, gated, room):
    runner, tok = gated.runner, gated.tokenizer
    window = len(tok.pair(tok.encode(QUESTION).ids, tok.encode(CONTEXT).ids)[0])
    # Room for one more window: the third request is tokenised, then refused by the queue. Room
    # for none: the queue is already full, so it is refused before tokenising.
    limit = 2 * window - 1 if room == "for one more window" else window
    runner.gate.clear()
    with serve(ServeSettings(max_queue_tokens=limit, max_delay_ms=0), model=gated, warm_up=False) as client, \
            concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(client.post, "/v1/qa", json=ASK)  # taken into a batch, held at the gate
        assert runner.entered.wait(10)
        second = pool.submit(client.post, "/v1/qa", json=ASK)  # queued
        _wait_for(lambda: _queued_tokens(client) == window)
        r = client.post("/v1/qa", json=ASK)
        assert "busy" in _error(r, 503, "overloaded") and int(r.headers["retry-after"]) >= 1
        tokenised = _metric(client, 'bertrt_tokenize_duration_seconds_count{route="/v1/qa"}')
        assert tokenised == (3 if room == "for one more window" else 2)
        runner.gate.set()
        assert first.result().status_code == 200 and second.result().status_code == 200
        assert client.post("/v1/qa", json=ASK).status_code == 200  # room again


def test_timeout_answers_504_and_drops_the_queued_work(serve, gated):
    runner = gated.runner
    runner.gate.clear()
    with serve(ServeSettings(timeout_s=1.0, max_delay_ms=0), model=gated, warm_up=False) as client, \
            concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(client.post, "/v1/qa", json=ASK)
        assert runner.entered.wait(10)
        late = client.post("/v1/qa", json={"question": "Where is the mat?", "context": CONTEXT + " Really."})
        _error(late, 504, "timeout")
        assert _queued_tokens(client) == 0  # its window left the queue with it
        runner.gate.set()
        _error(first.result(), 504, "timeout")  # held past its own deadline
        assert client.post("/v1/qa", json=ASK).status_code == 200
    # The model ran the first request's window and the last one's, never the dropped one (longer).
    tok = gated.tokenizer
    ask_tokens = len(tok.pair(tok.encode(QUESTION).ids, tok.encode(CONTEXT).ids)[0])
    assert runner.batches == [[ask_tokens], [ask_tokens]]


def test_model_failure_answers_500_with_request_id_and_the_server_goes_on(serve, gated, served):
    gated.runner.fail_next = True
    with serve(model=gated, warm_up=False) as client:
        r = client.post("/v1/qa", json=ASK, headers={"x-request-id": "trace-42"})
        assert r.headers["x-request-id"] == "trace-42"
        assert "trace-42" in _error(r, 500, "model_error")
        ok = client.post("/v1/qa", json=ASK)
        text = client.get("/metrics").text
    expected = answer_question(served.runner, served.tokenizer, QUESTION, CONTEXT).text
    assert ok.status_code == 200 and ok.json()["answer"] == expected
    assert 'bertrt_batch_failures_total{kind="qa"} 1.0' in text


def test_a_failed_request_s_queued_windows_are_dropped(serve, gated):
    runner = gated.runner
    long_context = " ".join(f"word{i}" for i in range(900))  # 20 windows of the default model
    runner.fail_next = True
    # One window per batch: the first fails, and the request's other windows leave the queue.
    settings = ServeSettings(max_batch_tokens=gated.features.max_seq_length, max_delay_ms=0)
    with serve(settings, model=gated, warm_up=False) as client:
        _error(client.post("/v1/qa", json={"question": QUESTION, "context": long_context}), 500, "model_error")
        _wait_for(lambda: _queued_tokens(client) == 0)
    # The failed batch and the few that ran before the request's coroutine woke, not all 20.
    assert 1 <= len(runner.batches) < 10


def test_sigterm_finishes_accepted_requests_then_exits(tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bertrt.cli", "serve", "--device", "cpu", "--port", str(port),
                             "--max-delay-ms", "0", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: _ok(f"{base}/ready"), timeout_s=60)
        long_context = "The committee met again on Tuesday to discuss the budget. " * 500 + CONTEXT

        def ask():
            reply = httpx.post(f"{base}/v1/qa", json={"question": QUESTION, "context": long_context}, timeout=60)
            return reply, time.monotonic()

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            accepted = pool.submit(ask)
            _wait_for(lambda: _queued_or_running(base), timeout_s=20)
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            reply, answered = accepted.result()
        assert answered > signalled  # the request was still being worked on when the signal came
        body = reply.json()
        assert reply.status_code == 200 and body["answer"] and long_context[body["start"]:body["end"]] == body["answer"]
        assert proc.wait(30) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _queued_or_running(base: str) -> bool:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return 'bertrt_tokenize_duration_seconds_count{route="/v1/qa"} 1.0' in text


def _queued_tokens(client: httpx.Client) -> float:
    return _metric(client, "bertrt_queue_tokens")


def _metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in the metrics")


def _wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)
