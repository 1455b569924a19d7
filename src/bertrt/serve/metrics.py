"""Prometheus metrics of one server, on a registry of its own (several apps can live in one process).

Latency is split as text-embeddings-inference and Triton split theirs: time in the queue (per
window), time on the model (per batch), tokenisation (per request) and the whole request.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds: from a fraction of a millisecond (a warm GPU batch) to the longest timeouts.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0, 60.0)
SEQUENCE_BUCKETS = tuple(2 ** i for i in range(11))  # 1 .. 1024 sequences
TOKEN_BUCKETS = tuple(2 ** i for i in range(4, 18))  # 16 .. 131072 tokens


class Metrics:
    """The server's counters, histograms and gauges; ``render()`` gives the text exposition format."""

    content_type = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("bertrt_requests", "HTTP requests by route and status code",
                                ["route", "status"], registry=r)
        self.request_seconds = Histogram("bertrt_request_duration_seconds",
                                         "Whole request, from its arrival to its response",
                                         ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokenize_seconds = Histogram("bertrt_tokenize_duration_seconds",
                                          "Tokenisation and windowing of one request",
                                          ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("bertrt_queue_duration_seconds",
                                       "Time a window waits in the batcher before its batch launches",
                                       ["kind"], buckets=LATENCY_BUCKETS, registry=r)
        self.inference_seconds = Histogram("bertrt_inference_duration_seconds",
                                           "One batch on the model, from its launch to its result",
                                           ["kind"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_sequences = Histogram("bertrt_batch_sequences", "Sequences (windows) per batch",
                                         ["kind"], buckets=SEQUENCE_BUCKETS, registry=r)
        self.batch_tokens = Histogram("bertrt_batch_tokens", "Real tokens per batch",
                                      ["kind"], buckets=TOKEN_BUCKETS, registry=r)
        self.batch_failures = Counter("bertrt_batch_failures", "Batches whose model call raised",
                                      ["kind"], registry=r)
        self.queue_windows = Gauge("bertrt_queue_windows", "Windows waiting in the batcher", registry=r)
        self.queue_tokens = Gauge("bertrt_queue_tokens", "Tokens waiting in the batcher", registry=r)
        self.ready = Gauge("bertrt_ready", "1 once the model is loaded and warm, 0 while draining", registry=r)

    def observe_queue(self, kind: str, seconds) -> None:
        """Each window's wait in the batcher before its batch launched."""
        histogram = self.queue_seconds.labels(kind)
        for s in seconds:
            histogram.observe(s)

    def observe_batch(self, kind: str, inference_s: float, windows: int, tokens: int) -> None:
        """One batch on the model: its seconds, windows and real tokens."""
        self.inference_seconds.labels(kind).observe(inference_s)
        self.batch_sequences.labels(kind).observe(windows)
        self.batch_tokens.labels(kind).observe(tokens)

    def watch_queue(self, batcher) -> None:
        """Read the queue depth off ``batcher`` at every scrape."""
        self.queue_windows.set_function(lambda: batcher.pending_items)
        self.queue_tokens.set_function(lambda: batcher.queued_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
