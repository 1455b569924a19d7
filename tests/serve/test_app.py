"""The HTTP API on the embedded model (CPU): answers as the library gives them, batching, metrics."""

from __future__ import annotations

import concurrent.futures
import re

import numpy as np
import pytest
import torch

from bertrt.packed import pack_sequences
from bertrt.serve import ServedModel, ServeSettings
from bertrt.tasks.qa import answer_question, qa_features

CONTEXT = ("TensorRT is a high performance deep learning inference platform that delivers low latency and "
           "high throughput for apps such as recommenders, speech and image/video on NVIDIA GPUs.")
FILLER = "The committee met again on Tuesday to discuss the budget and other routine matters. "


def test_qa_answers_as_the_library_does(serve, served):
    expected = answer_question(served.runner, served.tokenizer, "What is TensorRT?", CONTEXT)
    with serve() as client:
        r = client.post("/v1/qa", json={"question": "What is TensorRT?", "context": CONTEXT})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["answer"] == expected.text and CONTEXT[body["start"]:body["end"]] == body["answer"]
    assert body["score"] == pytest.approx(expected.score, abs=1e-3)
    assert 0 < body["probability"] <= 1
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])


def test_long_passage_is_read_through_windows(serve, served):
    # The answer sits past the first 384-token window.
    context = FILLER * 40 + "The treaty was signed in Lisbon in 1867 by four delegates. " + FILLER * 10
    question = "Where was the treaty signed?"
    _, windows = qa_features(served.tokenizer, question, context, config=served.features)
    assert len(windows) > 2
    expected = answer_question(served.runner, served.tokenizer, question, context)
    with serve() as client:
        body = client.post("/v1/qa", json={"question": question, "context": context}).json()
    assert body["answer"] == expected.text == "Lisbon"
    assert context[body["start"]:body["end"]] == "Lisbon" and body["start"] > len(FILLER) * 40


def test_several_questions_in_one_request(serve, served):
    pairs = [{"question": "What is TensorRT?", "context": CONTEXT},
             {"question": "Where did the cat sit?", "context": "The cat sat on the mat in the kitchen."}]
    with serve() as client:
        body = client.post("/v1/qa", json={"inputs": pairs}).json()
    assert [a["answer"] for a in body["results"]] == [
        answer_question(served.runner, served.tokenizer, p["question"], p["context"]).text for p in pairs]


def test_concurrent_requests_share_packed_batches_and_get_their_own_answers(serve, served):
    questions = [("What is TensorRT?", CONTEXT),
                 ("What does TensorRT deliver?", CONTEXT),
                 ("Where did the cat sit?", "The cat sat on the mat in the kitchen of the old house."),
                 ("Who wrote it?", "It was written by Ada Lovelace in 1843.")] * 3
    expected = [answer_question(served.runner, served.tokenizer, q, c).text for q, c in questions]
    # A long delay lets requests that arrive together meet in one batch.
    with serve(ServeSettings(max_delay_ms=500)) as client:
        with concurrent.futures.ThreadPoolExecutor(len(questions)) as pool:
            replies = list(pool.map(lambda qc: client.post("/v1/qa", json={"question": qc[0], "context": qc[1]}),
                                    questions))
        metrics = client.get("/metrics").text
    assert [r.json()["answer"] for r in replies] == expected
    batches = _sample(metrics, 'bertrt_batch_sequences_count{kind="qa"}')
    windows = _sample(metrics, 'bertrt_batch_sequences_sum{kind="qa"}')
    assert windows == len(questions)
    assert batches <= windows / 2  # batches held several requests' windows


