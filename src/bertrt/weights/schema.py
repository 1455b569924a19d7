"""The one canonical weight schema every loader maps into.

Names (H = hidden, I = intermediate, V = vocab, P = max positions, T = token types, L = labels)::

    embeddings.word            (V, H)      embeddings.position  (P, H)
    embeddings.token_type      (T, H)      embeddings.ln.weight / .bias (H,)
    layers.{i}.attn.qkv.weight (3H, H)     layers.{i}.attn.qkv.bias (3H,)   rows: q, k, v
    layers.{i}.attn.out.weight (H, H)      layers.{i}.attn.out.bias (H,)
    layers.{i}.attn.ln.weight / .bias (H,)
    layers.{i}.ffn.in.weight   (I, H)      layers.{i}.ffn.in.bias  (I,)
    layers.{i}.ffn.out.weight  (H, I)      layers.{i}.ffn.out.bias (H,)
    layers.{i}.ffn.ln.weight / .bias (H,)
    pooler.weight (H, H)  pooler.bias (H,)                       optional
    heads.qa.weight (2, H)  heads.qa.bias (2,)                   optional
    heads.classifier.weight (L, H)  heads.classifier.bias (L,)   optional
    heads.token_classifier.weight (L, H)  heads.token_classifier.bias (L,)   optional

Where the family's config says so (E = embedding_size, the embedding tables' width)::

    embeddings.project.weight (H, E)  .bias (H,)      ELECTRA: embeddings narrower than the encoder
    final_ln.weight / .bias (H,)                       pre-LN (Megatron-BERT): after the last layer
    no embeddings.token_type                           type_vocab_size == 0 (DistilBERT)
    no embeddings.ln                                   embedding_layer_norm False (Megatron-BERT)

The pooler is the dense layer on the first token before the sequence classifier, whatever the family
calls it (BERT's pooler, RoBERTa's/ELECTRA's classifier.dense, DistilBERT's pre_classifier); its
activation is ``config.pooler_act``.

Linear weights are stored (out_features, in_features), as torch.nn.Linear keeps them.
Q/K/V are fused once, on the way in, so no later stage has to.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from bertrt.config import BertConfig
from bertrt.quant.recipe import QMAX


from bertrt.errors import CheckpointError  # noqa: F401  (re-exported: bertrt.weights.CheckpointError)


@dataclasses.dataclass
class QuantScales:
    """The quantization a checkpoint was trained with (quantization-aware training), as data.

    Args:
        format: ``"int8"`` (zero point 0) or ``"fp8"`` (e4m3fn).
        amax: canonical name -> fp32 clip value (scale * ``QMAX[format]``). Names:
            ``layers.{i}.{attn.qkv,attn.out,ffn.in,ffn.out}.input`` () for the linear layers' inputs;
            ``layers.{i}.{attn.qkv,attn.out,ffn.in,ffn.out}.weight`` () per tensor or (out_features,)
            per output channel (q|k|v rows for ``attn.qkv``);
            ``layers.{i}.attn.{q,k,v,probs}.input`` and ``layers.{i}.{attn,ffn}.residual.input`` ()
            when the source also quantized attention's matmuls or the residual adds. A name that is
            absent was not quantized in the source.
    """

    format: str
    amax: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        if self.format not in QMAX:
            raise CheckpointError(f"quantization format {self.format!r}: expected one of {sorted(QMAX)}")

    @property
    def qmax(self) -> float:
        return QMAX[self.format]

    def scale(self, name: str) -> torch.Tensor:
        """The quantization step of ``name``: amax / qmax."""
        return self.amax[name] / self.qmax


HEADS = ("qa", "classifier", "token_classifier")


def encoder_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of the tensors every encoder must have."""
    h, i, e = config.hidden_size, config.intermediate_size, config.embedding_width
    shapes: dict[str, tuple[int, ...]] = {"embeddings.word": (config.vocab_size, e)}

    def linear(name: str, out: int, inp: int, bias: bool = config.linear_bias) -> None:
        shapes[f"{name}.weight"] = (out, inp)
        if bias:
            shapes[f"{name}.bias"] = (out,)

    def norm(name: str, width: int = h) -> None:
        shapes[f"{name}.weight"] = (width,)
        if config.norm_bias:
            shapes[f"{name}.bias"] = (width,)

    if config.rotary_base is None:
        shapes["embeddings.position"] = (config.max_position_embeddings, e)
    if config.type_vocab_size:
        shapes["embeddings.token_type"] = (config.type_vocab_size, e)
    if config.embedding_layer_norm:
        norm("embeddings.ln", e)
    if config.embedding_size is not None:
        linear("embeddings.project", h, e)
    for n in range(config.num_hidden_layers):
        p = f"layers.{n}."
        linear(p + "attn.qkv", 3 * h, h)
        linear(p + "attn.out", h, h)
        if n or config.first_attention_norm:
            norm(p + "attn.ln")
        linear(p + "ffn.in", 2 * i if config.gated_ffn else i, h)
        linear(p + "ffn.out", h, i)
        norm(p + "ffn.ln")
    if config.pre_layer_norm:
        norm("final_ln")
    return shapes


