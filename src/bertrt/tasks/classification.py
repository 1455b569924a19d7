"""Sequence classification of texts or text pairs, and reranking with a one-logit cross-encoder.

Example:
    >>> task_model = load_for_task("./mrpc-model", "text-classification")
    >>> classify(task_model, ["He said so."], pairs=["So he said."])[0].label
    'LABEL_1'
    >>> [r.index for r in rerank(load_for_task("./reranker", "text-classification"), "query", passages)]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from bertrt.tasks.loading import TaskModel, batches, encode_texts
from bertrt.tasks.train import accuracy_f1


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The most probable label of one input, its probability, and every label's.

    With one logit (a regression or reranking head) ``probabilities`` is its sigmoid, as Hugging
    Face's text-classification pipeline reports it, and ``logits`` keeps the raw value.
    """

    label: str
    score: float
    probabilities: dict[str, float]
    logits: tuple[float, ...]

    @property
    def label_id(self) -> int:
        return max(range(len(self.logits)), key=self.logits.__getitem__)


@dataclasses.dataclass(frozen=True)
class Ranked:
    """One passage of a reranking: its position in the input, its text and its score (the logit)."""

    index: int
    passage: str
    score: float


@torch.inference_mode()
def sequence_logits(task_model: TaskModel, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
                    max_length: int | None = None, batch_size: int = 32) -> torch.Tensor:
    """(len(texts), num_labels) float32 logits of the sequence-classification head."""
    max_length = min(max_length or task_model.max_length, task_model.max_length)
    encoded = encode_texts(task_model.tokenizer, texts, pairs, max_length=max_length)
    if not encoded:
        return torch.empty(0, task_model.model.config.num_labels)
    return torch.cat([task_model.model.classify(b).float().cpu()
                      for b in batches(encoded, batch_size, task_model.device)])


def classify(task_model: TaskModel, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
             max_length: int | None = None, batch_size: int = 32) -> list[Prediction]:
    """The label of each text (or (text, pair) of texts), in input order.

    Args:
        task_model: from ``load_for_task(..., "text-classification")``.
        texts: first texts; ``pairs``: the second text of each, for sentence-pair models.
        max_length: tokens per input, special tokens included (longer inputs are cut, the longer
            text of a pair first); default the model's position table.
    """
    logits = sequence_logits(task_model, texts, pairs, max_length=max_length, batch_size=batch_size)
    labels = task_model.labels
    probs = logits.sigmoid() if logits.shape[1] == 1 else logits.softmax(-1)
    out = []
    for row, p in zip(logits.tolist(), probs.tolist()):
        best = max(range(len(row)), key=row.__getitem__)
        out.append(Prediction(labels[best], p[best], dict(zip(labels, p)), tuple(row)))
    return out


def rerank(task_model: TaskModel, query: str, passages: Sequence[str], *, max_length: int | None = None,
           batch_size: int = 32) -> list[Ranked]:
    """``passages`` sorted by a cross-encoder's score for (query, passage), best first.

    Raises:
        ValueError: the head has more than one logit (not a reranker).
    """
    if task_model.model.config.num_labels != 1:
        raise ValueError(f"{task_model.source}: reranking needs a one-logit cross-encoder; this classifier has "
                         f"{task_model.model.config.num_labels} labels ({', '.join(task_model.labels)})")
    logits = sequence_logits(task_model, [query] * len(passages), list(passages), max_length=max_length,
                             batch_size=batch_size)
    scores = logits[:, 0].tolist()
    order = sorted(range(len(passages)), key=lambda i: -scores[i])
    return [Ranked(i, passages[i], scores[i]) for i in order]


def evaluate_pairs(task_model: TaskModel, firsts: Sequence[str], seconds: Sequence[str], gold: Sequence[int], *,
                   max_length: int | None = None, batch_size: int = 32) -> tuple[list[Prediction], dict]:
    """Predictions for labelled pairs and their accuracy and F1 of label 1, as percentages (GLUE MRPC)."""
    predictions = classify(task_model, firsts, seconds, max_length=max_length, batch_size=batch_size)
    return predictions, accuracy_f1([p.label_id for p in predictions], list(gold))