def test_embed_is_the_mean_of_the_last_hidden_states(serve, served):
    texts = ["A man is playing a guitar.", "The weather is lovely today."]
    with serve() as client:
        unit = client.post("/v1/embed", json={"inputs": texts}).json()
        raw = client.post("/v1/embed", json={"inputs": texts[0], "normalize": False}).json()
    ids = [served.tokenizer.pair(served.tokenizer.encode(t).ids) for t in texts]
    batch = pack_sequences([i for i, _ in ids], [t for _, t in ids])
    with torch.inference_mode():
        reference = served.runner.mean_pooled(batch).numpy()
    assert unit["dimensions"] == served.info.hidden_size
    np.testing.assert_allclose(raw["embeddings"][0], reference[0], rtol=1e-4, atol=1e-5)
    vectors = np.asarray(unit["embeddings"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(vectors, reference / np.linalg.norm(reference, axis=1, keepdims=True),
                               rtol=1e-4, atol=1e-5)


def test_embed_too_long_is_413_unless_truncated(serve, served):
    text = "word " * (served.info.max_seq_length + 10)
    with serve() as client:
        assert client.post("/v1/embed", json={"inputs": text}).status_code == 413
        r = client.post("/v1/embed", json={"inputs": text, "truncate": True})
    assert r.status_code == 200 and len(r.json()["embeddings"][0]) == served.info.hidden_size


def test_classify_without_a_classification_head_is_a_clear_400(serve):
    with serve() as client:
        r = client.post("/v1/classify", json={"text": "great movie", "text_pair": "I loved it"})
        info = client.get("/v1/info").json()
    assert r.status_code == 400 and r.json()["error"]["code"] == "no_such_head"
    assert "classification head" in r.json()["error"]["message"]
    assert "/v1/classify" not in info["routes"] and "/v1/qa" in info["routes"]


def test_classify_pairs_on_a_model_with_a_classifier(serve, served):
    from bertrt.config import BertConfig
    from bertrt.reference import ReferenceBert
    from bertrt.weights.schema import random_checkpoint

    config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                        num_labels=3)
    runner = ReferenceBert.from_checkpoint(random_checkpoint(config, heads=("classifier",), seed=1))
    model = ServedModel(runner, served.tokenizer, name="tiny-classifier", device="cpu")
    pairs = [("the film was great", "I loved it"), ("stocks fell sharply", None)]
    with serve(model=model) as client:
        single = client.post("/v1/classify", json={"text": pairs[0][0], "text_pair": pairs[0][1]}).json()
        several = client.post("/v1/classify", json={"inputs": [{"text": a, "text_pair": b} for a, b in pairs]}).json()
        no_qa = client.post("/v1/qa", json={"question": "q?", "context": "c"})
    tok = served.tokenizer
    seqs = [tok.pair(tok.encode(a).ids, None if b is None else tok.encode(b).ids) for a, b in pairs]
    with torch.inference_mode():
        logits = runner.classify(pack_sequences([i for i, _ in seqs], [t for _, t in seqs]))
    probs = torch.softmax(logits, -1).numpy()
    assert [r["label"] for r in several["results"]] == probs.argmax(1).tolist()
    np.testing.assert_allclose([r["probabilities"] for r in several["results"]], probs, atol=1e-5)
    assert single == several["results"][0]
    assert no_qa.status_code == 400 and no_qa.json()["error"]["code"] == "no_such_head"


def test_health_ready_info_and_openapi(serve, served):
    with serve(ServeSettings(max_batch_tokens=4096)) as client:
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/ready").json() == {"status": "ready"}
        info = client.get("/v1/info").json()
        doc = client.get("/openapi.json").json()
        page = client.get("/")
    assert info["device"] == "cpu" and info["precision"] == "fp32" and info["heads"] == ["qa"]
    assert info["limits"]["max_batch_tokens"] == 4096 and info["max_seq_length"] == 512
    assert {"/v1/qa", "/v1/embed", "/v1/classify", "/health", "/ready", "/v1/info", "/metrics"} <= set(doc["paths"])
    assert page.status_code == 200 and 'id="ask"' in page.text and "http" not in _script_sources(page.text)


def test_not_ready_before_start_up(served):
    from fastapi.testclient import TestClient

    from bertrt.serve import create_app

    client = TestClient(create_app(served))  # no lifespan: the model was never warmed up
    r = client.get("/ready")
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    r = client.post("/v1/qa", json={"question": "What is TensorRT?", "context": CONTEXT})
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"


def test_metrics_count_requests_by_route_and_status(serve):
    with serve() as client:
        client.post("/v1/qa", json={"question": "What is TensorRT?", "context": CONTEXT})
        client.post("/v1/qa", json={"question": "", "context": CONTEXT})
        client.get("/no/such/page")
        text = client.get("/metrics").text
    assert _sample(text, 'bertrt_requests_total{route="/v1/qa",status="200"}') == 1
    assert _sample(text, 'bertrt_requests_total{route="/v1/qa",status="422"}') == 1
    assert _sample(text, 'bertrt_requests_total{route="other",status="404"}') == 1
    for name in ("bertrt_queue_duration_seconds_count{kind=\"qa\"}",
                 "bertrt_inference_duration_seconds_count{kind=\"qa\"}",
                 "bertrt_request_duration_seconds_count{route=\"/v1/qa\"}",
                 "bertrt_tokenize_duration_seconds_count{route=\"/v1/qa\"}"):
        assert _sample(text, name) >= 1, name
    assert _sample(text, "bertrt_batch_tokens_sum{kind=\"qa\"}") > 0
    assert _sample(text, "bertrt_queue_tokens") == 0 and _sample(text, "bertrt_ready") == 1


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics")


def _script_sources(html: str) -> str:
    return " ".join(re.findall(r'<(?:script|link)[^>]*(?:src|href)="([^"]*)"', html))


def test_an_engine_serves_the_answers_of_the_reference(serve, served):
    """The engine (what a GPU serves), built here for the CPU: same answers and vectors, its limits."""
    from bertrt.engine import Engine
    from bertrt.weights import load_checkpoint

    model = ServedModel(Engine.from_checkpoint(load_checkpoint(), device="cpu"), served.tokenizer, name="engine",
                        device="cpu")
    replies = {}
    with serve(model=model) as engine, serve() as reference:
        for name, client in (("engine", engine), ("reference", reference)):
            replies[name] = (client.post("/v1/qa", json={"question": "What is TensorRT?", "context": CONTEXT}).json(),
                             client.post("/v1/embed", json={"inputs": "A man is playing a guitar."}).json())
        info = engine.get("/v1/info").json()
    (answer, vector), (expected, expected_vector) = replies["engine"], replies["reference"]
    assert answer["answer"] == expected["answer"] and answer["score"] == pytest.approx(expected["score"], abs=1e-3)
    np.testing.assert_allclose(vector["embeddings"], expected_vector["embeddings"], atol=1e-5)
    assert info["max_seq_length"] == 384 and info["precision"] == "fp32"
