"""Extractive question answering on one (question, context) pair, through the SQuAD pipeline.

Passages longer than one window are answered through all their windows (``doc_stride``), never
truncated; the answer is cut from the original context, so it keeps its case and accents.

Example:
    >>> answer = answer_question(model, tokenizer, "Who wrote it?", "It was written by Ada Lovelace.")
    >>> answer.text, answer.start, answer.end
    ('Ada Lovelace', 18, 30)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from bertrt.tasks.squad import (FeatureConfig, SquadExample, SquadFeature, make_features, postprocess,
                                run_qa_model)
from bertrt.tokenizer import BertTokenizer, EncodingCache


@dataclasses.dataclass
class Answer:
    """The best answer span.

    ``text == context[start:end]`` (character offsets, end exclusive). ``score`` is the raw
    start_logit + end_logit of the span (comparable across calls with the same model);
    ``probability`` is its softmax share among the n-best candidates of this question.
    """

    text: str
    score: float
    start: int
    end: int
    probability: float = 1.0


def qa_features(tokenizer: BertTokenizer, question: str, context: str, *,
                config: FeatureConfig = FeatureConfig()) -> tuple[SquadExample, list[SquadFeature]]:
    """The question's example and its model windows (one ``SquadFeature`` per window).

    Raises:
        ValueError: the question or context is empty, whitespace, or has no tokens.
    """
    return qa_features_batch(tokenizer, [(question, context)], config=config)[0]


def qa_features_batch(tokenizer: BertTokenizer, pairs: Sequence[tuple[str, str]], *,
                      config: FeatureConfig = FeatureConfig(), contexts_cache: EncodingCache | None = None
                      ) -> list[tuple[SquadExample, list[SquadFeature]]]:
    """``qa_features`` of several (question, context) pairs, in order, through one tokenizer call
    (each distinct context tokenised once, or taken from ``contexts_cache``).

    Raises:
        ValueError: a question or context is empty, whitespace, or has no tokens (the first such
            pair's).
    """
    for question, context in pairs:
        for name, text in (("question", question), ("context", context)):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{name} must be a non-empty string, got {text!r}")
    examples = [SquadExample(qid=str(i), title="", article_index=0, context=context, question=question, answers=[])
                for i, (question, context) in enumerate(pairs)]
    grouped: list[list[SquadFeature]] = [[] for _ in examples]
    for feature in make_features(examples, tokenizer, config, contexts_cache=contexts_cache):
        grouped[feature.example_index].append(feature)
    for features in grouped:
        if not features:
            raise ValueError("context has no tokens after tokenisation")
        if features[0].input_ids[1] == tokenizer.sep_id:
            raise ValueError("question has no tokens after tokenisation")
    for example, features in zip(examples, grouped):
        for f in features:  # each pair's features index its own one-example list
            f.example_index = 0
    return list(zip(examples, grouped))


def best_answer(example: SquadExample, features: Sequence[SquadFeature], start_logits: Sequence[np.ndarray],
                end_logits: Sequence[np.ndarray], *, n_best_size: int = 20, max_answer_length: int = 30) -> Answer:
    """The best span across all of the example's windows, from each window's (len,) logits."""
    _, nbest = postprocess([example], features, start_logits, end_logits, n_best_size=n_best_size,
                           max_answer_length=max_answer_length)
    best = nbest[example.qid][0]
    return Answer(text=best["text"], score=best["start_logit"] + best["end_logit"],
                  start=best["start"], end=best["end"], probability=best["probability"])


def answer_question(model, tokenizer: BertTokenizer, question: str, context: str, *,
                    config: FeatureConfig = FeatureConfig(), n_best_size: int = 20,
                    max_answer_length: int = 30) -> Answer:
    """Best answer to ``question`` in ``context``.

    Args:
        model: anything with ``qa_logits(PackedBatch) -> (total_tokens, 2)`` (see ``run_qa_model``).
        tokenizer: the model's BertTokenizer.
        config: window geometry; questions longer than ``max_query_length`` tokens are cut.

    Raises:
        ValueError: the question or context is empty, whitespace, or has no tokens.
    """
    example, features = qa_features(tokenizer, question, context, config=config)
    starts, ends = run_qa_model(model, features)
    return best_answer(example, features, starts, ends, n_best_size=n_best_size,
                       max_answer_length=max_answer_length)
