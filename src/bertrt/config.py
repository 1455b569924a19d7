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
    # --- where the BERT-family encoders differ: data, read by the one reference code path -----
    # (defaults are BERT's; ``from_dict`` sets them per Hugging Face ``model_type``, see FAMILIES)
    model_type: str = "bert"
    # FFN activation: "gelu" (exact erf), "gelu_tanh", "relu" or "silu".
    hidden_act: str = "gelu"
    # Position id of a sequence's first token: RoBERTa counts from padding_idx + 1.
    position_offset: int = 0
    # ELECTRA: embeddings this wide, projected to hidden_size before the first layer (None: no projection).
    embedding_size: int | None = None
    # Pre-LN (Megatron-BERT): LayerNorm before each sub-layer and once after the last layer.
    pre_layer_norm: bool = False
    embedding_layer_norm: bool = True
    # Activation between the dense layer on the first token and the sequence classifier:
    # "tanh" (BERT's pooler, RoBERTa's head), "relu" (DistilBERT), "gelu" (ELECTRA).
    pooler_act: str = "tanh"
    # ModernBERT: rotary positions instead of a position table (base of the global layers' rotation;
    # None: a learned position table), sliding-window layers with their own base, every
    # ``global_attention_every``-th layer (from layer 0) global and the others attending
    # ``local_attention_window // 2`` tokens each side; no biases; GeGLU feed-forward (``ffn.in``
    # makes 2 x intermediate_size: act(first half) * second half); no LayerNorm before layer 0's attention.
    rotary_base: float | None = None
    local_rotary_base: float | None = None
    local_attention_window: int | None = None
    global_attention_every: int = 1
    linear_bias: bool = True
    norm_bias: bool = True
    gated_ffn: bool = False
    first_attention_norm: bool = True
    # Sequence classifier input: the first token ("cls") or the mean of all tokens ("mean"); with
    # ``head_norm`` a LayerNorm follows the pooler's activation, and a token classifier applies the
    # same dense + activation + LayerNorm to every token first (ModernBERT's prediction head).
    classifier_pooling: str = "cls"
    head_norm: bool = False
    # The Hugging Face class the checkpoint was saved from (``architectures[0]``), when known:
    # where it came from, not what it computes, so configs compare equal without it.
    architecture: str | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        # Upper bounds far above any BERT (BERT-Large: 24 layers, hidden 1024) that still stop a typo
        # such as 300000000 layers from allocating for hours.
        bounds = {"vocab_size": 10_000_000, "hidden_size": 65_536, "num_hidden_layers": 1_000,
                  "num_attention_heads": 1_024, "intermediate_size": 1_048_576,
                  "max_position_embeddings": 1_048_576, "num_labels": 100_000}
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
        # 0 token types: the family has no token-type embedding (DistilBERT).
        tv = self.type_vocab_size
        if isinstance(tv, bool) or not isinstance(tv, int) or not 0 <= tv <= 1_024:
            raise ConfigError(f"type_vocab_size must be an integer from 0 to 1,024, got {tv!r}")
        self._check_family()
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )

    def _check_family(self) -> None:
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"hidden_act {self.hidden_act!r} is not one of {', '.join(ACTIVATIONS)}")
        if self.pooler_act not in ("tanh", "relu", "gelu"):
            raise ConfigError(f"pooler_act {self.pooler_act!r} is not one of tanh, relu, gelu")
        if self.embedding_size is not None and (not isinstance(self.embedding_size, int) or self.embedding_size <= 0):
            raise ConfigError(f"embedding_size must be a positive integer or None, got {self.embedding_size!r}")
        if self.classifier_pooling not in ("cls", "mean"):
            raise ConfigError(f"classifier_pooling {self.classifier_pooling!r} is not one of cls, mean")
        if self.rotary_base is not None and self.head_dim % 2:
            raise ConfigError(f"rotary positions need an even head_dim, got {self.head_dim}")
        if self.local_attention_window is not None and (self.rotary_base is None or self.local_attention_window < 2):
            raise ConfigError("local_attention_window needs rotary positions and at least 2 tokens")
        if not isinstance(self.global_attention_every, int) or self.global_attention_every < 1:
            raise ConfigError(f"global_attention_every must be a positive integer, got {self.global_attention_every!r}")
        if not isinstance(self.position_offset, int) or not 0 <= self.position_offset < self.max_position_embeddings:
            raise ConfigError(f"position_offset {self.position_offset!r} must be in [0, max_position_embeddings)")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def embedding_width(self) -> int:
        """Width of the embedding tables (ELECTRA's may be narrower than the encoder)."""
        return self.embedding_size or self.hidden_size

    @property
    def max_sequence_length(self) -> int:
        """Longest sequence the position table can hold (RoBERTa's first positions are reserved)."""
        return self.max_position_embeddings - self.position_offset

    def is_global_layer(self, index: int) -> bool:
        """Whether layer ``index`` attends to the whole sequence (else to its sliding window)."""
        return self.local_attention_window is None or index % self.global_attention_every == 0

    @property
    def family(self) -> str:
        """The family name as ``FAMILIES`` spells it."""
        return self.model_type

    # --- Hugging Face config.json -------------------------------------------------

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config") -> "BertConfig":
        """Build from a Hugging Face (or Google ``bert_config.json``) dictionary.

        Raises ConfigError when the dictionary is not a BERT encoder bertrt supports.
        """
        model_type = raw.get("model_type", "bert")
        if model_type not in FAMILIES:
            raise ConfigError(f"{source}: model_type is {model_type!r}; bertrt runs {', '.join(FAMILIES)}")
        if model_type == "distilbert":
            raw = {**{new: raw[old] for old, new in _DISTILBERT_NAMES.items() if old in raw}, **raw}
        if model_type == "modernbert":
            raw = {**raw, "hidden_act": raw.get("hidden_activation", "gelu"),
                   "layer_norm_eps": raw.get("norm_eps", 1e-5)}
        act = raw.get("hidden_act", "gelu")
        if act not in _HF_ACTIVATIONS:
            raise ConfigError(f"{source}: hidden_act {act!r} is not supported "
                              f"({', '.join(sorted(_HF_ACTIVATIONS))})")
        pos = raw.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ConfigError(f"{source}: position_embedding_type {pos!r} is not supported")
        for key in ("model_type", "hidden_act", "position_embedding_type"):
            if not isinstance(raw.get(key, ""), str):
                raise ConfigError(f"{source}: {key} must be a string, got {raw[key]!r}")
        missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads") if k not in raw]
        if missing:
            raise ConfigError(f"{source}: not a BERT config, missing {', '.join(missing)}")
        names = {f.name for f in dataclasses.fields(cls)} - _FAMILY_FIELDS
        kwargs = {k: v for k, v in raw.items() if k in names}
        if "id2label" in raw and not isinstance(raw["id2label"], dict):
            raise ConfigError(f"{source}: id2label must be an object of id -> label")
        if "id2label" in raw and "num_labels" not in raw:
            kwargs["num_labels"] = len(raw["id2label"])
        if isinstance(raw["hidden_size"], int) and not isinstance(raw["hidden_size"], bool):
            kwargs.setdefault("intermediate_size", 4 * raw["hidden_size"])
        kwargs.update(model_type=model_type, hidden_act=_HF_ACTIVATIONS[act])
        architectures = raw.get("architectures") or []
        if architectures:
            kwargs["architecture"] = str(architectures[0])
        if model_type in ("roberta", "xlm-roberta"):
            pad = raw.get("pad_token_id", 1)
            kwargs.update(pad_token_id=pad, position_offset=pad + 1,
                          type_vocab_size=raw.get("type_vocab_size", 1))
        elif model_type == "distilbert":
            kwargs.update(type_vocab_size=0, pooler_act="relu", layer_norm_eps=1e-12)
        elif model_type == "electra":
            emb = raw.get("embedding_size", raw["hidden_size"])
            kwargs.update(embedding_size=None if emb == raw["hidden_size"] else emb, pooler_act="gelu")
        elif model_type == "megatron-bert":
            kwargs.update(pre_layer_norm=True, embedding_layer_norm=False)
        elif model_type == "modernbert":
            kwargs.update(_modernbert_fields(raw, source))
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @staticmethod
    def labels_from_dict(raw: dict[str, Any], *, source: str = "config") -> tuple[str, ...]:
        """Label names in label-id order from ``id2label`` (empty when there is none)."""
        id2label = raw.get("id2label")
        if not isinstance(id2label, dict) or not id2label:
            return ()
        try:
            ordered = sorted(id2label, key=int)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: id2label keys must be label ids, got {sorted(id2label)[:4]}") from None
        if [int(k) for k in ordered] != list(range(len(ordered))):
            raise ConfigError(f"{source}: id2label must number its labels 0..{len(ordered) - 1}")
        return tuple(str(id2label[k]) for k in ordered)

    @classmethod
    def from_json(cls, path: str | Path) -> "BertConfig":
        return cls.from_dict(read_json_object(path), source=str(path))

    def to_hf_dict(self, architecture: str = "BertModel") -> dict[str, Any]:
        if self.model_type != "bert":
            raise ConfigError(f"writing a {self.model_type} config is not supported (bertrt writes BERT folders)")
        bert = BertConfig()
        differs = [k for k in sorted(_FAMILY_FIELDS - {"hidden_act", "architecture"})
                   if getattr(self, k) != getattr(bert, k)]
        if differs:
            raise ConfigError(f"a BERT config.json cannot say {', '.join(differs)}")
        data = {k: v for k, v in dataclasses.asdict(self).items() if k not in _FAMILY_FIELDS}
        data.update(
            model_type="bert",
            architectures=[architecture],
            hidden_act={"gelu_tanh": "gelu_new"}.get(self.hidden_act, self.hidden_act),
            position_embedding_type="absolute",
            hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1,
            initializer_range=0.02,
        )
        if architecture == "BertForSequenceClassification":
            data["id2label"] = {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
            data["label2id"] = {f"LABEL_{i}": i for i in range(self.num_labels)}
        return data


# Hugging Face model_type values the reference runs, each a set of the fields above.
FAMILIES = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "megatron-bert", "modernbert")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")
# Hugging Face activation names -> ours.
_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                   "gelu_fast": "gelu_tanh", "relu": "relu", "silu": "silu", "swish": "silu"}
# DistilBERT's config.json spells the shape its own way.
_DISTILBERT_NAMES = {"dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
                     "hidden_dim": "intermediate_size", "activation": "hidden_act"}
