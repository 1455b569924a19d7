"""Token classification (NER and the like) with word-level aggregation and character offsets.

Each word (as the tokenizer's pre-tokenizer splits the text: for byte-level BPE, punctuation is a
word of its own) takes the label of its first token (Hugging Face's ``aggregation_strategy="first"``); consecutive words of one entity type are merged
(``B-X`` starts a new entity, ``I-X`` or a bare ``X`` continues one), and words labelled ``O`` are
dropped. ``text[entity.start:entity.end] == entity.text`` always.

Example:
    >>> task_model = load_for_task("./ner-model", "token-classification")
    >>> [(e.label, e.text) for e in tag(task_model, "Ada Lovelace lived in London.")]
    [('PER', 'Ada Lovelace'), ('LOC', 'London')]
"""

from __future__ import annotations

import dataclasses

import torch

from bertrt.packed import pack_sequences
from bertrt.tasks.loading import TaskModel


@dataclasses.dataclass(frozen=True)
class Entity:
    """One tagged span: its entity type, characters ``[start, end)`` of the text, and the mean
    probability of its words' labels."""

    label: str
    text: str
    start: int
    end: int
    score: float


@dataclasses.dataclass(frozen=True)
class Word:
    """One word's label (the first token's), its probability and its character span."""

    label: str
    score: float
    start: int
    end: int


def _split_tag(label: str) -> tuple[str, str]:
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


@torch.inference_mode()
def tag_words(task_model: TaskModel, text: str) -> list[Word]:
    """Every word of ``text`` with its label; texts longer than the model's window are read in
    consecutive windows, so every token is labelled once."""
    tokenizer = task_model.tokenizer
    enc = tokenizer.encode(text)
    if not enc.ids:
        return []
    budget = task_model.max_length - tokenizer.special_tokens(pair=False)
    probs = []
    for start in range(0, len(enc.ids), budget):
        chunk = enc.ids[start:start + budget]
        ids, types = tokenizer.pair(chunk)
        lead = next(i for i in range(len(ids)) if ids[i:i + len(chunk)] == chunk)
        batch = pack_sequences([ids], [types]).to(task_model.device)
        logits = task_model.model.token_logits(batch).float().cpu()
        probs.append(logits.softmax(-1)[lead:lead + len(chunk)])
    probs = torch.cat(probs)
    words: list[Word] = []
    last_word = object()
    for i, (word_id, (s, e)) in enumerate(zip(enc.words or range(len(enc.ids)), enc.offsets)):
        if s == e:  # whitespace alone (byte-level BPE's lone "Ġ"): no characters to label
            continue
        if word_id is not None and word_id == last_word:
            w = words[-1]
            words[-1] = dataclasses.replace(w, end=max(w.end, e))
            continue
        last_word = word_id
        best = int(probs[i].argmax())
        words.append(Word(task_model.labels[best], float(probs[i, best]), s, e))
    return words


def group_words(text: str, words: list[Word], *, ignore: tuple[str, ...] = ("O",)) -> list[Entity]:
    """Merge consecutive words of one entity type into entities; drop those labelled ``ignore``."""
    groups: list[list[tuple[str, Word]]] = []
    for word in words:
        bi, kind = _split_tag(word.label)
        if groups and groups[-1][0][0] == kind and bi != "B":
            groups[-1].append((kind, word))
        else:
            groups.append([(kind, word)])
    out = []
    for group in groups:
        kind = group[0][0]
        if kind in ignore:
            continue
        start, end = group[0][1].start, group[-1][1].end
        out.append(Entity(kind, text[start:end], start, end, sum(w.score for _, w in group) / len(group)))
    return out


def tag(task_model: TaskModel, text: str) -> list[Entity]:
    """The entities in ``text``, in order (see the module docstring for the aggregation)."""
    return group_words(text, tag_words(task_model, text))
