"""The runtime on the CPU: same answers as the reference model, splitting, the API edge."""

from __future__ import annotations

import pytest
import torch

from bertrt.engine import Engine
from bertrt.packed import pack_padded, pack_sequences
from bertrt.reference import ReferenceBert


@pytest.fixture(scope="module")
def minilm(minilm_engine_dir, minilm_qa):
    return Engine.load(minilm_engine_dir, device="cpu"), ReferenceBert.from_checkpoint(minilm_qa)


def test_qa_logits_match_the_reference_on_real_weights(minilm, make_batch):
    engine, reference = minilm
    # 7 sequences > max_batch 4 and 390 tokens > max_tokens 256: the engine splits the batch.
    batch = make_batch(30522, [97, 1, 128, 40, 64, 17, 43])
    logits = engine.qa_logits(batch)
    with torch.inference_mode():
        expected = reference.qa_logits(batch)
    assert logits.shape == (batch.total_tokens, 2) and logits.dtype == torch.float32
    assert (logits - expected).abs().max().item() <= 1e-4
    assert expected.abs().max().item() > 0.1  # the comparison is not between near-zero numbers


def test_encode_matches_the_reference(minilm, make_batch):
    engine, reference = minilm
    batch = make_batch(30522, [5, 33, 12])
    with torch.inference_mode():
        expected = reference.encode(batch)
    assert (engine.encode(batch) - expected).abs().max().item() <= 1e-4


def test_each_sequence_is_independent_of_its_batch(minilm, make_batch):
    engine, _ = minilm
    batch = make_batch(30522, [20, 50, 9])
    together = engine.qa_logits(batch).split([20, 50, 9])
    ids, types = batch.input_ids[20:70].tolist(), batch.token_type_ids[20:70].tolist()
    alone = engine.qa_logits(pack_sequences([ids], [types]))
    assert (together[1] - alone).abs().max().item() <= 1e-5


def test_run_with_lists_and_with_padded_tensors(minilm):
    engine, _ = minilm
    seqs = [[101, 2054, 2003, 102], [101, 7592, 102, 2088, 2003, 2307, 102]]
    types = [[0, 0, 0, 0], [0, 0, 0, 1, 1, 1, 1]]
    per_sequence = engine.run(seqs, token_type_ids=types)
    assert [t.shape for t in per_sequence] == [(4, 2), (7, 2)]
    ids = torch.zeros(2, 9, dtype=torch.long)
    type_ids = torch.zeros(2, 9, dtype=torch.long)
    mask = torch.zeros(2, 9, dtype=torch.long)
    for row, (s, t) in enumerate(zip(seqs, types)):
        ids[row, :len(s)], type_ids[row, :len(s)], mask[row, :len(s)] = torch.tensor(s), torch.tensor(t), 1
    padded = engine.run(ids, attention_mask=mask, token_type_ids=type_ids)
    assert padded.shape == (2, 9, 2)
    torch.testing.assert_close(padded[0, :4], per_sequence[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(padded[1, :7], per_sequence[1], atol=1e-5, rtol=0)
    assert padded[0, 4:].abs().sum() == 0 and padded[1, 7:].abs().sum() == 0


def test_too_long_a_sequence_is_refused(minilm, make_batch):
    engine, _ = minilm
    with pytest.raises(ValueError, match="max_seq_length 128"):
        engine.qa_logits(make_batch(30522, [129]))


def test_classification_head_and_pooler(tiny_engine_dir, tiny_checkpoint, make_batch):
    engine = Engine.load(tiny_engine_dir, device="cpu")
    reference = ReferenceBert.from_checkpoint(tiny_checkpoint)
    batch = make_batch(120, [10, 3, 64, 30, 8, 1])  # 6 sequences > max_batch 4
    with torch.inference_mode():
        torch.testing.assert_close(engine.classify(batch), reference.classify(batch), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(engine.qa_logits(batch), reference.qa_logits(batch), atol=1e-5, rtol=1e-4)


def test_from_checkpoint_defaults_to_fp32_on_cpu(tiny_checkpoint, make_batch):
    engine = Engine.from_checkpoint(tiny_checkpoint, device="cpu")
    assert engine.precision.value == "fp32" and engine.max_seq_length == 64
    batch = make_batch(120, [12, 7])
    with torch.inference_mode():
        expected = ReferenceBert.from_checkpoint(tiny_checkpoint).qa_logits(batch)
    assert (engine.qa_logits(batch) - expected).abs().max().item() <= 1e-5


def test_low_precision_cpu_engine_stays_close_to_fp32(tiny_checkpoint, make_batch):
    batch = make_batch(120, [12, 7, 30])
    with torch.inference_mode():
        expected = ReferenceBert.from_checkpoint(tiny_checkpoint).qa_logits(batch)
        bf16 = Engine.from_checkpoint(tiny_checkpoint, device="cpu", precision="bf16").qa_logits(batch)
    assert bf16.dtype == torch.float32
    assert (bf16 - expected).abs().max().item() <= 0.05 * expected.abs().max().item()


def test_padded_packing_round_trip_through_qa_logits(minilm):
    """pack_padded at the edge, packed inside: the same numbers as lists."""
    engine, _ = minilm
    ids = torch.tensor([[101, 2000, 2001, 102, 0], [101, 2002, 102, 0, 0]])
    mask = (ids != 0).long()
    batch = pack_padded(ids, mask)
    assert batch.total_tokens == 7
    as_lists = engine.run([[101, 2000, 2001, 102], [101, 2002, 102]])
    torch.testing.assert_close(engine.qa_logits(batch), torch.cat(as_lists))
