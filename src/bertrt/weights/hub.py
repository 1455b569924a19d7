"""Hugging Face hub names: downloaded when online, a clear message when not."""

from __future__ import annotations

from pathlib import Path

from bertrt.weights.schema import CheckpointError

_ALLOW = ["config.json", "*.safetensors", "pytorch_model.bin", "vocab.txt", "tokenizer*.json"]


def download(name: str) -> Path:
    offline_hint = (f"cannot fetch '{name}' from the Hugging Face hub (offline?). Download it on a machine "
                    "with internet (e.g. `huggingface-cli download {name} --local-dir DIR`), copy the folder "
                    "here and pass --model DIR")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise CheckpointError(offline_hint.replace("{name}", name) +
                              "; or `pip install bertrt[hub]` to download hub names") from exc
    try:
        return Path(snapshot_download(repo_id=name, allow_patterns=_ALLOW))
    except Exception as exc:  # the hub client raises many kinds of network/offline errors
        raise CheckpointError(offline_hint.replace("{name}", name) + f" [{type(exc).__name__}]") from exc
