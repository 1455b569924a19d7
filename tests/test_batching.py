"""The token-budget batcher on its own: delay, groups, queue bound, discard, drain on stop."""

from __future__ import annotations

import threading
import time

import pytest

from bertrt.batching import QueueFull, Ready, TokenBatcher


class Item:
    def __init__(self, length: int, group: str = "qa"):
        self.length, self.group, self.arrived = length, group, time.perf_counter()


class Recorder(TokenBatcher):
    """Runs nothing: records each batch (its items and when it launched)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.batches: list[list[Item]] = []
        self.launched: list[float] = []
        self.done = threading.Event()

    def _length(self, item):
        return item.length

    def _arrival(self, item):
        return item.arrived

    def _group(self, item):
        return item.group

    def _launch(self, batch, waiting=0, worker=0):
        self.launched.append(time.perf_counter())
        return batch, Ready(None)

    def _complete(self, batch, pending):
        self.batches.append(batch)
        self.done.set()


def test_without_delay_a_lone_item_runs_at_once_and_with_delay_waits_for_company():
    eager = Recorder(max_batch_tokens=1000).start()
    item = Item(10)
    eager.put([item])
    assert eager.done.wait(5)
    eager.stop()
    assert eager.launched[0] - item.arrived < 0.2

    patient = Recorder(max_batch_tokens=1000, max_delay_s=0.3).start()
    first = Item(10)
    patient.put([first])
    time.sleep(0.1)
    patient.put([Item(20)])
    assert patient.done.wait(5)
    patient.stop()
    # Both in one batch, launched once the first had waited its 0.3 s (not at once, not much later).
    assert [len(b) for b in patient.batches] == [2]
    assert 0.28 <= patient.launched[0] - first.arrived < 1.5


def test_a_full_batch_does_not_wait_for_the_delay():
    b = Recorder(max_batch_tokens=30, max_delay_s=5.0).start()
    first = Item(10)
    b.put([first, Item(20)])  # exactly the budget
    assert b.done.wait(2)
    b.stop()
    assert b.launched[0] - first.arrived < 1.0 and [len(x) for x in b.batches] == [2]


def test_batches_respect_budget_item_limit_and_groups_in_arrival_order():
    b = Recorder(max_batch_tokens=100, max_batch_items=3)
    items = [Item(40), Item(40), Item(40), Item(5, "embed"), Item(5, "embed"), Item(5, "embed"), Item(5, "embed"),
             Item(5, "qa"), Item(500)]
    b.put(items)
    b.start()
    b.stop()  # drains everything pending before the worker ends
    got = [[items.index(i) for i in batch] for batch in b.batches]
    # 40+40 fits 100, a third 40 does not; embeds stop at 3 items; a group change cuts a batch;
    # an item longer than the budget still runs, alone.
    assert got == [[0, 1], [2], [3, 4, 5], [6], [7], [8]]


def test_queue_bound_refuses_whole_requests_and_discard_frees_room():
    b = Recorder(max_batch_tokens=1000, max_queue_tokens=100)
    first = [Item(30), Item(30)]
    b.put(first)
    with pytest.raises(QueueFull) as err:
        b.put([Item(30), Item(30)])  # 60 + 60 > 100: none of them is admitted
    assert err.value.queued == 60 and b.queued_tokens == 60 and b.pending_items == 2
    assert b.discard(first + [Item(1)]) == 2 and b.queued_tokens == 0
    b.put([Item(50), Item(50)])
    assert b.queued_tokens == 100


def test_stop_refuses_new_items():
    b = Recorder(max_batch_tokens=100).start()
    b.stop()
    with pytest.raises(RuntimeError):
        b.put([Item(1)])


def test_latency_target_caps_the_budget_at_the_measured_rate():
    b = Recorder(max_batch_tokens=10_000, latency_target_s=0.3)
    b._tokens_per_s = 1000.0  # a third of 300 ms at 1000 tokens/s: 100 tokens
    b.put([Item(40) for _ in range(5)])
    with b._cond:
        assert len(b._take_batch()) == 2


def test_one_put_of_many_items_reaches_every_idle_worker():
    """Workers asleep on an empty queue all get work from a single ``put`` (no flush, no later put)."""
    class Slow(Recorder):
        def _launch(self, batch, waiting=0, worker=0):
            self.workers.add(worker)
            time.sleep(0.05)
            return super()._launch(batch, waiting, worker)

    b = Slow(max_batch_tokens=10, workers=3)
    b.workers = set()
    b.start()
    time.sleep(0.1)  # every worker asleep on the empty queue
    b.put([Item(10) for _ in range(6)])
    deadline = time.monotonic() + 5
    while len(b.batches) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    b.stop()
    assert len(b.batches) == 6 and b.workers == {0, 1, 2}
