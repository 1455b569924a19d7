"""Pipelines: from text to answer in one call, in the convention of ``transformers.pipeline``.

A task is a small class registered under its name in ``TASKS``; ``pipeline(task, ...)`` loads the
model with the head the task needs and returns the task's callable. A task added here is one
class with a ``head`` and a ``__call__``.

Example:
    >>> import bertrt
    >>> qa = bertrt.pipeline("question-answering")   # the embedded default model, on the GPU if any
    >>> answer = qa(question="Who wrote it?", context="It was written by Ada Lovelace.")
    >>> answer["answer"], answer["start"], answer["end"]
    ('Ada Lovelace', 18, 30)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

TASKS: dict[str, type["Pipeline"]] = {}


def register(task: str):
    """Class decorator: make a ``Pipeline`` subclass available as ``pipeline(task)``."""

    def add(cls: type[Pipeline]) -> type[Pipeline]:
        cls.task = task
        TASKS[task] = cls
        return cls

    return add


class Pipeline:
    """A loaded model and its tokenizer, called on text.

    Attributes:
        model: the runner (``Engine`` on a GPU, ``ReferenceBert`` on the CPU).
        tokenizer: its ``BertTokenizer``.
    """

    task = ""
    head: str | None = None  # the head the task needs ("qa", "classifier"), None for the encoder alone

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.task!r} on {type(self.model).__name__}>"


def _pairs(first: str | Sequence[str], second: str | Sequence[str] | None, names: tuple[str, str]):
    """(lists of firsts and seconds, whether the caller passed a list); a lone string meets every item."""
    listed = not isinstance(first, str) or (second is not None and not isinstance(second, str))
    firsts = [first] if isinstance(first, str) else list(first)
    if second is None:
        return firsts, None, listed
    seconds = [second] if isinstance(second, str) else list(second)
    if len(firsts) == 1 and len(seconds) > 1:
        firsts = firsts * len(seconds)
    elif len(seconds) == 1 and len(firsts) > 1:
        seconds = seconds * len(firsts)
    if len(firsts) != len(seconds):
        raise ValueError(f"{len(firsts)} {names[0]}s but {len(seconds)} {names[1]}s")
    return firsts, seconds, listed


@register("question-answering")
class QuestionAnsweringPipeline(Pipeline):
    """Extractive QA: the span of ``context`` that answers ``question``.

    Call with ``question=`` and ``context=`` (strings, or lists of equal length, or a list against
    one string). Returns ``{"answer", "score", "start", "end"}`` (a list of them for lists):
    ``context[start:end] == answer``, ``score`` the span's probability among the n-best.
    Passages longer than the model's window are read through overlapping windows.

    Example:
        >>> import bertrt
        >>> qa = bertrt.pipeline("question-answering", device="cpu")
        >>> [a["answer"] for a in qa(question=["Who wrote it?", "When?"], context="Ada Lovelace wrote it in 1843.")]
        ['Ada Lovelace', '1843']
    """

    head = "qa"

    def __call__(self, question: str | Sequence[str], context: str | Sequence[str], *, n_best_size: int = 20,
                 max_answer_length: int = 30) -> dict[str, Any] | list[dict[str, Any]]:
        from bertrt.tasks.qa import answer_question

        questions, contexts, listed = _pairs(question, context, ("question", "context"))
        answers = []
        for q, c in zip(questions, contexts):
            a = answer_question(self.model, self.tokenizer, q, c, n_best_size=n_best_size,
                                max_answer_length=max_answer_length)
            answers.append({"answer": a.text, "score": a.probability, "start": a.start, "end": a.end})
        return answers if listed else answers[0]


@register("feature-extraction")
class FeatureExtractionPipeline(Pipeline):
    """Sentence embeddings: the mean of each text's last hidden states (sentence-transformers' pooling).

    Call with a string (returns a (hidden,) fp32 tensor) or a list of strings ((n, hidden)). Any
    checkpoint serves, with or without heads.

    Example:
        >>> import bertrt, torch
        >>> embed = bertrt.pipeline("feature-extraction", device="cpu")
        >>> cat, kitten, car = embed(["a cat", "a kitten", "a car"])
        >>> bool(torch.cosine_similarity(cat, kitten, 0) > torch.cosine_similarity(cat, car, 0))
        True
    """

    def __call__(self, texts: str | Sequence[str], *, batch_size: int = 64):
        from bertrt.tasks.sequences import sentence_embeddings

        single = isinstance(texts, str)
        vectors = sentence_embeddings(self.model, self.tokenizer, [texts] if single else list(texts),
                                      batch_size=batch_size)
        return vectors[0] if single else vectors


@register("text-classification")
class TextClassificationPipeline(Pipeline):
    """Sequence (or sequence-pair) classification by the model's classifier head.

    Call with a string, or a list, and optionally ``text_pair=`` (sentence-pair tasks such as
    MRPC). Returns ``{"label": "LABEL_i", "score"}`` with the softmax probability of the best label
    (a list for lists). Needs a checkpoint with a classifier (``bertrt train-classifier``).
    """

    head = "classifier"

    def __call__(self, text: str | Sequence[str], text_pair: str | Sequence[str] | None = None, *,
                 batch_size: int = 64) -> dict[str, Any] | list[dict[str, Any]]:
        from bertrt.tasks.sequences import classify_texts

        texts, pairs, listed = _pairs(text, text_pair, ("text", "text pair"))
        probs = classify_texts(self.model, self.tokenizer, texts, pairs, batch_size=batch_size).softmax(-1)
        score, label = probs.max(-1)
        out = [{"label": f"LABEL_{int(i)}", "score": float(s)} for s, i in zip(score, label)]
        return out if listed else out[0]


def pipeline(task: str, model: str | Path | None = None, *, engine: str | Path | None = None,
             device: str = "auto") -> Pipeline:
    """A callable that runs ``task`` end to end: tokenisation, the model, post-processing.

    Args:
        task: one of ``TASKS``: "question-answering", "feature-extraction", "text-classification".
        model: any checkpoint ``load_checkpoint`` reads (Hugging Face folder, TensorFlow checkpoint,
            ONNX, PyTorch or safetensors state dict, hub name); None for the embedded default model
            (a MiniLM fine-tuned for SQuAD).
        engine: a saved engine folder (``bertrt build``), used instead of ``model``.
        device: "auto" (the GPU when there is one), "cpu", "cuda", "cuda:1", ... On a GPU without
            ``engine`` an fp16 engine is built in memory; on the CPU the fp32 reference runs.

    Raises:
        ValueError: an unknown task.
        CheckpointError: the model lacks the head the task needs, or its vocabulary.

    Example:
        >>> import bertrt
        >>> qa = bertrt.pipeline("question-answering", device="cpu")
        >>> qa(question="What is TensorRT?",
        ...    context="TensorRT is a high performance deep learning inference platform.")["answer"]
        'a high performance deep learning inference platform'
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (choose from {', '.join(sorted(TASKS))})")
    cls = TASKS[task]
    from bertrt.loading import load_model

    runner, tokenizer = load_model(model, device=device, engine=engine, head=cls.head)
    return cls(runner, tokenizer)
