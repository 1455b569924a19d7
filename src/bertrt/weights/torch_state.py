"""A bare PyTorch state dict (``.bin``/``.pt``/``.pth``) or ``.safetensors`` file with ``config.json`` beside it.

Pickles are read with ``torch.load(weights_only=True)``, which refuses any object that is not a
tensor or a plain container, so loading a file never runs code from it.
"""

from __future__ import annotations

from pathlib import Path

from bertrt.weights.hf import read_config, read_state_file
from bertrt.weights.schema import Checkpoint, CheckpointError, from_hf_names

SUFFIXES = (".bin", ".pt", ".pth", ".safetensors")


def load_state_dict_file(path: str | Path) -> Checkpoint:
    """Load a Hugging Face-named BERT state dict file.

    Args:
        path: the weights file; ``config.json`` (Hugging Face or Google ``bert_config.json``) and
            optionally ``vocab.txt`` must be in the same folder.
    Raises:
        CheckpointError: no config beside it, unreadable or non-tensor pickle, wrong tensors.
        ConfigError: the config is not a BERT encoder.
    """
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise CheckpointError(f"{path}: not a state dict file (expected one of {', '.join(SUFFIXES)})")
    config_file = next((path.parent / n for n in ("config.json", "bert_config.json")
                        if (path.parent / n).is_file()), None)
    if config_file is None:
        raise CheckpointError(f"{path}: a bare weights file needs the model's config.json beside it "
                              f"(none in {path.parent})")
    config, labels = read_config(config_file)
    state = read_state_file(path)
    tensors = from_hf_names(state, config, source=str(path))
    vocab = path.parent / "vocab.txt"
    return Checkpoint(config, tensors, vocab_file=vocab if vocab.is_file() else None, source=str(path),
                      tokenizer_dir=path.parent, labels=labels)