# Fields only ``from_dict``'s family branches set (never copied from a raw dict by name), and that
# a BERT config.json does not carry.
_FAMILY_FIELDS = frozenset({"model_type", "hidden_act", "position_offset", "embedding_size", "pre_layer_norm",
                            "embedding_layer_norm", "pooler_act", "architecture", "rotary_base",
                            "local_rotary_base", "local_attention_window", "global_attention_every",
                            "linear_bias", "norm_bias", "gated_ffn", "first_attention_norm",
                            "classifier_pooling", "head_norm"})


def _modernbert_fields(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """ModernBERT's config.json (older files: global_rope_theta / local_rope_theta /
    global_attn_every_n_layers; newer: rope_parameters and layer_types) as our fields."""
    layers = raw["num_hidden_layers"]
    rope = raw.get("rope_parameters") or {}
    global_base = (rope.get("full_attention") or {}).get("rope_theta", raw.get("global_rope_theta", 160000.0))
    local_base = (rope.get("sliding_attention") or {}).get("rope_theta", raw.get("local_rope_theta", 10000.0))
    for kind in ("full_attention", "sliding_attention"):
        rope_type = (rope.get(kind) or {}).get("rope_type", "default")
        if rope_type != "default":
            raise ConfigError(f"{source}: rope_type {rope_type!r} is not supported (default RoPE only)")
    every = raw.get("global_attn_every_n_layers", 3)
    layer_types = raw.get("layer_types")
    if layer_types:
        full = [i for i, t in enumerate(layer_types) if t == "full_attention"]
        every = full[1] - full[0] if len(full) > 1 else max(layers, 1)
        if full[:1] != [0] or [t == "full_attention" for t in layer_types] != [i % every == 0 for i in range(layers)]:
            raise ConfigError(f"{source}: layer_types must be global every n layers from layer 0, got {layer_types}")
    if raw.get("attention_bias", False) != raw.get("mlp_bias", False):
        raise ConfigError(f"{source}: attention_bias and mlp_bias must agree")
    if raw.get("classifier_bias", False) != raw.get("attention_bias", False):
        raise ConfigError(f"{source}: classifier_bias and attention_bias must agree")
    head_act = _HF_ACTIVATIONS.get(raw.get("classifier_activation", "gelu"))
    if head_act not in ("gelu", "relu"):
        raise ConfigError(f"{source}: classifier_activation {raw.get('classifier_activation')!r} is not supported")
    return dict(
        type_vocab_size=0, pre_layer_norm=True, embedding_layer_norm=True, rotary_base=float(global_base),
        local_rotary_base=float(local_base), local_attention_window=int(raw.get("local_attention", 128)),
        global_attention_every=int(every), linear_bias=bool(raw.get("attention_bias", False)),
        norm_bias=bool(raw.get("norm_bias", False)), gated_ffn=True, first_attention_norm=False,
        classifier_pooling=raw.get("classifier_pooling", "cls"), head_norm=True, pooler_act=head_act,
        pad_token_id=raw.get("pad_token_id", 50283))


ENGINE_FAMILIES = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "megatron-bert", "modernbert")
# Activations of a gated feed-forward on the engine, in the order of ops.geglu's kernel codes; an
# ungated feed-forward on the engine is exact GELU.
ENGINE_GATED_ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")


