"""Load any BERT checkpoint into the canonical schema (see ``schema``)."""

from __future__ import annotations

import re
from pathlib import Path

from bertrt.weights.schema import Checkpoint, CheckpointError, random_checkpoint
from bertrt.weights.hf import is_hf_folder, load_hf_folder, save_hf_folder

__all__ = ["Checkpoint", "CheckpointError", "load_checkpoint", "random_checkpoint", "save_hf_folder",
           "resolve_model_path", "DEFAULT_MODEL_DIR"]

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "default"
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model_path(model: str | Path | None) -> Path:
    """A local path for ``model``: None means the embedded default model; a hub name is downloaded."""
    if model is None:
        if not (DEFAULT_MODEL_DIR / "config.json").is_file():
            raise CheckpointError(f"the embedded default model is missing from {DEFAULT_MODEL_DIR}; "
                                  "reinstall bertrt or pass --model PATH")
        return DEFAULT_MODEL_DIR
    path = Path(model).expanduser()
    if path.exists() or Path(f"{path}.index").is_file():  # a TensorFlow ``model.ckpt`` prefix names no file
        return path
    if _HUB_NAME.match(str(model)):
        from bertrt.weights.hub import download

        return download(str(model))
    raise CheckpointError(f"{model}: no such file or folder (and not a Hugging Face hub name like 'org/model')")


def load_checkpoint(model: str | Path | None = None) -> Checkpoint:
    """Load a checkpoint of any supported format, detected from what is on disk.

    Args:
        model: a Hugging Face folder, a TensorFlow checkpoint (folder or ``model.ckpt`` prefix),
            an ``.onnx`` file, a PyTorch state dict (``.bin``/``.pt``/``.pth``) or ``.safetensors``
            file with ``config.json`` beside it, a hub name, or None for the embedded default.
    Raises:
        CheckpointError: naming what is wrong; nothing is half-loaded.

    Example:
        >>> checkpoint = load_checkpoint()    # the embedded default model: MiniLM fine-tuned for SQuAD
        >>> checkpoint.config.hidden_size, checkpoint.heads, len(checkpoint.tensors)
        (384, ('qa',), 81)
    """
    checkpoint = _load(resolve_model_path(model))
    check_finite(checkpoint)
    return checkpoint


def check_finite(checkpoint: Checkpoint) -> None:
    """Raise CheckpointError naming the first tensor holding a NaN or an infinity."""
    import torch

    for name, tensor in checkpoint.tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"{checkpoint.source}: tensor {name} holds {bad} NaN or infinite value(s); "
                                  "the checkpoint is corrupted or diverged in training")


def _load(path: Path) -> Checkpoint:
    if is_hf_folder(path):
        return load_hf_folder(path)
    from bertrt.weights import onnx_loader, tf_checkpoint, torch_state

    if tf_checkpoint.is_tf_checkpoint(path):
        return tf_checkpoint.load_tf_checkpoint(path)
    if path.suffix == ".onnx":
        return onnx_loader.load_onnx(path)
    if path.is_file() and path.suffix in torch_state.SUFFIXES:
        return torch_state.load_state_dict_file(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: no checkpoint found (expected config.json + model.safetensors or "
                              "pytorch_model.bin, or a TensorFlow model.ckpt.index + bert_config.json)")
    raise CheckpointError(f"{path}: unknown checkpoint format (supported: Hugging Face folder, TensorFlow "
                          "checkpoint, .onnx, .bin/.pt/.pth/.safetensors state dict)")
