"""What the per-request fast path must keep: answers of several questions per request, long texts off
the event loop, windows of one request spread over batches, and a warm-up that covers the batches
which run past the CUDA graphs."""

from __future__ import annotations

import concurrent.futures
import os
import threading

import torch

from bertrt.serve import ServedModel, ServeSettings
from bertrt.serve.app import INLINE_TOKENIZE_CHARS
from bertrt.tasks.qa import answer_question

CONTEXTS = ["TensorRT is a high performance deep learning inference platform that delivers low latency and "
            "high throughput for apps such as recommenders, speech and image/video on NVIDIA GPUs.",
            "The cat sat on the mat in the kitchen of the old house while it rained outside.",
            "It was written by Ada Lovelace in 1843, long before any computer was built."]
QUESTIONS = [("What is TensorRT?", 0), ("What does TensorRT deliver?", 0), ("Where did the cat sit?", 1),
             ("When did it rain?", 1), ("Who wrote it?", 2), ("When was it written?", 2),
             ("What runs on GPUs?", 0), ("Which house?", 1)]
FILLER = "The committee met again on Tuesday to discuss the budget and other routine matters. "


class GraphLikeRunner:
    """The real runner's config and heads, claiming CUDA graphs (so the server treats batches past
    ``graph_max_tokens`` as eager ones) and recording the token count of every QA batch."""

    graphs = True

    def __init__(self, runner):
        self._runner = runner
        self.tokens: list[int] = []

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def capture(self, token_counts, kind="qa"):
        pass

    def qa_logits(self, batch):
        self.tokens.append(batch.total_tokens)
        return torch.zeros(batch.total_tokens, 2)


def test_warm_up_runs_eager_batches_up_to_the_batch_budget(serve, served):
    runner = GraphLikeRunner(served.runner)
    model = ServedModel(runner, served.tokenizer, name="graphs", device="cpu")
    graph_max = model._qa.graph_max_tokens
    with serve(ServeSettings(max_batch_tokens=3 * graph_max), model=model) as client:
        assert client.get("/ready").status_code == 200
    past_graphs = [t for t in runner.tokens if t > graph_max]
    assert past_graphs and max(past_graphs) == 3 * graph_max
    assert model.eager_warm_up_tokens(graph_max) == []  # every batch fits a graph: nothing eager


def test_reference_model_warm_up_stays_small(served):
    runner = GraphLikeRunner(served.runner)
    runner.graphs = False  # the CPU reference: no graphs, so no separate eager path to warm
    model = ServedModel(runner, served.tokenizer, name="no-graphs", device="cpu")
    model.warm_up(16384)
    assert max(runner.tokens) < 64


def test_several_questions_per_request_answer_as_single_ones_across_batches(serve, served):
    """Eight questions a request, requests in flight together, a budget that splits each request's
    windows over several batches: every answer is the library's."""
    pairs = [{"question": q, "context": CONTEXTS[c]} for q, c in QUESTIONS]
    expected = [answer_question(served.runner, served.tokenizer, p["question"], p["context"]).text for p in pairs]
    rotations = [pairs[i:] + pairs[:i] for i in range(4)]
    with serve(ServeSettings(max_batch_tokens=128, max_delay_ms=20)) as client:
        with concurrent.futures.ThreadPoolExecutor(len(rotations)) as pool:
            replies = list(pool.map(lambda inputs: client.post("/v1/qa", json={"inputs": inputs}), rotations))
        metrics = client.get("/metrics").text
    for i, r in enumerate(replies):
        assert r.status_code == 200, r.text
        assert [a["answer"] for a in r.json()["results"]] == expected[i:] + expected[:i]
    batches = next(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                   if line.startswith('bertrt_batch_sequences_count{kind="qa"}'))
    assert batches > len(rotations)  # the requests' windows did not fit one batch each


def test_long_texts_tokenise_off_the_event_loop_with_the_same_answer(serve, served, monkeypatch):
    context = FILLER * (INLINE_TOKENIZE_CHARS // len(FILLER) + 1) + "The treaty was signed in Lisbon in 1867. "
    assert len(context) > INLINE_TOKENIZE_CHARS
    question = "Where was the treaty signed?"
    expected = answer_question(served.runner, served.tokenizer, question, context).text
    from bertrt.tasks import qa as qa_module

    threads = []
    original = qa_module.qa_features_batch

    def recording(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return original(*args, **kwargs)
    monkeypatch.setattr(qa_module, "qa_features_batch", recording)  # the app imports it when created
    with serve() as client:
        long = client.post("/v1/qa", json={"question": question, "context": context})
        short = client.post("/v1/qa", json={"question": "What is TensorRT?", "context": CONTEXTS[0]})
    assert long.status_code == 200 and long.json()["answer"] == expected and "Lisbon" in expected
    assert short.status_code == 200
    assert threads[0].startswith("serve-tokenizer") and not threads[1].startswith("serve-tokenizer")


def test_the_server_waits_for_gpu_results_asleep_and_the_cpu_path_is_unchanged(served):
    """On CUDA the server's QA backend waits on a blocking event instead of spinning a core (its
    processes share the host's cores); on the CPU there is nothing to wait for."""
    from bertrt.harness.loadgen.backends import PackedBackend

    assert served._qa.blocking_sync is False  # this model is on the CPU
    on_gpu = ServedModel(served.runner, served.tokenizer, name="gpu", device="cuda")  # nothing runs yet
    assert on_gpu._qa.blocking_sync is True
    assert PackedBackend(served.runner, torch.device("cuda"), "loadgen").blocking_sync is False  # LoadGen spins


def test_a_request_of_no_windows_is_answered_at_once(served):
    import asyncio
    import time

    from bertrt.serve.metrics import Metrics
    from bertrt.serve.worker import ModelBatcher, run_windows

    batcher = ModelBatcher(served, Metrics(), max_batch_tokens=512, max_delay_s=0.0, max_queue_tokens=4096).start()
    try:
        assert asyncio.run(run_windows(batcher, "qa", [], time.perf_counter() + 5)) == []
    finally:
        batcher.stop()


THREADS_AFTER_TOKENISING = """
import os, sys, psutil
from bertrt.serve import ServedModel, create_app
model = ServedModel.load(device="cpu")
if sys.argv[1] == "server":
    create_app(model)
before = psutil.Process().num_threads()
model.tokenizer.encode_batch(["What is TensorRT?", "TensorRT is an inference platform for GPUs."] * 4)
print(psutil.Process().num_threads() - before, os.environ.get("TOKENIZERS_PARALLELISM"))
"""


def test_a_server_process_tokenises_without_the_library_s_thread_pool():
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}
    env["RAYON_NUM_THREADS"] = "2"  # the pool's size where it is used, whatever the machine's cores

    def new_threads(mode: str, **extra) -> tuple[int, str]:
        done = subprocess.run([sys.executable, "-c", THREADS_AFTER_TOKENISING, mode], capture_output=True,
                              text=True, timeout=300, env={**env, **extra})
        assert done.returncode == 0, done.stderr[-2000:]
        threads, setting = done.stdout.split()
        return int(threads), setting

    assert new_threads("library") == (2, "None")  # outside a server the batch goes to the pool
    assert new_threads("server") == (0, "false")
    assert new_threads("server", TOKENIZERS_PARALLELISM="true") == (2, "true")  # a setting given is kept