def check_engine_support(config: BertConfig) -> None:
    """Raise ConfigError unless the GPU engine can run ``config``.

    The reference (``bertrt.reference``) runs every family in ``FAMILIES``; the engine's fused
    kernels assume the layouts below, so a model is checked here where it enters the engine.
    """
    reasons = []
    # RoBERTa and XLM-RoBERTa are BERT's layout with positions counted from padding_idx + 1;
    # DistilBERT is BERT's layout without token types, its sequence head a ReLU; ELECTRA's
    # embeddings may be narrower than the encoder, with a projection after their LayerNorm;
    # Megatron-BERT normalises each sub-layer's input instead of its output (pre-LN); ModernBERT is
    # pre-LN too, with rotary positions, sliding-window layers, GeGLU and no biases, which the
    # engine's pre-LN path reads from the config.
    if config.model_type not in ENGINE_FAMILIES:
        reasons.append(f"model_type {config.model_type!r}")
    if config.gated_ffn and config.hidden_act not in ENGINE_GATED_ACTIVATIONS:
        reasons.append(f"hidden_act {config.hidden_act!r} in a gated feed-forward")
    elif not config.gated_ffn and config.hidden_act != "gelu":
        reasons.append(f"hidden_act {config.hidden_act!r}")
    if not config.embedding_layer_norm and not config.pre_layer_norm:
        reasons.append("embeddings without a LayerNorm")
    modern = config.rotary_base is not None or config.gated_ffn or not config.linear_bias or not config.norm_bias
    if modern and not config.pre_layer_norm:
        reasons.append("rotary positions, GeGLU or bias-free layers in a post-LayerNorm model")
    if not config.gated_ffn and not config.linear_bias:
        reasons.append("bias-free layers with an ungated feed-forward")
    if config.rotary_base is not None and (config.embedding_size is not None or config.type_vocab_size
                                           or not config.embedding_layer_norm):
        reasons.append("rotary positions with an embedding projection, token types or no embedding LayerNorm")
    if reasons:
        raise ConfigError("the GPU engine runs BERT, RoBERTa, XLM-RoBERTa, DistilBERT, ELECTRA, Megatron-BERT and "
                          "ModernBERT models (exact GELU, or a gated GELU/SiLU/ReLU feed-forward); this model has "
                          + ", ".join(reasons) + ". Run it on the reference path with --device cpu")


# Standard shapes for speed runs (weights random: speed does not depend on values).
STANDARD_CONFIGS: dict[str, BertConfig] = {
    "base": BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "minilm": BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    # answerdotai/ModernBERT-base's shape: 22 layers, GeGLU of 2 x 1152, every third layer global, the
    # others a 128-token window, 8,192 positions (build with --max-seq-length up to 8192).
    "modernbert-base": BertConfig(
        vocab_size=50368, hidden_size=768, num_hidden_layers=22, num_attention_heads=12, intermediate_size=1152,
        max_position_embeddings=8192, type_vocab_size=0, layer_norm_eps=1e-5, pad_token_id=50283,
        do_lower_case=False, model_type="modernbert", pre_layer_norm=True, pooler_act="gelu",
        rotary_base=160000.0, local_rotary_base=10000.0, local_attention_window=128, global_attention_every=3,
        linear_bias=False, norm_bias=False, gated_ffn=True, first_attention_norm=False, head_norm=True,
        classifier_pooling="mean"),
}


def read_json_object(path: str | Path) -> dict[str, Any]:
    """The JSON object in a config file; ConfigError naming the file when it is not one."""
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
    return raw

