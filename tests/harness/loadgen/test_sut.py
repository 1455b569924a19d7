"""The batching SUT under the real LoadGen with a fake backend: fast, and exact about what comes back."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

lg = pytest.importorskip("mlperf_loadgen")

from bertrt.harness.loadgen import HarnessOptions, Mode, Scenario  # noqa: E402
from bertrt.harness.loadgen.accuracy import read_accuracy_log  # noqa: E402
from bertrt.harness.loadgen.sut import BatchingSUT  # noqa: E402
from loadgen_fakes import FakeBackend, FakeQSL, drive  # noqa: E402


def _run(tmp_path: Path, qsl, backend, options: HarnessOptions, budget: int, issue_times=None) -> BatchingSUT:
    sut = BatchingSUT(backend, qsl, scenario=options.scenario, max_batch_tokens=budget,
                      latency_target_s=0.5).start()
    if issue_times is not None:
        inner = sut.issue_queries

        def timed(samples):
            start = time.perf_counter()
            inner(samples)
            issue_times.append(time.perf_counter() - start)

        sut.issue_queries = timed
    return drive(sut, qsl, options, tmp_path)


@pytest.mark.parametrize("padded", [False, True])
def test_offline_sorted_batches_within_budget_and_exact_responses(tmp_path, padded):
    qsl, backend = FakeQSL(200), FakeBackend(padded=padded)
    options = HarnessOptions(scenario=Scenario.OFFLINE, mode=Mode.ACCURACY)
    sut = _run(tmp_path, qsl, backend, options, budget=1000)
    assert sut.error is None and sut.samples == len(qsl)
    for lengths in backend.batches:
        cost = len(lengths) * max(lengths) if padded else sum(lengths)
        assert cost <= 1000 or len(lengths) == 1
    # Offline sorts by length: batches come out in non-decreasing length order.
    flat = [n for lengths in backend.batches for n in lengths]
    assert flat == sorted(flat) and len(backend.batches) > 1
    logits = read_accuracy_log(tmp_path / "mlperf_log_accuracy.json")
    assert sorted(logits) == list(range(len(qsl)))
    for i, value in logits.items():  # each sample got exactly its own tokens' logits back
        np.testing.assert_array_equal(value[:, 0], qsl.input_ids[i])
        np.testing.assert_array_equal(value[:, 1], qsl.token_type_ids[i])


def test_server_issue_never_blocks_and_batches_dynamically(tmp_path):
    qsl, backend = FakeQSL(64), FakeBackend(delay_s=0.03)
    options = HarnessOptions(scenario=Scenario.SERVER, target_qps=300, target_latency_ms=2000,
                             min_duration_s=0.5, min_query_count=100)
    issue_times: list[float] = []
    sut = _run(tmp_path, qsl, backend, options, budget=100_000, issue_times=issue_times)
    assert sut.error is None and sut.samples == len(issue_times) >= 100
    # The backend takes 30 ms per batch; issuing must not wait for it.
    assert max(issue_times) < 0.01
    # Samples that arrived while a batch ran go together in the next one.
    assert max(len(b) for b in backend.batches) > 1 and len(backend.batches) < sut.samples


def test_server_batches_capped_by_latency_target():
    qsl = FakeQSL(50)
    sut = BatchingSUT(FakeBackend(), qsl, scenario=Scenario.SERVER, max_batch_tokens=100_000,
                      latency_target_s=0.3)
    sut._tokens_per_s = 1000.0  # measured throughput: a third of 300 ms is 100 tokens
    sut._pending = [(i, i, 0.0) for i in range(len(qsl))]
    batch = sut._take_batch()
    k = len(batch)
    assert [i for _, i, _ in batch] == list(range(k))  # oldest first, not sorted by length
    # As many as fit in 100 tokens, not one more.
    assert qsl.lengths[:k].sum() <= 100 < qsl.lengths[:k + 1].sum()
    assert len(sut._pending) == len(qsl) - k


def test_backend_failure_ends_the_run_with_the_error(tmp_path):
    qsl = FakeQSL(8)
    options = HarnessOptions(scenario=Scenario.OFFLINE, mode=Mode.ACCURACY)
    sut = _run(tmp_path, qsl, FakeBackend(fail=True), options, budget=1000)
    assert isinstance(sut.error, RuntimeError) and "device lost" in str(sut.error)


class AsyncFakeBackend(FakeBackend):
    """``submit`` launches at once and answers on ``result()``; every launch and result is logged."""

    def __init__(self, events: list):
        super().__init__()
        self.events = events

    def submit(self, input_ids, token_type_ids):
        first = int(input_ids[0][0]) // 1000
        self.events.append(("launch", first))
        logits = self.run(input_ids, token_type_ids)
        events = self.events

        class Pending:
            def result(self):
                events.append(("result", first))
                return logits
        return Pending()


def _order(pending_samples: int, budget: int) -> list:
    qsl, events = FakeQSL(40), []
    sut = BatchingSUT(AsyncFakeBackend(events), qsl, scenario=Scenario.SERVER, max_batch_tokens=budget,
                      latency_target_s=10.0)
    sut._complete = lambda batch, lengths, pending, *_: pending.result()  # no LoadGen session here
    sut._pending = [(i, i, 0.0) for i in range(pending_samples)]
    sut.start()
    sut.stop()
    return events


def test_server_overlaps_batches_only_while_a_backlog_waits():
    # 40 samples of 5-60 tokens, 150-token batches: a backlog, so the next batch is launched
    # before the running one's result is taken (its host work overlaps the device's).
    events = _order(40, budget=150)
    launches = [i for i, (kind, _) in enumerate(events) if kind == "launch"]
    results = [i for i, (kind, _) in enumerate(events) if kind == "result"]
    assert len(launches) == len(results) > 3
    assert launches[1] < results[0]
    # Each batch's result still comes back, in order.
    assert [b for kind, b in events if kind == "result"] == [b for kind, b in events if kind == "launch"]
    # No backlog (everything fits in one batch): launch, then its result, nothing in between.
    assert _order(3, budget=10_000) == [("launch", 0), ("result", 0)]


def test_warm_up_runs_mixed_batches_within_the_backend_limits():
    from bertrt.harness.loadgen.runner import warm_up

    qsl, backend = FakeQSL(300), FakeBackend()
    backend.max_batch_samples = 16
    warm_up(backend, qsl, 400, full_batch=True, mixed_batches=4)
    sizes = [sum(b) for b in backend.batches]
    assert len(backend.batches) == 1 + 3 + 3 * 4
    assert all(len(b) <= 16 for b in backend.batches) and all(s <= 400 for s in sizes)
    # Random batches, not only the longest samples: their token totals fall on several residues mod 16.
    assert len({s % 16 for s in sizes[4:]}) >= 3
    warm_up(backend := FakeBackend(), qsl, 400, full_batch=False)
    assert len(backend.batches) == 1  # on the CPU only the first-call cost of one sample


def test_run_test_freezes_the_heap_only_while_loadgen_runs(tmp_path):
    """Objects alive before the timed run sit in the collector's permanent generation during it
    (full collections of the QSL's heap would stall the SUT), and come back out afterwards."""
    import gc

    from bertrt.harness.loadgen.runner import run_test

    class FreezeRecordingBackend(FakeBackend):
        def run(self, input_ids, token_type_ids):
            frozen.append(gc.get_freeze_count())
            return super().run(input_ids, token_type_ids)

    frozen: list[int] = []
    keep = [object() for _ in range(1000)]  # noqa: F841 - alive before the run, so frozen during it
    options = HarnessOptions(scenario=Scenario.OFFLINE, min_duration_s=0.1, min_query_count=32, out=tmp_path)
    report = run_test(options, FakeQSL(32), FreezeRecordingBackend())
    assert report["samples_completed"] == 32 and frozen and min(frozen) >= 1000
    assert gc.get_freeze_count() == 0
