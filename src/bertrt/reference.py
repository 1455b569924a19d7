"""Plain-PyTorch BERT on canonical weights and packed tokens: the oracle, the CPU path, and what
fine-tuning trains. Its ``state_dict()`` keys are exactly the canonical names of ``weights.schema``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bertrt.config import BertConfig
from bertrt.ops.attention import varlen_attention, varlen_attention_ref
from bertrt.packed import PackedBatch, mean_per_sequence
from bertrt.weights.schema import Checkpoint


class _Embeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        h = config.hidden_size
        self.word = nn.Parameter(torch.empty(config.vocab_size, h))
        self.position = nn.Parameter(torch.empty(config.max_position_embeddings, h))
        self.token_type = nn.Parameter(torch.empty(config.type_vocab_size, h))
        self.ln = nn.LayerNorm(h, eps=config.layer_norm_eps)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        x = self.word[batch.input_ids] + self.position[batch.position_ids] + self.token_type[batch.token_type_ids]
        return self.ln(x)


class _Attention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        h = config.hidden_size
        self.heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.qkv = nn.Linear(h, 3 * h)
        self.out = nn.Linear(h, h)
        self.ln = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor, batch: PackedBatch, fused: bool) -> torch.Tensor:
        q, k, v = self.qkv(x).view(-1, 3, self.heads, self.head_dim).unbind(1)
        attend = varlen_attention if fused else varlen_attention_ref
        ctx = attend(q, k, v, batch.cu_seqlens, batch.max_seqlen).reshape(x.shape)
        return self.ln(x + self.dropout(self.out(ctx)))


class _FeedForward(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        h, i = config.hidden_size, config.intermediate_size
        self.add_module("in", nn.Linear(h, i))  # canonical name "ffn.in"; `in` is a Python keyword
        self.out = nn.Linear(i, h)
        self.ln = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.gelu(getattr(self, "in")(x))  # exact erf GELU, as BERT was trained
        return self.ln(x + self.dropout(self.out(up)))


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
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if pooler else None
        out = {"qa": 2, "classifier": config.num_labels}
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
        return x

    def qa_logits(self, batch: PackedBatch) -> torch.Tensor:
        """(total_tokens, 2): start and end logits of every token."""
        return self.heads["qa"](self.encode(batch))

    def pooled(self, batch: PackedBatch, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """(B, hidden): tanh(W h_[CLS] + b), BERT's pooled output."""
        if self.pooler is None:
            raise ValueError("this checkpoint has no pooler")
        hidden = self.encode(batch) if hidden is None else hidden
        return torch.tanh(self.pooler(hidden[batch.cu_seqlens[:-1].long()]))

    def classify(self, batch: PackedBatch) -> torch.Tensor:
        """(B, num_labels) logits of the sequence-classification head."""
        return self.heads["classifier"](self.pooled(batch))

    def mean_pooled(self, batch: PackedBatch, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """(B, hidden): mean of each sequence's last hidden states (sentence-transformers style)."""
        hidden = self.encode(batch) if hidden is None else hidden
        return mean_per_sequence(hidden, batch)
