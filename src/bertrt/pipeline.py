"""Load a question-answering model and its tokenizer: the one place commands get a runnable model."""

from __future__ import annotations

from pathlib import Path

from bertrt.device import resolve_device
from bertrt.tokenizer import BertTokenizer
from bertrt.weights import CheckpointError, load_checkpoint


def load_qa(model: str | Path | None = None, *, device: str | None = None, engine: str | Path | None = None):
    """(runner, tokenizer) where runner.qa_logits(PackedBatch) -> (total_tokens, 2).

    With ``engine`` a saved bertrt engine is loaded; on a GPU without an engine, one is built in
    memory from the checkpoint (fp16); on the CPU the fp32 reference model runs.
    """
    dev = resolve_device(device)
    if engine is not None:
        from bertrt.engine import Engine

        runner = Engine.load(engine, device=dev)
        return runner, BertTokenizer(runner.vocab_file, lowercase=runner.config.do_lower_case)
    checkpoint = load_checkpoint(model)
    if "qa" not in checkpoint.heads:
        raise CheckpointError(f"{checkpoint.source}: has no question-answering head (qa_outputs); "
                              "fine-tune one with `bertrt train-squad`")
    if checkpoint.vocab_file is None:
        raise CheckpointError(f"{checkpoint.source}: no vocab.txt beside the weights")
    tokenizer = BertTokenizer(checkpoint.vocab_file, lowercase=checkpoint.config.do_lower_case)
    if dev.type == "cuda":
        from bertrt.engine import Engine

        # No build-time kernel timing for an engine made on the fly: its default kernels serve a
        # one-off question as well, and `bertrt build` records tuned choices for repeated use.
        return Engine.from_checkpoint(checkpoint, device=dev, gemm_choices={}), tokenizer
    from bertrt.reference import ReferenceBert

    return ReferenceBert.from_checkpoint(checkpoint, device=dev), tokenizer
