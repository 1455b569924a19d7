"""Sentence embeddings: pooled last hidden states, as sentence-transformers computes them.

A sentence-transformers folder says how its vectors are made (``1_Pooling/config.json``: mean or CLS
pooling; ``modules.json``: whether a Normalize module follows; ``sentence_bert_config.json``: the
longest input); ``embedding_settings`` reads them, so the defaults reproduce the model's own vectors.

Example:
    >>> task_model = load_for_task(path, "feature-extraction")
    >>> vectors = embed(task_model, ["A sentence.", "Another one."])   # (2, hidden) float32
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from bertrt.tasks.loading import TaskModel, batches, encode_texts

POOLINGS = ("mean", "cls")


@dataclasses.dataclass(frozen=True)
class EmbeddingSettings:
    """How vectors are made: ``pooling`` in POOLINGS, L2 ``normalize``, at most ``max_length`` tokens."""

    pooling: str = "mean"
    normalize: bool = False
    max_length: int | None = None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not readable JSON ({exc})") from exc


def embedding_settings(folder: str | Path | None) -> EmbeddingSettings:
    """The sentence-transformers settings saved in ``folder`` (defaults: mean, not normalised)."""
    if folder is None:
        return EmbeddingSettings()
    folder = Path(folder)
    pooling, normalize, max_length = "mean", False, None
    modules = folder / "modules.json"
    if modules.is_file():
        entries = _read_json(modules)
        for entry in entries if isinstance(entries, list) else []:
            kind = str(entry.get("type", ""))
            if kind.endswith("Normalize"):
                normalize = True
            elif kind.endswith("Pooling"):
                pool_file = folder / str(entry.get("path", "")) / "config.json"
                if pool_file.is_file():
                    raw = _read_json(pool_file)
                    if raw.get("pooling_mode_cls_token"):
                        pooling = "cls"
                    elif not raw.get("pooling_mode_mean_tokens", True):
                        modes = sorted(k for k, v in raw.items() if k.startswith("pooling_mode") and v)
                        raise ValueError(f"{pool_file}: pooling {', '.join(modes)} is not supported "
                                         f"(bertrt pools by {' or '.join(POOLINGS)})")
    st_config = folder / "sentence_bert_config.json"
    if st_config.is_file():
        value = _read_json(st_config).get("max_seq_length")
        max_length = int(value) if isinstance(value, int) and value > 0 else None
    return EmbeddingSettings(pooling, normalize, max_length)


@torch.inference_mode()
def embed(task_model: TaskModel, texts: Sequence[str], *, pooling: str | None = None,
          normalize: bool | None = None, max_length: int | None = None, batch_size: int = 32) -> torch.Tensor:
    """One vector per text, in input order.

    Args:
        task_model: from ``load_for_task(..., "feature-extraction")``.
        texts: the inputs; longer ones are cut to ``max_length`` tokens.
        pooling: "mean" (average of every token's last hidden state, special tokens included, as
            sentence-transformers does) or "cls" (the first token's); None: the checkpoint's setting.
        normalize: L2-normalise each vector; None: the checkpoint's setting.
        max_length: tokens per input, special tokens included; None: the checkpoint's setting, else
            the model's position table.
    Returns:
        (len(texts), hidden_size) float32 on the CPU.
    """
    saved = embedding_settings(task_model.folder)
    pooling = saved.pooling if pooling is None else pooling
    normalize = saved.normalize if normalize is None else normalize
    max_length = max_length or saved.max_length or task_model.max_length
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    max_length = min(max_length, task_model.max_length)
    if not texts:
        return torch.empty(0, task_model.model.config.hidden_size)
    model = task_model.model
    out = []
    for batch in batches(encode_texts(task_model.tokenizer, texts, max_length=max_length), batch_size,
                         task_model.device):
        hidden = model.encode(batch)
        vectors = model.mean_pooled(batch, hidden) if pooling == "mean" else model.cls_pooled(batch, hidden)
        out.append(vectors.float().cpu())
    vectors = torch.cat(out)
    return F.normalize(vectors, p=2, dim=1) if normalize else vectors
