"""Tasks over whole sequences: sentence embeddings (feature extraction) and sequence classification.

Each text (or text pair) is one sequence, ``[CLS] text [SEP] (pair [SEP])``, cut to the model's
longest sequence; sequences run packed, ``batch_size`` at a time.

Example:
    >>> vectors = sentence_embeddings(model, tokenizer, ["a cat", "a dog"])   # (2, hidden) fp32
    >>> logits = classify_texts(model, tokenizer, ["it rained"], ["the ground is wet"])   # (1, num_labels)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bertrt.packed import mean_per_sequence, pack_sequences
from bertrt.tasks.squad import model_device
from bertrt.tokenizer import BertTokenizer


def max_sequence_length(model) -> int:
    """The longest sequence ``model`` takes: an engine's ``max_seq_length``, else its position table."""
    return int(getattr(model, "max_seq_length", model.config.max_position_embeddings))


def tokenize_texts(tokenizer: BertTokenizer, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
                   max_length: int) -> list[tuple[list[int], list[int]]]:
    """(ids, token types) per text, ``[CLS] text [SEP] (pair [SEP])``, at most ``max_length`` tokens.

    A pair that is too long loses tokens from the end of its longer part first (as BERT's own
    ``longest_first`` truncation).

    Raises:
        ValueError: a text is not a string, or ``pairs`` has another length than ``texts``.
    """
    if pairs is not None and len(pairs) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(pairs)} text pairs")
    for text in (*texts, *(pairs or ())):
        if not isinstance(text, str):
            raise ValueError(f"texts must be strings, got {type(text).__name__}")
    firsts = [e.ids for e in tokenizer.encode_batch(list(texts))]
    seconds = [e.ids for e in tokenizer.encode_batch(list(pairs))] if pairs is not None else [None] * len(texts)
    out = []
    for first, second in zip(firsts, seconds):
        budget = max_length - (3 if second is not None else 2)
        first, second = list(first), (list(second) if second is not None else None)
        while len(first) + len(second or ()) > budget:
            (second if second is not None and len(second) > len(first) else first).pop()
        out.append(tokenizer.pair(first, second))
    return out


def _run(model, method: str, sequences: list[tuple[list[int], list[int]]], batch_size: int) -> torch.Tensor:
    device = model_device(model)
    outputs = []
    with torch.inference_mode():
        for i in range(0, len(sequences), batch_size):
            chunk = sequences[i:i + batch_size]
            batch = pack_sequences([ids for ids, _ in chunk], [types for _, types in chunk]).to(device)
            if method == "mean":
                outputs.append(mean_per_sequence(model.encode(batch).float(), batch))
            else:
                outputs.append(model.classify(batch).float())
    return torch.cat(outputs).cpu() if outputs else torch.empty(0)


def sentence_embeddings(model, tokenizer: BertTokenizer, texts: Sequence[str], *,
                        batch_size: int = 64) -> torch.Tensor:
    """(len(texts), hidden) fp32: each text's mean last hidden state over all its tokens.

    This is sentence-transformers' mean pooling ([CLS] and [SEP] included), the embedding that
    models such as all-MiniLM-L6-v2 are trained for.

    Args:
        model: anything with ``encode(PackedBatch) -> (total_tokens, hidden)`` (``Engine``, ``ReferenceBert``).
    """
    sequences = tokenize_texts(tokenizer, texts, max_length=max_sequence_length(model))
    return _run(model, "mean", sequences, batch_size)


def classify_texts(model, tokenizer: BertTokenizer, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
                   batch_size: int = 64) -> torch.Tensor:
    """(len(texts), num_labels) fp32 logits of the model's sequence-classification head.

    Args:
        model: anything with ``classify(PackedBatch) -> (B, num_labels)`` (``Engine``, ``ReferenceBert``).
        pairs: the second text of each pair (sentence-pair tasks such as MRPC), or None.
    """
    sequences = tokenize_texts(tokenizer, texts, pairs, max_length=max_sequence_length(model))
    return _run(model, "classify", sequences, batch_size)
