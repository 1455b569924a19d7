"""Load a runnable model and its tokenizer: the one place commands and pipelines get one."""

from __future__ import annotations

from pathlib import Path

import torch

from bertrt.tokenizer import BertTokenizer
from bertrt.weights import CheckpointError, load_checkpoint


def resolve_device(device: str | None) -> torch.device:
    """'auto'/None -> CUDA when present, else CPU; otherwise as given (checked)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA GPU is available here (use --device cpu)")
    return dev


def load_model(model: str | Path | None = None, *, device: str | None = None, engine: str | Path | None = None,
               head: str | None = "qa"):
    """(runner, tokenizer); the runner (an ``Engine`` or a ``ReferenceBert``) has ``encode``,
    ``qa_logits``, ``pooled`` and ``classify`` over a ``PackedBatch``.

    With ``engine`` a saved bertrt engine is loaded; on a GPU without an engine, one is built in
    memory from the checkpoint (fp16); on the CPU the fp32 reference model runs. ``head`` is the
    head the caller needs ("qa", "classifier"), or None for the encoder alone.
    """
    dev = resolve_device(device)
    if engine is not None:
        from bertrt.engine import Engine

        runner = Engine.load(engine, device=dev)
        _require(head, runner.heads, runner.vocab_file, str(engine))
        return runner, BertTokenizer(runner.vocab_file, lowercase=runner.config.do_lower_case)
    checkpoint = load_checkpoint(model)
    _require(head, checkpoint.heads, checkpoint.vocab_file, checkpoint.source)
    tokenizer = BertTokenizer(checkpoint.vocab_file, lowercase=checkpoint.config.do_lower_case)
    if dev.type == "cuda":
        from bertrt.engine import Engine

        # No build-time kernel timing for an engine made on the fly: its default kernels serve a
        # one-off question as well, and `bertrt build` records tuned choices for repeated use.
        return Engine.from_checkpoint(checkpoint, device=dev, gemm_choices={}), tokenizer
    from bertrt.reference import ReferenceBert

    return ReferenceBert.from_checkpoint(checkpoint, device=dev), tokenizer


def load_qa(model: str | Path | None = None, *, device: str | None = None, engine: str | Path | None = None):
    """(runner, tokenizer) where runner.qa_logits(PackedBatch) -> (total_tokens, 2)."""
    return load_model(model, device=device, engine=engine, head="qa")


_FINE_TUNE = {"qa": "has no question-answering head (qa_outputs); fine-tune one with `bertrt train-squad`",
              "classifier": "has no sequence-classification head; fine-tune one with `bertrt train-classifier`"}


def _require(head: str | None, heads: tuple[str, ...], vocab_file, source: str) -> None:
    if head is not None and head not in _FINE_TUNE:
        raise ValueError(f"unknown head {head!r} (choose from {', '.join(_FINE_TUNE)} or None)")
    if head is not None and head not in heads:
        raise CheckpointError(f"{source}: {_FINE_TUNE[head]}")
    if vocab_file is None:
        raise CheckpointError(f"{source}: no vocab.txt beside the weights")
