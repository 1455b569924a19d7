"""Plain-PyTorch BERT on canonical weights and packed tokens: the oracle, the CPU path, and what
fine-tuning trains. Its ``state_dict()`` keys are exactly the canonical names of ``weights.schema``.

One code path for every family in ``config.FAMILIES``: where RoBERTa, DistilBERT, ELECTRA,
Megatron-BERT or ModernBERT differ from BERT (position offset, token types, embedding projection,
pre-LN, activations, rotary positions, sliding-window layers, GeGLU, no biases), the config says so
and the modules below read it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bertrt.config import BertConfig
from bertrt.ops.attention import varlen_attention, varlen_attention_ref, windowed_attention_ref
from bertrt.packed import PackedBatch, mean_per_sequence
from bertrt.weights.schema import Checkpoint


# Activation name (config.hidden_act, config.pooler_act) -> function; the engine's sequence heads use it too.
ACTIVATIONS = {
    "gelu": F.gelu,  # exact erf GELU, as BERT was trained
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "tanh": torch.tanh,
}


def _linear(config: BertConfig, inp: int, out: int) -> nn.Linear:
    return nn.Linear(inp, out, bias=config.linear_bias)


def _norm(config: BertConfig, width: int) -> nn.LayerNorm:
    return nn.LayerNorm(width, eps=config.layer_norm_eps, bias=config.norm_bias)


def rotate(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary position embedding (RoPE, halves rotated): x (total_tokens, heads, head_dim), positions
    (total_tokens,) int, ``base`` the rotation base; angles in fp32."""
    dim = x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim))
    freqs = positions.to(torch.float32)[:, None] * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)[:, None, :]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


class _Embeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        e = config.embedding_width
        self.offset = config.position_offset
        self.word = nn.Parameter(torch.empty(config.vocab_size, e))
        rotary = config.rotary_base is not None  # positions enter through attention instead
        self.position = None if rotary else nn.Parameter(torch.empty(config.max_position_embeddings, e))
        self.token_type = nn.Parameter(torch.empty(config.type_vocab_size, e)) if config.type_vocab_size else None
        self.ln = _norm(config, e) if config.embedding_layer_norm else None
        self.project = _linear(config, e, config.hidden_size) if config.embedding_size is not None else None

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        x = self.word[batch.input_ids]
        if self.position is not None:
            x = x + self.position[batch.position_ids + self.offset]
        if self.token_type is not None:
            x = x + self.token_type[batch.token_type_ids]
        if self.ln is not None:
            x = self.ln(x)
        return x if self.project is None else self.project(x)


class _Attention(nn.Module):
    def __init__(self, config: BertConfig, index: int):
        super().__init__()
        h = config.hidden_size
        self.pre_ln = config.pre_layer_norm
        self.heads, self.head_dim = config.num_attention_heads, config.head_dim
        is_global = config.is_global_layer(index)
        self.rotary_base = config.rotary_base if is_global else config.local_rotary_base
        self.reach = None if is_global else config.local_attention_window // 2
        self.qkv = _linear(config, h, 3 * h)
        self.out = _linear(config, h, h)
        # ModernBERT's first layer reads the (already normalised) embeddings as they are.
        self.ln = _norm(config, h) if index or config.first_attention_norm else None
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor, batch: PackedBatch, fused: bool) -> torch.Tensor:
        inputs = self.ln(x) if self.pre_ln and self.ln is not None else x
        q, k, v = self.qkv(inputs).view(-1, 3, self.heads, self.head_dim).unbind(1)
        if self.rotary_base is not None:
            q, k = rotate(q, batch.position_ids, self.rotary_base), rotate(k, batch.position_ids, self.rotary_base)
        if self.reach is not None:
            ctx = windowed_attention_ref(q, k, v, batch.cu_seqlens, self.reach)
        else:
            attend = varlen_attention if fused else varlen_attention_ref
            ctx = attend(q, k, v, batch.cu_seqlens, batch.max_seqlen)
        x = x + self.dropout(self.out(ctx.reshape(x.shape)))
        return x if self.pre_ln else self.ln(x)