def optional_groups(config: BertConfig) -> dict[str, dict[str, tuple[int, ...]]]:
    """The pooler and each head: group -> its tensors' shapes; a group is all there or all absent."""
    h, n = config.hidden_size, config.num_labels
    pooler = {"pooler.weight": (h, h)}
    if config.linear_bias:
        pooler["pooler.bias"] = (h,)
    if config.head_norm:
        pooler["pooler_ln.weight"] = (h,)
        if config.norm_bias:
            pooler["pooler_ln.bias"] = (h,)
    groups = {"pooler": pooler}
    for head, out in (("qa", 2), ("classifier", n), ("token_classifier", n)):
        groups[f"heads.{head}"] = {f"heads.{head}.weight": (out, h), f"heads.{head}.bias": (out,)}
    return groups


def optional_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of the pooler and the heads; each group is all there or all absent."""
    return {name: shape for group in optional_groups(config).values() for name, shape in group.items()}


@dataclasses.dataclass
class Checkpoint:
    """A BERT encoder in canonical names, with what is needed to tokenise for it.

    Args:
        config: the encoder's shape.
        tensors: canonical name -> tensor (any float dtype, CPU).
        vocab_file: path of the WordPiece vocab.txt, if the checkpoint has one.
        source: where it was loaded from (for messages).
        quant: the scales of a quantization-aware checkpoint (its ``tensors`` are then the
            dequantized weights); None for a float checkpoint.
        tokenizer_dir: the folder holding the checkpoint's tokenizer files (tokenizer.json,
            vocab.txt, vocab.json + merges.txt, tokenizer_config.json), if known.
        labels: the heads' output names in label-id order (``id2label``), if the config names them.
    """

    config: BertConfig
    tensors: dict[str, torch.Tensor]
    vocab_file: Path | None = None
    source: str = "<memory>"
    quant: QuantScales | None = None
    tokenizer_dir: Path | None = None
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        validate(self.config, self.tensors, source=self.source)

    @property
    def heads(self) -> tuple[str, ...]:
        return tuple(h for h in HEADS if f"heads.{h}.weight" in self.tensors)

    @property
    def has_pooler(self) -> bool:
        return "pooler.weight" in self.tensors

    def to(self, dtype: torch.dtype) -> "Checkpoint":
        return dataclasses.replace(self, tensors={k: v.to(dtype) for k, v in self.tensors.items()})


def validate(config: BertConfig, tensors: dict[str, torch.Tensor], *, source: str) -> None:
    """Raise CheckpointError naming every missing, unexpected or mis-shaped tensor."""
    problems: list[str] = []
    required = encoder_shapes(config)
    optional = optional_shapes(config)
    missing = [k for k in required if k not in tensors]
    if missing:
        shown = ", ".join(missing[:6]) + (f" (+{len(missing) - 6} more)" if len(missing) > 6 else "")
        problems.append(f"missing tensors: {shown}")
    unknown = [k for k in tensors if k not in required and k not in optional]
    if unknown:
        problems.append(f"unexpected tensors: {', '.join(sorted(unknown)[:6])}")
    for name, tensor in tensors.items():
        want = required.get(name) or optional.get(name)
        if want is not None and tuple(tensor.shape) != want:
            problems.append(f"{name} has shape {tuple(tensor.shape)}, expected {want}")
        if not tensor.is_floating_point():
            problems.append(f"{name} has dtype {tensor.dtype}, expected a float tensor")
    for group, names in optional_groups(config).items():
        present = [name in tensors for name in names]
        if any(present) and not all(present):
            absent = [name for name, there in zip(names, present) if not there]
            problems.append(f"{group} is incomplete: no {', '.join(absent)}")
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))


def random_checkpoint(config: BertConfig, *, heads: tuple[str, ...] = ("qa",), seed: int = 0,
                      std: float = 0.02) -> Checkpoint:
    """A checkpoint with BERT's initialisation (normal(0, std), LayerNorm 1/0): for speed runs and tests."""
    gen = torch.Generator().manual_seed(seed)
    shapes = dict(encoder_shapes(config))
    groups = optional_groups(config)
    for group in ("pooler",) + tuple(f"heads.{h}" for h in heads):
        shapes.update(groups[group])
    tensors = {}
    for name, shape in shapes.items():
        if name.endswith("ln.weight"):
            tensors[name] = torch.ones(shape)
        elif name.endswith(".bias"):
            tensors[name] = torch.randn(shape, generator=gen) * std
        else:
            tensors[name] = torch.randn(shape, generator=gen) * std
    return Checkpoint(config, tensors, source=f"random(seed={seed})")


