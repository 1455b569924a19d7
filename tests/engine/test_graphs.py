"""Token buckets and the staging of a batch into static graph buffers (checked on the CPU without
capturing), plus graph-vs-eager on a real GPU when there is one."""

from __future__ import annotations

import numpy as np
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
    staged = runner.run(batch, from_host=False)
    assert runner.inputs(128).cu_seqlens.tolist() == [0, 10, 74, 75, 105, 128]  # 4 real, padding, no empty slot
    eager = engine.qa_logits(batch)
    torch.testing.assert_close(staged, eager, atol=1e-5, rtol=1e-5)
    small = make_batch(120, [3, 5], seed=1)  # after a larger batch: stale buffer contents must not leak
    torch.testing.assert_close(runner.run(small, from_host=False), engine.qa_logits(small), atol=1e-5, rtol=1e-5)
    inputs = runner.inputs(64)
    assert inputs.cu_seqlens.tolist() == [0, 3, 8, 64, 64, 64]  # 2 real, padding, 2 empty
    assert not inputs.input_ids[8:].any() and not inputs.token_type_ids[8:].any()  # zeroed padding
    assert not inputs.position_ids[8:].any()


def test_host_batch_is_staged_in_one_region(tiny_checkpoint, make_batch):
    """A host batch is laid out in its bucket's region, padding zeroed, and copied over whole,
    whatever another bucket's region left in the buffer."""
    engine = Engine.from_checkpoint(tiny_checkpoint, device="cpu", max_batch=4, max_tokens=256)
    runner = GraphRunner(engine._qa, device=engine.device, max_tokens=256, max_batch=4, max_seq_length=64,
                         use_graphs=False)
    large, small = make_batch(120, [10, 64, 1, 30]), make_batch(120, [3, 5], seed=1)
    for batch in (large, small, large):
        torch.testing.assert_close(runner.run(batch), engine.qa_logits(batch), atol=1e-5, rtol=1e-5)
    inputs = runner.inputs(64)
    runner.run(small)
    assert inputs.input_ids[:8].tolist() == small.input_ids.tolist() and not inputs.input_ids[8:].any()
    assert inputs.position_ids[:8].tolist() == [0, 1, 2, 0, 1, 2, 3, 4] and not inputs.position_ids[8:].any()
    assert inputs.token_type_ids[:8].tolist() == small.token_type_ids.tolist()
    assert inputs.cu_seqlens.tolist() == [0, 3, 8, 64, 64, 64]
    assert inputs.input_ids.dtype == torch.int32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graphs_match_eager_on_gpu(tiny_checkpoint, make_batch):
    graphed = Engine.from_checkpoint(tiny_checkpoint, device="cuda", precision="fp16", max_batch=4, max_tokens=256)
    # The same recorded kernel choices: two timed builds may pick different backends, and the
    # up-projection's backends differ by more than rounding (cuBLASLt's GELU is the tanh form).
    eager = Engine.from_checkpoint(tiny_checkpoint, device="cuda", precision="fp16", max_batch=4, max_tokens=256,
                                   graphs=False, gemm_choices=graphed.spec.gemm_choices)
    assert graphed.graphs and not eager.graphs
    for lengths in ([10, 64, 1, 30], [3, 5], [64, 64, 64, 64], [7] * 9, [3, 5]):
        batch = make_batch(120, lengths)  # host batches are staged in one copy, device ones on the device
        expected = eager.qa_logits(batch.to("cuda"))
        torch.testing.assert_close(graphed.qa_logits(batch.to("cuda")), expected, atol=2e-3, rtol=2e-3)
        torch.testing.assert_close(graphed.qa_logits(batch), expected, atol=2e-3, rtol=2e-3)
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


def test_loadgen_backend_hands_graph_batches_over_on_the_host(tiny_checkpoint, make_batch):
    """The bertrt LoadGen backend gives graph-sized batches to the engine as int32 host tensors
    (positions computed on the host), which the graph runner stages in one copy: same logits as eager."""
    from bertrt.harness.loadgen.backends import PackedBackend

    engine = Engine.from_checkpoint(tiny_checkpoint, device="cpu", max_batch=4, max_tokens=256)
    runner = GraphRunner(engine._qa, device=engine.device, max_tokens=256, max_batch=4, max_seq_length=64,
                         use_graphs=False)
    seen = []

    class Recording:  # the CPU stand-in for the CUDA graph runner, recording what reaches it
        def run(self, batch):
            seen.append(batch)
            return runner.run(batch)

    engine.graphs = True  # as on a GPU; the runner below replays nothing
    engine._runners["qa"] = Recording()
    backend = PackedBackend(engine, torch.device("cpu"), "bertrt-engine")
    batch = make_batch(120, [10, 64, 1, 30, 7])  # 5 sequences: the engine splits them in two passes
    ids = [x.numpy().astype(np.int32) for x in batch.split(batch.input_ids)]
    types = [x.numpy().astype(np.int32) for x in batch.split(batch.token_type_ids)]
    logits = backend.run(ids, types)
    engine.graphs = False
    torch.testing.assert_close(torch.from_numpy(logits), engine.qa_logits(batch), atol=1e-5, rtol=1e-5)
    assert [b.num_sequences for b in seen] == [4, 1]
    assert all(b.input_ids.device.type == "cpu" and b.input_ids.dtype == torch.int32 for b in seen)
    assert seen[1].position_ids.tolist() == list(range(7))
