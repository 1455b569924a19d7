"""Build an engine: canonical weights cast to one precision, checked, saved with a description.

Building is cheap on purpose (seconds, not the minutes-to-hours of TensorRT): there is nothing
to compile ahead of time. The runtime captures CUDA graphs lazily per token bucket, so a new
request shape never needs a rebuild.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from bertrt.config import Precision
from bertrt.engine.format import (SPEC_FILE, VOCAB_FILE, WEIGHTS_FILE, EngineError, EngineSpec, file_sha256, now_iso,
                                  write_atomically)
from bertrt.weights.schema import Checkpoint

DEFAULT_MAX_BATCH = 128
DEFAULT_MAX_SEQ_LENGTH = 384


def resolve_build_device(device: str | torch.device | None) -> torch.device:
    """None -> the GPU when there is one, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EngineError(f"device {device}: no CUDA GPU is available here")
    return device


def device_capability(device: torch.device) -> tuple[tuple[int, int] | None, str | None]:
    """(compute capability, GPU name) of a CUDA device; (None, None) for the CPU."""
    if device.type != "cuda":
        return None, None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return tuple(torch.cuda.get_device_capability(index)), torch.cuda.get_device_name(index)


def prepare_tensors(checkpoint: Checkpoint, precision: Precision) -> dict[str, torch.Tensor]:
    """Canonical tensors cast to the engine precision, contiguous, in the kernels' layout (the schema's).

    One cast per tensor (~400 for BERT-Large): the cost is memory bandwidth, not Python.
    """
    dtype = precision.dtype
    return {name: t.detach().to(dtype=dtype).contiguous() for name, t in checkpoint.tensors.items()}


def make_spec(checkpoint: Checkpoint, precision: Precision, *, max_tokens: int | None, max_seq_length: int | None,
              max_batch: int, device: torch.device) -> EngineSpec:
    """The engine description (without the weights checksum, filled in once the file exists)."""
    from bertrt import __version__

    config = checkpoint.config
    if max_seq_length is None:
        max_seq_length = min(DEFAULT_MAX_SEQ_LENGTH, config.max_position_embeddings)
    if max_tokens is None:
        max_tokens = max_batch * max_seq_length
    capability, name = device_capability(device)
    return EngineSpec(
        config=config, precision=precision, max_tokens=max_tokens, max_seq_length=max_seq_length,
        max_batch=max_batch, compute_capability=capability, device_name=name, heads=checkpoint.heads,
        has_pooler=checkpoint.has_pooler, has_vocab=checkpoint.vocab_file is not None,
        source=checkpoint.source, bertrt_version=__version__, created=now_iso(), torch_version=torch.__version__,
    )


def build(model: str | Path | Checkpoint | None, out_dir: str | Path, *, precision: str | Precision = "fp16",
          max_tokens: int | None = None, max_seq_length: int | None = None, max_batch: int = DEFAULT_MAX_BATCH,
          device: str | torch.device | None = None) -> Path:
    """Build an engine folder from any checkpoint.

    Args:
        model: a checkpoint path or hub name (anything ``load_checkpoint`` takes), None for the
            embedded default model, or a loaded :class:`Checkpoint`.
        out_dir: the engine folder to write (replaced atomically if it holds an engine).
        precision: "fp32", "fp16" or "bf16": the dtype of every stored tensor.
        max_tokens: most tokens per forward pass (default ``max_batch * max_seq_length``).
        max_seq_length: longest accepted sequence (default min(384, max_position_embeddings)).
        max_batch: most sequences per forward pass.
        device: the GPU to build for (its compute capability is recorded), or "cpu" for a portable
            build; default the current GPU when there is one.

    Returns:
        The engine folder: ``engine.json``, ``weights.safetensors`` and ``vocab.txt`` when the
        checkpoint has one.

    Example:
        >>> path = build("bert-large-squad/", "engines/large-fp16", precision="fp16")
        >>> engine = Engine.load(path)
    """
    from safetensors.torch import save_file

    from bertrt.weights import load_checkpoint

    precision = Precision(precision)
    checkpoint = model if isinstance(model, Checkpoint) else load_checkpoint(model)
    spec = make_spec(checkpoint, precision, max_tokens=max_tokens, max_seq_length=max_seq_length,
                     max_batch=max_batch, device=resolve_build_device(device))
    tensors = prepare_tensors(checkpoint, precision)

    def fill(folder: Path) -> None:
        weights = folder / WEIGHTS_FILE
        save_file(tensors, str(weights), metadata={"format": "pt", "bertrt_precision": precision.value})
        final = dataclasses.replace(spec, weights_sha256=file_sha256(weights), weights_bytes=weights.stat().st_size)
        if checkpoint.vocab_file is not None:
            (folder / VOCAB_FILE).write_bytes(Path(checkpoint.vocab_file).read_bytes())
        (folder / SPEC_FILE).write_text(json.dumps(final.to_json(), indent=2) + "\n", encoding="utf-8")

    return write_atomically(Path(out_dir), fill)