# --- Hugging Face names <-> canonical names -----------------------------------------

_HF_LAYER = {
    "attention.output.dense": "attn.out",
    "attention.output.LayerNorm": "attn.ln",
    "intermediate.dense": "ffn.in",
    "output.dense": "ffn.out",
    "output.LayerNorm": "ffn.ln",
    "attention.ln": "attn.ln",  # Megatron-BERT: the LayerNorm before attention
    "ln": "ffn.ln",  # Megatron-BERT: the LayerNorm before the FFN
}
# ModernBERT's names (``model.`` stripped): Q/K/V come fused already.
_MODERNBERT_TOP = {
    "embeddings.tok_embeddings.weight": "embeddings.word",
    "embeddings.norm.weight": "embeddings.ln.weight",
    "embeddings.norm.bias": "embeddings.ln.bias",
    "final_norm.weight": "final_ln.weight",
    "final_norm.bias": "final_ln.bias",
    "head.dense.weight": "pooler.weight",
    "head.dense.bias": "pooler.bias",
    "head.norm.weight": "pooler_ln.weight",
    "head.norm.bias": "pooler_ln.bias",
}
_MODERNBERT_LAYER = {"attn_norm": "attn.ln", "attn.Wqkv": "attn.qkv", "attn.Wo": "attn.out",
                     "mlp_norm": "ffn.ln", "mlp.Wi": "ffn.in", "mlp.Wo": "ffn.out"}
# DistilBERT's layer names -> BERT's (then mapped as BERT's are).
_DISTILBERT_LAYER = {
    "attention.q_lin": "attention.self.query",
    "attention.k_lin": "attention.self.key",
    "attention.v_lin": "attention.self.value",
    "attention.out_lin": "attention.output.dense",
    "sa_layer_norm": "attention.output.LayerNorm",
    "ffn.lin1": "intermediate.dense",
    "ffn.lin2": "output.dense",
    "output_layer_norm": "output.LayerNorm",
}
_HF_TOP = {
    "embeddings.word_embeddings.weight": "embeddings.word",
    "embeddings.position_embeddings.weight": "embeddings.position",
    "embeddings.token_type_embeddings.weight": "embeddings.token_type",
    "embeddings.LayerNorm.weight": "embeddings.ln.weight",
    "embeddings.LayerNorm.bias": "embeddings.ln.bias",
    "pooler.dense.weight": "pooler.weight",
    "pooler.dense.bias": "pooler.bias",
    "embeddings_project.weight": "embeddings.project.weight",
    "embeddings_project.bias": "embeddings.project.bias",
    "encoder.ln.weight": "final_ln.weight",
    "encoder.ln.bias": "final_ln.bias",
}
_HF_HEADS = {
    "qa_outputs.weight": "heads.qa.weight",
    "qa_outputs.bias": "heads.qa.bias",
    "classifier.weight": "heads.classifier.weight",
    "classifier.bias": "heads.classifier.bias",
    # RoBERTa / ELECTRA sequence heads: dense + activation on the first token, then out_proj.
    "classifier.dense.weight": "pooler.weight",
    "classifier.dense.bias": "pooler.bias",
    "classifier.out_proj.weight": "heads.classifier.weight",
    "classifier.out_proj.bias": "heads.classifier.bias",
    # DistilBERT's sequence head: pre_classifier + ReLU, then classifier.
    "pre_classifier.weight": "pooler.weight",
    "pre_classifier.bias": "pooler.bias",
}
# Tensors in Hugging Face files that inference does not use (pre-training heads, buffers).
_HF_IGNORED_PREFIXES = ("cls.", "embeddings.position_ids", "embeddings.token_type_ids", "lm_head.", "decoder.",
                        "discriminator_predictions.", "generator_predictions.", "generator_lm_head.",
                        "vocab_transform.", "vocab_layer_norm.", "vocab_projector.")
