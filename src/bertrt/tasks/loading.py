"""A checkpoint, its tokenizer and the head a task needs: the one place the embed / classify / tag tasks
get a runnable model, and where a checkpoint with another head is refused by name.

Example:
    >>> task_model = load_for_task("./ner-model", "token-classification")
    >>> task_model.model.token_logits(batch)    # (total_tokens, num_labels)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch

from bertrt.packed import PackedBatch, pack_sequences
from bertrt.reference import ReferenceBert
from bertrt.tokenizer import tokenizer_for
from bertrt.weights import CheckpointError, load_checkpoint
from bertrt.weights.schema import Checkpoint

# transformers.pipeline task names -> the canonical head each needs (None: the encoder alone).
TASK_HEADS: dict[str, str | None] = {
    "feature-extraction": None,
    "text-classification": "classifier",
    "token-classification": "token_classifier",
    "question-answering": "qa",
}
HEAD_NAMES = {
    "qa": "a question-answering head (qa_outputs)",
    "classifier": "a sequence-classification head",
    "token_classifier": "a token-classification head",
}
HEAD_COMMANDS = {"qa": "bertrt qa", "classifier": "bertrt classify", "token_classifier": "bertrt tag"}


@dataclasses.dataclass
class TaskModel:
    """A model ready for one task.

    Args:
        model: the fp32 reference on ``device`` (eval mode), or a saved ``Engine``.
        tokenizer: the checkpoint's own tokenizer (``bertrt.tokenizer.load_tokenizer``).
        labels: the head's output names in label-id order (``LABEL_i`` where the config names none).
        source: where the checkpoint came from (for messages).
        folder: the checkpoint's folder, when it has one (sentence-transformers settings live there).
    """

    model: ReferenceBert  # or an Engine: the same encode / classify / token_logits / *_pooled
    tokenizer: object
    labels: tuple[str, ...]
    source: str
    folder: Path | None = None

    @property
    def device(self) -> torch.device:
        device = getattr(self.model, "device", None)  # an Engine's; a module's from its parameters
        return device if isinstance(device, torch.device) else next(self.model.parameters()).device

    @property
    def max_length(self) -> int:
        """Longest input in tokens, special tokens included (and within an engine's limit)."""
        limit = self.model.config.max_sequence_length
        return min(limit, getattr(self.model, "max_seq_length", limit))


def describe_heads(checkpoint: Checkpoint) -> str:
    """'a token-classification head (BertForTokenClassification)' and the like, for messages."""
    if not checkpoint.heads:
        found = "no task head (an encoder only)"
    else:
        found = " and ".join(HEAD_NAMES[h] for h in checkpoint.heads)
    arch = checkpoint.config.architecture
    return f"{found} ({arch})" if arch else found


def require_head(checkpoint: Checkpoint, task: str) -> None:
    """Raise CheckpointError unless ``checkpoint`` has the head ``task`` needs, naming the head it has."""
    if task not in TASK_HEADS:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASK_HEADS)}")
    head = TASK_HEADS[task]
    if head is None or head in checkpoint.heads:
        return
    hint = ""
    other = [HEAD_COMMANDS[h] for h in checkpoint.heads]
    if other:
        hint = f"; run it with `{other[0]}`"
    raise CheckpointError(f"{checkpoint.source}: {task} needs {HEAD_NAMES[head]}, but this checkpoint has "
                          f"{describe_heads(checkpoint)}{hint}")


def load_for_task(model: str | Path | Checkpoint | None, task: str, *,
                  device: str | torch.device | None = "cpu", engine: str | Path | None = None) -> TaskModel:
    """Load ``model`` for ``task`` (a ``TASK_HEADS`` name) on the reference path, or the saved
    ``engine`` instead (``bertrt build``; it carries the checkpoint's tokenizer and label names).

    Raises:
        CheckpointError: the checkpoint or engine lacks the task's head (the message names the head it
            has), or has no tokenizer files.
    """
    if engine is not None:
        return _engine_for_task(engine, task, device=device)
    checkpoint = model if isinstance(model, Checkpoint) else load_checkpoint(model)
    require_head(checkpoint, task)
    try:
        tokenizer = tokenizer_for(checkpoint)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    ref = ReferenceBert.from_checkpoint(checkpoint, device=device)
    labels = checkpoint.labels or tuple(f"LABEL_{i}" for i in range(checkpoint.config.num_labels))
    return TaskModel(ref, tokenizer, labels, checkpoint.source, checkpoint.tokenizer_dir)


def _engine_for_task(folder: str | Path, task: str, *, device) -> TaskModel:
    from bertrt.engine import Engine
    from bertrt.tokenizer import load_tokenizer

    if task not in TASK_HEADS:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASK_HEADS)}")
    engine = Engine.load(folder, device=device)
    head = TASK_HEADS[task]
    if head is not None and head not in engine.heads:
        found = " and ".join(HEAD_NAMES[h] for h in engine.heads) or "no task head (an encoder only)"
        raise CheckpointError(f"{folder}: {task} needs {HEAD_NAMES[head]}, but this engine has {found}; build "
                              "it from a checkpoint that has one")
    try:
        tokenizer = load_tokenizer(engine.tokenizer_dir, vocab_file=engine.vocab_file,
                                   lowercase=engine.config.do_lower_case)
    except ValueError:
        raise CheckpointError(f"{folder}: the engine has no tokenizer files (random weights, for speed runs "
                              "only); build one from a real checkpoint") from None
    labels = engine.labels or tuple(f"LABEL_{i}" for i in range(engine.config.num_labels))
    return TaskModel(engine, tokenizer, labels, str(folder))


def truncate_pair(first: list[int], second: list[int] | None, budget: int) -> tuple[list[int], list[int] | None]:
    """Cut the longer of the two token lists first until both fit ``budget`` tokens ('longest_first')."""
    first = list(first)
    second = None if second is None else list(second)
    while len(first) + (len(second) if second is not None else 0) > budget:
        if second is not None and len(second) >= len(first) and second:
            second.pop()
        elif first:
            first.pop()
        else:
            second.pop()
    return first, second


def encode_texts(tokenizer, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
                 max_length: int) -> list[tuple[list[int], list[int]]]:
    """(ids, token types) of each text (and its pair) with the family's special tokens, at most
    ``max_length`` tokens each."""
    if pairs is not None and len(pairs) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs")
    firsts = tokenizer.encode_batch(list(texts))
    seconds = tokenizer.encode_batch(list(pairs)) if pairs is not None else [None] * len(texts)
    out = []
    for a, b in zip(firsts, seconds):
        budget = max_length - tokenizer.special_tokens(pair=b is not None)
        a_ids, b_ids = truncate_pair(a.ids, None if b is None else b.ids, budget)
        out.append(tokenizer.pair(a_ids, b_ids))
    return out


def batches(encoded: Sequence[tuple[list[int], list[int]]], batch_size: int, device: torch.device):
    """Packed batches of at most ``batch_size`` sequences, in order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for i in range(0, len(encoded), batch_size):
        chunk = encoded[i:i + batch_size]
        batch: PackedBatch = pack_sequences([ids for ids, _ in chunk], [types for _, types in chunk])
        yield batch.to(device)
