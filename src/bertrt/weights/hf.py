"""Hugging Face folders: config.json + model.safetensors or pytorch_model.bin (+ vocab.txt)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bertrt.atomic import write_folder_atomically
from bertrt.config import BertConfig, ConfigError, read_json_object
from bertrt.weights.schema import Checkpoint, CheckpointError, from_hf_names, to_hf_names

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and any((path / f).is_file() for f in WEIGHT_FILES)


def read_state_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file or a torch state dict without unpickling arbitrary objects."""
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read weights ({str(exc).splitlines()[0]})") from exc
    except Exception as exc:  # torch raises UnpicklingError and friends for non-tensor pickles
        raise CheckpointError(f"{path}: not a plain tensor state dict ({type(exc).__name__}); "
                              "bertrt never unpickles arbitrary objects") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a dict of tensor names to tensors")
    return state


def load_hf_folder(path: Path) -> Checkpoint:
    config, labels = read_config(path / "config.json")
    weights = next(path / f for f in WEIGHT_FILES if (path / f).is_file())
    state = read_state_file(weights)
    tensors = from_hf_names(state, config, source=str(weights))
    vocab = path / "vocab.txt"
    return Checkpoint(config, tensors, vocab_file=vocab if vocab.is_file() else None, source=str(path),
                      tokenizer_dir=path, labels=labels)


def read_config(config_file: Path) -> tuple[BertConfig, tuple[str, ...]]:
    """The config and label names of a checkpoint, with its casing from ``tokenizer_config.json``.

    ``config.json`` rarely says whether the vocabulary is cased; the tokenizer's own config does
    (``do_lower_case``), and wins where both speak.
    """
    raw = read_json_object(config_file)
    config = BertConfig.from_dict(raw, source=str(config_file))
    lower = tokenizer_lowercase(config_file.parent)
    if lower is not None:
        config = dataclasses.replace(config, do_lower_case=lower)
    return config, BertConfig.labels_from_dict(raw, source=str(config_file))


def tokenizer_lowercase(folder: Path) -> bool | None:
    """``do_lower_case`` from ``folder/tokenizer_config.json``, or None when it does not say."""
    file = folder / "tokenizer_config.json"
    if not file.is_file():
        return None
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{file}: not valid JSON ({exc})") from exc
    value = raw.get("do_lower_case") if isinstance(raw, dict) else None
    return value if isinstance(value, bool) else None


def save_hf_folder(checkpoint: Checkpoint, out: str | Path, *, dtype: torch.dtype | None = None,
                   extra_files: dict[str, str] | None = None) -> Path:
    """Write a Hugging Face-compatible folder (config.json, model.safetensors, vocab.txt).

    The folder is written next to its final place and renamed into it, so an interrupted
    save never leaves a half-written model behind.
    """
    out = Path(out)
    heads = checkpoint.heads
    arch = {"qa": "BertForQuestionAnswering", "classifier": "BertForSequenceClassification",
            "token_classifier": "BertForTokenClassification"}.get(
        heads[0] if heads else "", "BertModel")
    tensors = to_hf_names(checkpoint.tensors, checkpoint.config)
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}

    def fill(tmp: Path) -> None:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(checkpoint.config.to_hf_dict(arch), indent=2) + "\n")
        if checkpoint.vocab_file is not None:
            (tmp / "vocab.txt").write_bytes(Path(checkpoint.vocab_file).read_bytes())
            (tmp / "tokenizer_config.json").write_text(json.dumps(
                {"do_lower_case": checkpoint.config.do_lower_case, "tokenizer_class": "BertTokenizer",
                 "model_max_length": checkpoint.config.max_position_embeddings}, indent=2) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")

    write_folder_atomically(out, fill)
    return out
