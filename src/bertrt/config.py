"""Typed configuration: the shape of a BERT encoder and the heads on top of it."""

from __future__ import annotations

import dataclasses
import enum
import json
from pathlib import Path
from typing import Any


from bertrt.errors import ConfigError  # noqa: F401  (re-exported: bertrt.config.ConfigError)


class Precision(str, enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"

    @property
    def dtype(self):
        import torch

        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.value]


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of a post-LN BERT encoder (names follow Hugging Face's config.json)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    num_labels: int = 2
    do_lower_case: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # --- Hugging Face config.json -------------------------------------------------

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config") -> "BertConfig":
        """Build from a Hugging Face (or Google ``bert_config.json``) dictionary.

        Raises ConfigError when the dictionary is not a BERT encoder bertrt supports.
        """
        model_type = raw.get("model_type", "bert")
        if model_type != "bert":
            raise ConfigError(f"{source}: model_type is {model_type!r}; bertrt runs 'bert' models")
        act = raw.get("hidden_act", "gelu")
        if act not in ("gelu", "gelu_python"):
            raise ConfigError(f"{source}: hidden_act {act!r} is not supported (exact erf 'gelu' only)")
        pos = raw.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ConfigError(f"{source}: position_embedding_type {pos!r} is not supported")
        missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads") if k not in raw]
        if missing:
            raise ConfigError(f"{source}: not a BERT config, missing {', '.join(missing)}")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in names}
        if "id2label" in raw and "num_labels" not in raw:
            kwargs["num_labels"] = len(raw["id2label"])
        kwargs.setdefault("intermediate_size", 4 * raw["hidden_size"])
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> "BertConfig":
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        return cls.from_dict(raw, source=str(path))

    def to_hf_dict(self, architecture: str = "BertModel") -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update(
            model_type="bert",
            architectures=[architecture],
            hidden_act="gelu",
            position_embedding_type="absolute",
            hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1,
            initializer_range=0.02,
        )
        if architecture == "BertForSequenceClassification":
            data["id2label"] = {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
            data["label2id"] = {f"LABEL_{i}": i for i in range(self.num_labels)}
        return data


# Standard shapes for speed runs (weights random: speed does not depend on values).
STANDARD_CONFIGS: dict[str, BertConfig] = {
    "base": BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "minilm": BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
}
