"""Load a runnable model and its tokenizer: the one place commands and pipelines get one."""

from __future__ import annotations

from pathlib import Path

from bertrt.device import resolve_device
from bertrt.errors import CheckpointError
from bertrt.tokenizer import BertTokenizer, load_tokenizer
from bertrt.weights import load_checkpoint


def load_model(model: str | Path | None = None, *, device: str | None = None, engine: str | Path | None = None,
               head: str | None = "qa"):
    """(runner, tokenizer); the runner (an ``Engine`` or a ``ReferenceBert``) has ``encode``,
    ``qa_logits``, ``pooled`` and ``classify`` over a ``PackedBatch``.

    With ``engine`` a saved bertrt engine is loaded; on a GPU without an engine, one is built in
    memory from the checkpoint (fp16); on the CPU the fp32 reference model runs. ``head`` is the
    head the caller needs ("qa", "classifier"), or None for the encoder alone.

    Raises:
        CheckpointError: no such head, no vocab.txt, or a vocab.txt longer than the embedding table;
            DeviceError: a device that is not here.
    """
    dev = resolve_device(device)
    if engine is not None:
        from bertrt.engine import Engine

        runner = Engine.load(engine, device=dev)
        _require(head, runner.heads, runner.vocab_file or runner.tokenizer_dir, str(engine), engine=True)
        return runner, tokenizer_from_files(runner.vocab_file, runner.config, str(engine),
                                            folder=runner.tokenizer_dir)
    checkpoint = load_checkpoint(model)
    # Without a vocab.txt, the checkpoint's own tokenizer files (ModernBERT's tokenizer.json).
    folder = checkpoint.tokenizer_dir if checkpoint.vocab_file is None else None
    _require(head, checkpoint.heads, checkpoint.vocab_file or folder, checkpoint.source)
    tokenizer = tokenizer_from_files(checkpoint.vocab_file, checkpoint.config, checkpoint.source, folder=folder)
    if dev.type == "cuda":
        from bertrt.engine import Engine

        # No build-time kernel timing for an engine made on the fly: its default kernels serve a
        # one-off question as well, and `bertrt build` records tuned choices for repeated use.
        return Engine.from_checkpoint(checkpoint, device=dev, gemm_choices={}), tokenizer
    from bertrt.reference import ReferenceBert

    return ReferenceBert.from_checkpoint(checkpoint, device=dev), tokenizer


def tokenizer_from_files(vocab_file, config, source: str, *, folder: Path | None = None):
    """A BertTokenizer of ``vocab_file``, or without one the tokenizer files in ``folder``."""
    try:
        if vocab_file is None and folder is not None:
            return load_tokenizer(folder, lowercase=config.do_lower_case)
        return BertTokenizer(vocab_file, lowercase=config.do_lower_case, vocab_size=config.vocab_size)
    except ValueError as exc:
        raise CheckpointError(f"{source}: {exc}") from None


def max_window(model) -> int:
    """The longest sequence ``model`` accepts: its position table, and an engine's own limit."""
    limit = model.config.max_position_embeddings
    engine_limit = getattr(model, "max_seq_length", None)
    return min(limit, engine_limit) if isinstance(engine_limit, int) else limit


def load_qa(model: str | Path | None = None, *, device: str | None = None, engine: str | Path | None = None):
    """(runner, tokenizer) where runner.qa_logits(PackedBatch) -> (total_tokens, 2)."""
    return load_model(model, device=device, engine=engine, head="qa")


_FINE_TUNE = {"qa": "has no question-answering head (qa_outputs); fine-tune one with `bertrt train-squad`",
              "classifier": "has no sequence-classification head; fine-tune one with `bertrt train-classifier`"}


def _require(head: str | None, heads: tuple[str, ...], vocab_file, source: str, *, engine: bool = False) -> None:
    if head is not None and head not in _FINE_TUNE:
        raise ValueError(f"unknown head {head!r} (choose from {', '.join(_FINE_TUNE)} or None)")
    if head is not None and head not in heads:
        names = {"qa": "question-answering", "classifier": "sequence-classification"}
        raise CheckpointError(f"{source}: the engine has no {names[head]} head; build it from a checkpoint that has "
                              "one" if engine else f"{source}: {_FINE_TUNE[head]}")
    if vocab_file is None:
        raise CheckpointError(f"{source}: the engine has no vocab.txt (random weights, for speed runs only); build "
                              "one from a real checkpoint to answer questions" if engine else
                              f"{source}: no vocab.txt beside the weights")