class _FeedForward(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        h, i = config.hidden_size, config.intermediate_size
        self.pre_ln = config.pre_layer_norm
        self.gated = config.gated_ffn
        self.act = ACTIVATIONS[config.hidden_act]
        # canonical name "ffn.in"; `in` is a Python keyword. Gated (GeGLU): 2i outputs, value then gate.
        self.add_module("in", _linear(config, h, 2 * i if self.gated else i))
        self.out = _linear(config, i, h)
        self.ln = _norm(config, h)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = getattr(self, "in")(self.ln(x) if self.pre_ln else x)
        if self.gated:
            value, gate = up.chunk(2, dim=-1)
            up = self.act(value) * gate
        else:
            up = self.act(up)
        x = x + self.dropout(self.out(up))
        return x if self.pre_ln else self.ln(x)


class _Layer(nn.Module):
    def __init__(self, config: BertConfig, index: int):
        super().__init__()
        self.attn = _Attention(config, index)
        self.ffn = _FeedForward(config)

    def forward(self, x: torch.Tensor, batch: PackedBatch, fused: bool) -> torch.Tensor:
        return self.ffn(self.attn(x, batch, fused))


class ReferenceBert(nn.Module):
    """BERT encoder + optional pooler and heads, running on packed tokens.

    Example:
        >>> model = ReferenceBert.from_checkpoint(load_checkpoint())
        >>> start, end = model.qa_logits(batch).unbind(-1)    # (total_tokens,) each
    """

    def __init__(self, config: BertConfig, *, heads: tuple[str, ...] = (), pooler: bool = False):
        super().__init__()
        self.config = config
        self.embeddings = _Embeddings(config)
        self.layers = nn.ModuleList(_Layer(config, i) for i in range(config.num_hidden_layers))
        self.final_ln = _norm(config, config.hidden_size) if config.pre_layer_norm else None
        self.pooler = _linear(config, config.hidden_size, config.hidden_size) if pooler else None
        self.pooler_ln = _norm(config, config.hidden_size) if pooler and config.head_norm else None
        self.pooler_act = ACTIVATIONS[config.pooler_act]
        out = {"qa": 2, "classifier": config.num_labels, "token_classifier": config.num_labels}
        self.heads = nn.ModuleDict({h: nn.Linear(config.hidden_size, out[h]) for h in heads})
        # The fused attention kernel needs CUDA; the reference path is exact everywhere else.
        self.fused_attention = True

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, *, dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu") -> "ReferenceBert":
        model = cls(checkpoint.config, heads=checkpoint.heads, pooler=checkpoint.has_pooler)
        model.load_state_dict({k: v.to(torch.float32) for k, v in checkpoint.tensors.items()}, strict=True)
        return model.to(device=device, dtype=dtype).eval()

    def to_checkpoint(self, *, vocab_file=None, source: str = "<trained>") -> Checkpoint:
        tensors = {k: v.detach().to("cpu", torch.float32).clone() for k, v in self.state_dict().items()}
        return Checkpoint(self.config, tensors, vocab_file=vocab_file, source=source)

    def init_weights(self, std: float = 0.02, seed: int | None = None) -> None:
        """BERT's initialisation for the parts a pretrained checkpoint does not supply (new heads)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        for head in self.heads.values():
            with torch.no_grad():
                head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * std)
                head.bias.zero_()

    def encode(self, batch: PackedBatch) -> torch.Tensor:
        """Last hidden states, (total_tokens, hidden)."""
        x = self.embeddings(batch)
        fused = self.fused_attention and x.is_cuda
        for layer in self.layers:
            x = layer(x, batch, fused)
        return x if self.final_ln is None else self.final_ln(x)

    def qa_logits(self, batch: PackedBatch) -> torch.Tensor:
        """(total_tokens, 2): start and end logits of every token."""
        return self.heads["qa"](self._token_transform(self.encode(batch)))

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pooler_act(self.pooler(x))
        return x if self.pooler_ln is None else self.pooler_ln(x)

    def _token_transform(self, hidden: torch.Tensor) -> torch.Tensor:
        """ModernBERT's token heads read every token through the prediction head (dense, act, norm)."""
        return self._transform(hidden) if self.pooler_ln is not None else hidden

    def pooled(self, batch: PackedBatch, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """(B, hidden): act(W h_[CLS] + b): BERT's pooled output (tanh), or the dense layer of the
        family's sequence head (``config.pooler_act``)."""
        if self.pooler is None:
            raise ValueError("this checkpoint has no pooler")
        hidden = self.encode(batch) if hidden is None else hidden
        if self.config.classifier_pooling == "mean":
            return self._transform(self.mean_pooled(batch, hidden))
        return self._transform(hidden[batch.cu_seqlens[:-1].long()])

    def token_logits(self, batch: PackedBatch) -> torch.Tensor:
        """(total_tokens, num_labels) logits of the token-classification head."""
        return self.heads["token_classifier"](self._token_transform(self.encode(batch)))

    def cls_pooled(self, batch: PackedBatch, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """(B, hidden): each sequence's first-token last hidden state."""
        hidden = self.encode(batch) if hidden is None else hidden
        return hidden[batch.cu_seqlens[:-1].long()]

    def classify(self, batch: PackedBatch) -> torch.Tensor:
        """(B, num_labels) logits of the sequence-classification head."""
        return self.heads["classifier"](self.pooled(batch))

    def mean_pooled(self, batch: PackedBatch, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """(B, hidden): mean of each sequence's last hidden states (sentence-transformers style)."""
        hidden = self.encode(batch) if hidden is None else hidden
        return mean_per_sequence(hidden, batch)
