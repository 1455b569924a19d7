"""SQuAD v1.1 exact match and F1, with the semantics of the official ``evaluate-v1.1.py``.

Answers are normalised (lower case, ASCII punctuation removed, the articles a/an/the removed,
whitespace collapsed); F1 is over bags of normalised tokens; each question takes its best score
over its gold answers; the result is 100 x the mean over every question of the dataset, a question
without a prediction counting 0 (and printing the official message to stderr).
"""

from __future__ import annotations

import re
import string
import sys
from collections import Counter
from collections.abc import Callable, Iterable

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation, drop articles, collapse whitespace (in the official order)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def f1_score(prediction: str, ground_truth: str) -> float:
    """Harmonic mean of token precision and recall of the normalised answers (0 if none shared)."""
    pred = normalize_answer(prediction).split()
    truth = normalize_answer(ground_truth).split()
    shared = sum((Counter(pred) & Counter(truth)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(pred), shared / len(truth)
    return 2 * precision * recall / (precision + recall)


def _best_over(metric: Callable[[str, str], float], prediction: str, truths: Iterable[str]) -> float:
    return max(metric(prediction, t) for t in truths)


def evaluate(dataset: list[dict], predictions: dict[str, str]) -> dict[str, float]:
    """Exact match and F1 (percent) of ``predictions`` on every question of ``dataset``.

    Args:
        dataset: the SQuAD json's ``"data"`` list of articles (or a slice of it).
        predictions: qid -> predicted answer text; extra qids are ignored.

    Returns:
        {"exact_match": float, "f1": float}, both in [0, 100].
    """
    exact = f1 = 0.0
    total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    print(f"Unanswered question {qa['id']} will receive score 0.", file=sys.stderr)
                    continue
                truths = [a["text"] for a in qa["answers"]]
                prediction = predictions[qa["id"]]
                exact += _best_over(exact_match_score, prediction, truths)
                f1 += _best_over(f1_score, prediction, truths)
    if total == 0:
        raise ValueError("the dataset has no questions")
    return {"exact_match": 100.0 * exact / total, "f1": 100.0 * f1 / total}
