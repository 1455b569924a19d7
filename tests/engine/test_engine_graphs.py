"""Token buckets and the staging of a batch into static graph buffers (checked on the CPU without
capturing), plus graph-vs-eager on a real GPU when there is one."""

from __future__ import annotations

import pytest
import torch

from bertrt.engine import Engine
from bertrt.engine.graphs import GraphRunner, token_buckets


def test_token_buckets():
    buckets = token_buckets(49152)
    assert buckets == sorted(set(buckets)) and buckets[-1] == 49152
    assert buckets[:3] == [64, 128, 192] and 2048 in buckets and 2112 not in buckets and 2304 in buckets
    assert all(b - a <= 256 for a, b in zip(buckets, buckets[1:]))
    assert token_buckets(100) == [64, 100]
    assert token_buckets(30) == [30]


def test_bucket_choice(tiny_checkpoint):
    engine = Engine.from_checkpoint(tiny_checkpoint, device="cpu", max_batch=4, max_tokens=256)
    runner = GraphRunner(engine._qa, device=engine.device, max_tokens=256, max_batch=4, max_seq_length=64,
                         use_graphs=False)
    assert [runner.bucket(n) for n in (1, 64, 65, 200, 256)] == [64, 64, 128, 256, 256]
    with pytest.raises(ValueError, match="exceed max_tokens"):
        runner.bucket(257)


def test_staged_batch_gives_the_eager_answer(tiny_checkpoint, make_batch):
    """Padding to the bucket (dummy sequence, empty slots, fixed max_seqlen) must not change real tokens."""
    engine = Engine.from_checkpoint(tiny_checkpoint, device="cpu", max_batch=4, max_tokens=256)
    runner = GraphRunner(engine._qa, device=engine.device, max_tokens=256, max_batch=4, max_seq_length=64,
                         use_graphs=False)
    batch = make_batch(120, [10, 64, 1, 30])  # 105 tokens -> bucket 128: 23 padding tokens
    staged = runner.run(batch)
    assert runner.cu_seqlens.tolist() == [0, 10, 74, 75, 105, 128]  # 4 real, padding, (no empty slot left)
    eager = engine.qa_logits(batch)
    torch.testing.assert_close(staged, eager, atol=1e-5, rtol=1e-5)
    small = make_batch(120, [3, 5], seed=1)  # after a larger batch: stale buffer contents must not leak
    torch.testing.assert_close(runner.run(small), engine.qa_logits(small), atol=1e-5, rtol=1e-5)
    assert runner.cu_seqlens.tolist() == [0, 3, 8, 64, 64, 64]  # 2 real, padding, 2 empty
    # The padding tokens were not rewritten: they still hold the larger batch's tokens 8..63.
    torch.testing.assert_close(runner.input_ids[8:64], batch.input_ids[8:64])
    torch.testing.assert_close(runner.position_ids[8:64], batch.position_ids[8:64])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graphs_match_eager_on_gpu(tiny_checkpoint, make_batch):
    graphed = Engine.from_checkpoint(tiny_checkpoint, device="cuda", precision="fp16", max_batch=4, max_tokens=256)
    eager = Engine.from_checkpoint(tiny_checkpoint, device="cuda", precision="fp16", max_batch=4, max_tokens=256,
                                   graphs=False)
    assert graphed.graphs and not eager.graphs
    for lengths in ([10, 64, 1, 30], [3, 5], [64, 64, 64, 64], [7] * 9):
        batch = make_batch(120, lengths).to("cuda")
        torch.testing.assert_close(graphed.qa_logits(batch), eager.qa_logits(batch), atol=2e-3, rtol=2e-3)
    assert graphed.graphs  # no fallback to eager happened


def test_graph_max_tokens_runs_large_batches_eagerly(tiny_checkpoint, make_batch, monkeypatch):
    engine = Engine.from_checkpoint(tiny_checkpoint, device="cpu", max_batch=4, max_tokens=256)
    replayed = []

    class RecordingRunner:  # stands in for the CUDA graph runner, which needs a GPU
        def run(self, batch):
            replayed.append(batch.total_tokens)
            return torch.zeros(batch.total_tokens, 2)

    monkeypatch.setattr(engine, "_runner", lambda kind: RecordingRunner())
    engine.graphs, engine.graph_max_tokens = True, 20
    small, large = make_batch(120, [3, 5]), make_batch(120, [10, 30])
    assert engine.qa_logits(small).abs().sum() == 0  # replayed through the (fake) graph
    eager = engine.qa_logits(large)
    assert replayed == [8] and eager.abs().sum() > 0
    engine.graph_max_tokens = None
    engine.qa_logits(large)
    assert replayed == [8, 40]