_MODEL_PREFIXES = ("bert.", "model.", "roberta.", "distilbert.", "electra.")


def _strip_prefix(name: str) -> str:
    for prefix in _MODEL_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _bert_layer_name(name: str) -> str:
    """DistilBERT's ``transformer.layer.{i}.*`` in BERT's ``encoder.layer.{i}.*`` spelling."""
    if not name.startswith("transformer.layer."):
        return name
    parts = name.split(".")
    module, kind = ".".join(parts[3:-1]), parts[-1]
    return f"encoder.layer.{parts[2]}.{_DISTILBERT_LAYER.get(module, module)}.{kind}"


def is_token_classifier(config: BertConfig, names) -> bool:
    """Whether a Hugging Face ``classifier`` is per token (``*ForTokenClassification``).

    Decided by the config's architecture; without one, a plain ``classifier`` with no dense layer
    before it is per token, since every family's sequence classifier has one (the pooler).
    """
    if config.architecture:
        return config.architecture.endswith("ForTokenClassification")
    stripped = {_strip_prefix(n) for n in names}
    return "classifier.weight" in stripped and not stripped & {"pooler.dense.weight", "pre_classifier.weight",
                                                             "classifier.dense.weight"}


def from_hf_names(state: dict[str, torch.Tensor], config: BertConfig, *, source: str) -> dict[str, torch.Tensor]:
    """Map a Hugging Face BERT state dict (with or without ``bert.``) to canonical names, fusing Q/K/V."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str, str], torch.Tensor] = {}
    unknown: list[str] = []
    heads = dict(_HF_HEADS)
    if (config.architecture or "").endswith("ForQuestionAnswering") and not any(
            _strip_prefix(n) == "qa_outputs.weight" for n in state):  # ModernBERT names its QA layer classifier
        heads.update({"classifier.weight": "heads.qa.weight", "classifier.bias": "heads.qa.bias"})
    elif is_token_classifier(config, state):
        heads.update({"classifier.weight": "heads.token_classifier.weight",
                      "classifier.bias": "heads.token_classifier.bias"})

    def put(canonical: str, raw_name: str, tensor: torch.Tensor) -> None:
        if canonical in out:
            raise CheckpointError(f"{source}: two tensors map to {canonical} (the second is {raw_name})")
        out[canonical] = tensor

    modernbert = config.model_type == "modernbert"
    # A masked-LM ModernBERT's prediction head feeds its decoder, not a classifier.
    masked_lm = modernbert and (config.architecture or "").endswith("ForMaskedLM")
    for raw_name, tensor in state.items():
        name = _bert_layer_name(_strip_prefix(raw_name))
        if modernbert:
            if masked_lm and name.startswith(("head.", "decoder.")):
                continue
            if name in _MODERNBERT_TOP:
                put(_MODERNBERT_TOP[name], raw_name, tensor)
                continue
            parts = name.split(".")
            if parts[0] == "layers" and len(parts) > 3 and ".".join(parts[2:-1]) in _MODERNBERT_LAYER:
                put(f"layers.{parts[1]}.{_MODERNBERT_LAYER['.'.join(parts[2:-1])]}.{parts[-1]}", raw_name, tensor)
                continue
        # Old checkpoints (TF-converted) name LayerNorm parameters gamma/beta.
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if name in _HF_TOP:
            put(_HF_TOP[name], raw_name, tensor)
        elif raw_name in heads or name in heads:
            put(heads.get(raw_name) or heads[name], raw_name, tensor)
        elif name.startswith("encoder.layer."):
            parts = name.split(".")
            layer, rest = int(parts[2]), ".".join(parts[3:])
            module, _, kind = rest.rpartition(".")
            if module.startswith("attention.self.") and module.split(".")[-1] in ("query", "key", "value"):
                qkv[(layer, module.split(".")[-1], kind)] = tensor
            elif module in _HF_LAYER:
                out[f"layers.{layer}.{_HF_LAYER[module]}.{kind}"] = tensor
            else:
                unknown.append(raw_name)
        elif not name.startswith(_HF_IGNORED_PREFIXES):
            unknown.append(raw_name)
    if unknown:
        raise CheckpointError(f"{source}: tensors that are not part of a BERT model: {', '.join(unknown[:6])}")
    for layer in range(config.num_hidden_layers):
        for kind in ("weight", "bias"):
            parts = [qkv.pop((layer, p, kind), None) for p in ("query", "key", "value")]
            if all(p is not None for p in parts):
                out[f"layers.{layer}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
            elif any(p is not None for p in parts):
                absent = [p for p, t in zip(("query", "key", "value"), parts) if t is None]
                raise CheckpointError(f"{source}: layer {layer} attention has no {'/'.join(absent)} {kind}")
    if qkv:
        extra = sorted({k[0] for k in qkv})
        raise CheckpointError(f"{source}: attention tensors for layers {extra} beyond num_hidden_layers "
                              f"{config.num_hidden_layers}")
    return out


def to_hf_modernbert_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Canonical -> transformers ModernBERT names (``model.`` prefix, Q/K/V fused as they are): the
    inverse of ``from_hf_names`` for ModernBERT, for building its Hugging Face peer."""
    top = {v: k for k, v in _MODERNBERT_TOP.items()}
    layer = {v: k for k, v in _MODERNBERT_LAYER.items()}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name in top:
            out[top[name] if top[name].startswith("head.") else "model." + top[name]] = tensor
        elif name.startswith("layers."):
            _, index, rest = name.split(".", 2)
            module, kind = rest.rsplit(".", 1)
            out[f"model.layers.{index}.{layer[module]}.{kind}"] = tensor
        elif name.startswith("heads."):  # every ModernBERT task names its last layer "classifier"
            out["classifier." + name.rsplit(".", 1)[1]] = tensor
        else:
            raise CheckpointError(f"{name} has no ModernBERT name")
    return out


