"""Shared pieces of the loader tests: tiny random Hugging Face BERTs and a packed-vs-padded comparison."""

from __future__ import annotations

from pathlib import Path

import torch

from bertrt.packed import pack_sequences, pad_sequences
from bertrt.reference import ReferenceBert

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, type_vocab_size=2)
TF_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tf_bert_tiny"


def randomize_(model: torch.nn.Module, seed: int, std: float = 0.2) -> torch.nn.Module:
    """Give every parameter distinct random values (HF's init leaves biases 0 and LayerNorm 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen) * std
            param.copy_(1 + noise if "LayerNorm.weight" in name else noise)
    return model


def tiny_hf(cls_name: str = "BertForQuestionAnswering", *, seed: int = 0, randomize: bool = True, **overrides):
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(**{**TINY, **overrides})
    model = getattr(transformers, cls_name)(config).eval()
    return randomize_(model, seed) if randomize else model


def sample_sequences(vocab_size: int, lengths=(7, 13, 3), seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    """Sequences like [CLS] a [SEP] b [SEP] with token types 0 then 1, of the given lengths."""
    gen = torch.Generator().manual_seed(seed)
    ids, types = [], []
    for n in lengths:
        body = torch.randint(5, vocab_size, (n,), generator=gen).tolist()
        body[0], body[-1] = 2, 3
        split = max(1, n // 2)
        ids.append(body)
        types.append([0] * split + [1] * (n - split))
    return ids, types


def padded(ids, types) -> dict[str, torch.Tensor]:
    """Hugging Face keyword inputs for ragged sequences."""
    return dict(zip(("input_ids", "attention_mask", "token_type_ids"), pad_sequences(ids, types)))


def qa_max_diff(hf_model, checkpoint, lengths=(7, 13, 3)) -> float:
    """Max |ReferenceBert(checkpoint) - HF| over the QA start/end logits of every real token."""
    ids, types = sample_sequences(checkpoint.config.vocab_size, lengths)
    model = ReferenceBert.from_checkpoint(checkpoint)
    batch = pack_sequences(ids, types)
    inputs = padded(ids, types)
    with torch.no_grad():
        ours = model.qa_logits(batch)
        out = hf_model(**inputs)
    mask = inputs["attention_mask"].bool()
    theirs = torch.stack([out.start_logits[mask], out.end_logits[mask]], dim=-1)
    assert ours.shape == theirs.shape
    return (ours - theirs).abs().max().item()
