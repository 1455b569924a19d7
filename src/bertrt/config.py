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
        # Upper bounds far above any BERT (BERT-Large: 24 layers, hidden 1024) that still stop a typo
        # such as 300000000 layers from allocating for hours.
        bounds = {"vocab_size": 10_000_000, "hidden_size": 65_536, "num_hidden_layers": 1_000,
                  "num_attention_heads": 1_024, "intermediate_size": 1_048_576,
                  "max_position_embeddings": 1_048_576, "type_vocab_size": 1_024, "num_labels": 100_000}
        for name, most in bounds.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= most:
                raise ConfigError(f"{name} must be an integer from 1 to {most:,}, got {value!r}")
        pad = self.pad_token_id
        if isinstance(pad, bool) or not isinstance(pad, int) or not 0 <= pad < self.vocab_size:
            raise ConfigError(f"pad_token_id must be an integer from 0 to vocab_size - 1 ({self.vocab_size - 1}), "
                              f"got {pad!r}")
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:  # NaN fails too
            raise ConfigError(f"layer_norm_eps must be a number between 0 and 1 (BERT: 1e-12), got {eps!r}")
        if not isinstance(self.do_lower_case, bool):
            raise ConfigError(f"do_lower_case must be true or false, got {self.do_lower_case!r}")
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
        for key in ("model_type", "hidden_act", "position_embedding_type"):
            if not isinstance(raw.get(key, ""), str):
                raise ConfigError(f"{source}: {key} must be a string, got {raw[key]!r}")
        missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads") if k not in raw]
        if missing:
            raise ConfigError(f"{source}: not a BERT config, missing {', '.join(missing)}")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in names}
        if "id2label" in raw and not isinstance(raw["id2label"], dict):
            raise ConfigError(f"{source}: id2label must be an object of id -> label")
        if "id2label" in raw and "num_labels" not in raw:
            kwargs["num_labels"] = len(raw["id2label"])
        if isinstance(raw["hidden_size"], int) and not isinstance(raw["hidden_size"], bool):
            kwargs.setdefault("intermediate_size", 4 * raw["hidden_size"])
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> "BertConfig":
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None
        except RecursionError:
            raise ConfigError(f"{path}: JSON nested too deeply") from None
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