def to_hf_names(tensors: dict[str, torch.Tensor], config: BertConfig) -> dict[str, torch.Tensor]:
    """Canonical -> Hugging Face names (``bert.`` prefix), splitting Q/K/V."""
    if config.model_type != "bert":
        raise CheckpointError(f"writing {config.model_type} weights is not supported (bertrt writes BERT folders)")
    top = {v: k for k, v in _HF_TOP.items() if k.startswith(("embeddings.", "pooler."))}
    heads = {f"heads.{h}.{kind}": f"{hf}.{kind}" for h, hf in
             (("qa", "qa_outputs"), ("classifier", "classifier"), ("token_classifier", "classifier"))
             for kind in ("weight", "bias")}
    layer_map: dict[str, str] = {}
    for hf_name, canonical in _HF_LAYER.items():  # BERT's names come first
        layer_map.setdefault(canonical, hf_name)
    out: dict[str, torch.Tensor] = {}
    h = config.hidden_size
    for name, tensor in tensors.items():
        if name in top:
            out["bert." + top[name]] = tensor
        elif name in heads:
            out[heads[name]] = tensor
        else:
            _, layer, module, sub, kind = name.split(".")
            prefix = f"bert.encoder.layer.{layer}."
            if f"{module}.{sub}" == "attn.qkv":
                for part, chunk in zip(("query", "key", "value"), tensor.split(h, dim=0)):
                    out[f"{prefix}attention.self.{part}.{kind}"] = chunk.contiguous()
            else:
                out[f"{prefix}{layer_map[module + '.' + sub]}.{kind}"] = tensor
    return out
