"""Plain-PyTorch BERT on canonical weights and packed tokens: the oracle, the CPU path, and what
fine-tuning trains. Its ``state_dict()`` keys are exactly the canonical names of ``weights.schema``.

One code path for every family in ``config.FAMILIES``: where RoBERTa, DistilBERT, ELECTRA or
Megatron-BERT differ from BERT (position offset, token types, embedding projection, pre-LN,
activations), the config says so and the modules below read it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bertrt.config import BertConfig
from bertrt.ops.attention import varlen_attention, varlen_attention_ref
from bertrt.packed import PackedBatch
from bertrt.weights.schema import Checkpoint


_ACTIVATIONS = {
    "gelu": F.gelu,  # exact erf GELU, as BERT was trained
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "tanh": torch.tanh,
}


class _Embeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        e = config.embedding_width
        self.offset = config.position_offset
        self.word = nn.Parameter(torch.empty(config.vocab_size, e))
        self.position = nn.Parameter(torch.empty(config.max_position_embeddings, e))
        self.token_type = nn.Parameter(torch.empty(config.type_vocab_size, e)) if config.type_vocab_size else None
        self.ln = nn.LayerNorm(e, eps=config.layer_norm_eps) if config.embedding_layer_norm else None
        self.project = nn.Linear(e, config.hidden_size) if config.embedding_size is not None else None

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        x = self.word[batch.input_ids] + self.position[batch.position_ids + self.offset]
        if self.token_type is not None:
            x = x + self.token_type[batch.token_type_ids]
        if self.ln is not None:
            x = self.ln(x)
        return x if self.project is None else self.project(x)


class _Attention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        h = config.hidden_size
        self.pre_ln = config.pre_layer_norm
        self.heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.qkv = nn.Linear(h, 3 * h)
        self.out = nn.Linear(h, h)
        self.ln = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor, batch: PackedBatch, fused: bool) -> torch.Tensor:
        inputs = self.ln(x) if self.pre_ln else x
        q, k, v = self.qkv(inputs).view(-1, 3, self.heads, self.head_dim).unbind(1)
        attend = varlen_attention if fused else varlen_attention_ref
        ctx = attend(q, k, v, batch.cu_seqlens, batch.max_seqlen).reshape(x.shape)
        x = x + self.dropout(self.out(ctx))
        return x if self.pre_ln else self.ln(x)


class _FeedForward(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        h, i = config.hidden_size, config.intermediate_size
        self.pre_ln = config.pre_layer_norm
        self.act = _ACTIVATIONS[config.hidden_act]
        self.add_module("in", nn.Linear(h, i))  # canonical name "ffn.in"; `in` is a Python keyword
        self.out = nn.Linear(i, h)
        self.ln = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = self.act(getattr(self, "in")(self.ln(x) if self.pre_ln else x))
        x = x + self.dropout(self.out(up))
        return x if self.pre_ln else self.ln(x)


class _Layer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attn = _Attention(config)
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
        self.layers = nn.ModuleList(_Layer(config) for _ in range(config.num_hidden_layers))
        self.final_ln = (nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
                         if config.pre_layer_norm else None)
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if pooler else None
        self.pooler_act = _ACTIVATIONS[config.pooler_act]
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
        return self.heads["qa"](self.encode(batch))

    def pooled(self, batch: PackedBatch, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """(B, hidden): act(W h_[CLS] + b): BERT's pooled output (tanh), or the dense layer of the
        family's sequence head (``config.pooler_act``)."""
        if self.pooler is None:
            raise ValueError("this checkpoint has no pooler")
        hidden = self.encode(batch) if hidden is None else hidden
        return self.pooler_act(self.pooler(hidden[batch.cu_seqlens[:-1].long()]))

    def token_logits(self, batch: PackedBatch) -> torch.Tensor:
        """(total_tokens, num_labels) logits of the token-classification head."""
        return self.heads["token_classifier"](self.encode(batch))

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
        seq = torch.repeat_interleave(torch.arange(batch.num_sequences, device=hidden.device),
                                      batch.seqlens.to(hidden.device), output_size=hidden.shape[0])
        sums = hidden.new_zeros(batch.num_sequences, hidden.shape[1]).index_add_(0, seq, hidden)
        return sums / batch.seqlens.to(hidden.device, hidden.dtype)[:, None]
