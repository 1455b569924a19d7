"""The engine runtime: BERT on packed tokens with fused kernels, replayed through CUDA graphs.

Per layer, on (T, H) packed tokens (no computation on padding)::

    qkv  = F.linear(x, W_qkv, b_qkv).view(T, 3, heads, head_dim)     cuBLAS, bias in its epilogue
    ctx  = varlen_attention(q, k, v, cu_seqlens, max_seqlen)          fused flash attention
    x    = bias_residual_layernorm(F.linear(ctx, W_out), b_out, x)    bias + residual + LN in one kernel
           or with linear_splitk(ctx, W_out, S) for F.linear          S fp32 split-K partials, summed by the LN
    up   = bias_gelu(F.linear(x, W_in), b_in)                         bias + erf GELU in one kernel
           or linear_bias_gelu(x, W_in, b_in)                          one Triton GEMM, GELU in its epilogue
           or linear_bias_gelu_tanh(x, W_in, b_in)                     one cuBLASLt GEMM, tanh GELU in its epilogue
    x    = bias_residual_layernorm(F.linear(up, W_ffn_out), b_ffn_out, x)    the same, or split-K
    (either projection back to hidden width may instead add into x in place, cuBLAS with beta = 1,
    and the LayerNorm then reads x alone: sublayers.end_sublayer)

framed by ``embed_layernorm`` (three gathers + LN) and ``qa_head`` (fp32 start/end logits).

A pre-LN family (Megatron-BERT, ModernBERT) runs ``Engine._hidden_pre_ln`` instead: LayerNorm, then
the sub-layer, whose projection back to hidden width adds into the residual stream. ModernBERT's
differences are data read from the config: ``rotary_`` turns q and k in place on the QKV output
(fp32 cos/sin tables per base, built once), local layers call the attention kernel with
``reach=local_attention_window // 2``, ``gated_act`` makes GeGLU of the 2I-wide up-projection, and
absent biases and LayerNorm betas are simply left out (a zero beta where the kernel needs one). Which
up-projection, attention kernel and output projections (cuBLAS, accumulating cuBLAS or split-K,
for both projections back to hidden width) run at a token count is data: ``spec.gemm_choices``, timed at build time.
Each op falls back to its plain-PyTorch ``*_ref`` off the GPU, so an fp32 CPU engine gives the
reference model's answers.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from bertrt.config import Precision, check_engine_support
from bertrt.device import resolve_device
from bertrt.engine.format import (EngineError, EngineSpec, check_compute_capability, gemm_choice, read_spec,
                                  verify_tokenizer, verify_vocab, verify_weights)
from bertrt.engine.sublayers import attention_for, end_sublayer
from bertrt.ops.bias_gelu import bias_gelu
from bertrt.ops.embed_layernorm import embed_layernorm
from bertrt.ops.geglu import gated_act
from bertrt.ops.linear_gelu import linear_bias_gelu
from bertrt.ops.linear_gelu_tanh import linear_bias_gelu_tanh
from bertrt.ops.qa_head import qa_head
from bertrt.ops.quantize import quantize
from bertrt.ops.residual_layernorm import bias_residual_layernorm
from bertrt.ops.rotary import rotary_, rotary_tables
from bertrt.packed import PackedBatch, mean_per_sequence, pack_padded, pack_sequences, pad_packed
from bertrt.quant.numerics import format_of
from bertrt.reference import ACTIVATIONS
from bertrt.weights.schema import HEADS, Checkpoint, CheckpointError, validate


@dataclasses.dataclass(frozen=True)
class _Layer:
    """One layer's weights; a bias or LayerNorm the family does not have is None (ModernBERT: no
    biases, no LayerNorm before layer 0's attention, LayerNorms without beta)."""

    qkv_w: torch.Tensor
    qkv_b: torch.Tensor | None
    out_w: torch.Tensor
    out_b: torch.Tensor | None
    attn_ln_w: torch.Tensor | None
    attn_ln_b: torch.Tensor | None
    in_w: torch.Tensor
    in_b: torch.Tensor | None
    ffn_out_w: torch.Tensor
    ffn_out_b: torch.Tensor | None
    ffn_ln_w: torch.Tensor
    ffn_ln_b: torch.Tensor | None

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], index: int) -> "_Layer":
        p = f"layers.{index}."
        names = ("attn.qkv.weight", "attn.qkv.bias", "attn.out.weight", "attn.out.bias", "attn.ln.weight",
                 "attn.ln.bias", "ffn.in.weight", "ffn.in.bias", "ffn.out.weight", "ffn.out.bias",
                 "ffn.ln.weight", "ffn.ln.bias")
        return cls(*(tensors.get(p + n) for n in names))


@dataclasses.dataclass(frozen=True)
class _Rotary:
    """A layer's rotary positions: the (max_seq_length, head_dim / 2) fp32 cos and sin tables of its
    base, and its attention's reach each side (None: global)."""

    cos: torch.Tensor
    sin: torch.Tensor
    reach: int | None


def _resolve_device(device: str | torch.device | None) -> torch.device:
    """``bertrt.device.resolve_device``, with "cuda" given its index, so that comparisons with
    tensors' devices ("cuda:0") hold."""
    device = resolve_device(device, flag="device")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class Engine:
    """A built BERT engine on one device.

    Get one with :meth:`Engine.load` (a folder from :func:`bertrt.engine.build`) or
    :meth:`Engine.from_checkpoint` (in memory). Not for concurrent use from several threads
    except through ``qa_logits``/``encode`` with graphs, which serialise on a lock.

    Args:
        spec: the engine description.
        tensors: canonical name -> tensor, already in the engine precision and on ``device``.
        device: where it runs.
        graphs: replay CUDA graphs per token bucket (CUDA only); False runs every op eagerly.
        vocab_file: the WordPiece vocabulary, when the engine has one.
        tokenizer_dir: the folder holding the checkpoint's tokenizer files (``tokenizer.load_tokenizer``),
            when the engine has no vocab.txt but those (ModernBERT's tokenizer.json).

    Example:
        >>> import tempfile
        >>> from bertrt import build
        >>> engine = Engine.load(build(None, tempfile.mkdtemp() + "/engine", device="cpu"), device="cpu")
        >>> logits = engine.qa_logits(pack_sequences([[101, 2054, 2003, 102]]))   # [CLS] what is [SEP]
        >>> tuple(logits.shape), logits.dtype                                     # (total_tokens, 2) fp32
        ((4, 2), torch.float32)
    """

    def __init__(self, spec: EngineSpec, tensors: dict[str, torch.Tensor], *, device: torch.device,
                 graphs: bool = True, vocab_file: Path | None = None, tokenizer_dir: Path | None = None):
        self.spec = spec
        self.config = spec.config
        self.vocab_file = vocab_file
        self.tokenizer_dir = tokenizer_dir
        self._device = _resolve_device(device)
        self._tensors = tensors
        self._layers = [_Layer.from_tensors(tensors, i) for i in range(self.config.num_hidden_layers)]
        # A family without token types (DistilBERT) adds nothing for them: a zero table of two rows
        # serves the embedding kernel whatever segment ids a batch carries.
        self.zero_bias = torch.zeros(self.config.hidden_size, dtype=self.dtype, device=self._device)
        self.token_type_table = tensors.get("embeddings.token_type")
        if self.token_type_table is None:
            self.token_type_table = torch.zeros(2, self.config.embedding_width, dtype=self.dtype,
                                                device=self._device)
        self._rotary = self._rotary_layers()
        self.graphs = bool(graphs) and self._device.type == "cuda"
        # Batches above this many tokens run eagerly: for tens of thousands of tokens launch overhead
        # is negligible, and a graph per large bucket would cost memory and capture time.
        self.graph_max_tokens: int | None = None
        self._runners: dict[str, object] = {}
        self._quantized = None
        if spec.quantization is not None:
            from bertrt.engine.quantized import QuantizedForward

            self._quantized = QuantizedForward(self, spec.quantization)

    def _rotary_layers(self) -> list[_Rotary | None]:
        """Each layer's rotary tables and window (ModernBERT), one pair of tables per base; Nones
        for a family with a position table."""
        c = self.config
        if c.rotary_base is None:
            return [None] * c.num_hidden_layers
        tables = {}
        layers = []
        for i in range(c.num_hidden_layers):
            is_global = c.is_global_layer(i)
            base = c.rotary_base if is_global else c.local_rotary_base
            if base not in tables:
                tables[base] = rotary_tables(base, c.head_dim, self.spec.max_seq_length, device=self._device)
            layers.append(_Rotary(*tables[base], None if is_global else c.local_attention_window // 2))
        return layers

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None, *, graphs: bool = True,
             capture: Sequence[int] = ()) -> "Engine":
        """Load a saved engine.

        Args:
            path: the engine folder.
            device: where to run (default: the GPU when there is one, else the CPU).
            graphs: use CUDA graphs (CUDA only).
            capture: token counts whose graphs to capture now rather than on first use.

        Raises:
            EngineError: missing or corrupted files, another format or bertrt version, a build for
                another GPU generation, or a description that does not match the weights.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(path)
        spec = read_spec(folder)
        device = _resolve_device(device)
        if device.type == "cuda":
            check_compute_capability(spec.compute_capability, tuple(torch.cuda.get_device_capability(device)),
                                     source=str(folder))
        weights = verify_weights(folder, spec)
        try:
            tensors = load_file(str(weights), device=str(device))
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise EngineError(f"{weights}: cannot read weights ({exc}); rebuild the engine") from exc
        _check_tensors(spec, tensors, source=str(weights))
        vocab = verify_vocab(folder, spec)
        engine = cls(spec, tensors, device=device, graphs=graphs, vocab_file=vocab,
                     tokenizer_dir=verify_tokenizer(folder, spec))
        engine.capture(capture)
        return engine

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, *, precision: str | Precision | None = None,
                        device: str | torch.device | None = None, graphs: bool = True,
                        max_tokens: int | None = None, max_seq_length: int | None = None,
                        max_batch: int = 128, gemm_choices: dict[str, dict[int, str]] | None = None) -> "Engine":
        """An engine built in memory (nothing saved). Precision defaults to fp16 on CUDA, fp32 on CPU;
        ``gemm_choices`` as for ``build`` (default: timed on CUDA, cuBLAS on the CPU)."""
        from bertrt.engine.build import make_spec, prepare_tensors
        from bertrt.engine.tuning import tune_gemm_choices

        check_engine_support(checkpoint.config)
        device = _resolve_device(device)
        if str(precision) in ("fp8", "int8"):
            raise EngineError(f"{precision} engines need calibration: build one with bertrt.build(..., "
                              f"precision={str(precision)!r}, calibration=...) and load it")
        precision = Precision(precision or ("fp16" if device.type == "cuda" else "fp32"))
        tensors = {k: v.to(device) for k, v in prepare_tensors(checkpoint, precision).items()}
        spec = make_spec(checkpoint, precision, max_tokens=max_tokens, max_seq_length=max_seq_length,
                         max_batch=max_batch, device=device, gemm_choices=gemm_choices)
        if gemm_choices is None and device.type == "cuda":
            spec = dataclasses.replace(spec, gemm_choices=tune_gemm_choices(
                tensors, max_tokens=spec.max_tokens, num_heads=spec.config.num_attention_heads,
                max_seq_length=spec.max_seq_length, attention_only=spec.config.pre_layer_norm))
        return cls(spec, tensors, device=device, graphs=graphs, vocab_file=checkpoint.vocab_file,
                   tokenizer_dir=checkpoint.tokenizer_dir)

    # --- properties -----------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def precision(self) -> Precision:
        return self.spec.precision

    @property
    def dtype(self) -> torch.dtype:
        return self.spec.precision.dtype

    @property
    def max_tokens(self) -> int:
        return self.spec.max_tokens

    @property
    def max_seq_length(self) -> int:
        return self.spec.max_seq_length

    @property
    def max_batch(self) -> int:
        return self.spec.max_batch

    @property
    def heads(self) -> tuple[str, ...]:
        return self.spec.heads

    @property
    def labels(self) -> tuple[str, ...]:
        """The heads' output names in label-id order, when the checkpoint named them."""
        return self.spec.labels

    def tensors(self) -> dict[str, torch.Tensor]:
        """Canonical name -> weight (engine precision, on the engine's device); do not modify."""
        return dict(self._tensors)

    def to_checkpoint(self) -> Checkpoint:
        """The weights as an fp32 CPU checkpoint (for reference models and peers); quantised
        weights are dequantised."""
        from bertrt.engine.quantized import is_scale
        from bertrt.quant.numerics import dequantize_ref

        tensors = {}
        for name, t in self._tensors.items():
            if is_scale(name):
                continue
            scale = self._tensors.get(name + "_scale")
            tensors[name] = (dequantize_ref(t, scale) if scale is not None else t.float()).to("cpu")
        return Checkpoint(self.config, tensors, vocab_file=self.vocab_file, source=self.spec.source)

    def __repr__(self) -> str:
        c = self.config
        return (f"Engine({c.num_hidden_layers} layers, hidden {c.hidden_size}, {self.spec.precision_name}, "
                f"{self.device}, graphs={self.graphs}, max_tokens={self.max_tokens})")

    # --- the forward pass -----------------------------------------------------------------

    def _hidden(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, position_ids: torch.Tensor,
                cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        """(T, H) last hidden states; the whole body is capturable in a CUDA graph."""
        if self._quantized is not None:
            return self._quantized.hidden(input_ids, token_type_ids, position_ids, cu_seqlens, max_seqlen)
        c = self.config
        eps, heads, head_dim = c.layer_norm_eps, c.num_attention_heads, c.head_dim
        x = self.embed(input_ids, token_type_ids, position_ids)
        if c.pre_layer_norm:
            return self._hidden_pre_ln(x, position_ids, cu_seqlens, max_seqlen)
        tokens = x.shape[0]
        ffn_in = gemm_choice(self.spec.gemm_choices, "ffn_in_gelu", tokens)
        attend = attention_for(gemm_choice(self.spec.gemm_choices, "attention", tokens))
        # How the two projections back to hidden width run (format.OP_BACKENDS).
        attn_out = gemm_choice(self.spec.gemm_choices, "attn_out", tokens)
        ffn_out = gemm_choice(self.spec.gemm_choices, "ffn_out", tokens)
        for w in self._layers:
            q, k, v = F.linear(x, w.qkv_w, w.qkv_b).view(tokens, 3, heads, head_dim).unbind(1)
            ctx = attend(q, k, v, cu_seqlens, max_seqlen).reshape(tokens, c.hidden_size)
            x = end_sublayer(ctx, w.out_w, w.out_b, x, w.attn_ln_w, w.attn_ln_b, eps, attn_out)
            if ffn_in == "cublas":
                up = F.linear(x, w.in_w)
                up = bias_gelu(up, w.in_b, out=up)
            elif ffn_in == "cublaslt-gelu":
                up = linear_bias_gelu_tanh(x, w.in_w, w.in_b)
            else:
                up = linear_bias_gelu(x, w.in_w, w.in_b)
            x = end_sublayer(up, w.ffn_out_w, w.ffn_out_b, x, w.ffn_ln_w, w.ffn_ln_b, eps, ffn_out)
        return x

    def _hidden_pre_ln(self, x: torch.Tensor, position_ids: torch.Tensor, cu_seqlens: torch.Tensor,
                       max_seqlen: int) -> torch.Tensor:
        """The encoder of a pre-LayerNorm family (Megatron-BERT, ModernBERT): each sub-layer
        normalises its input and adds its output to the residual stream (one cuBLAS GEMM with
        beta = 1), which one LayerNorm ends. The fused bias + residual + LayerNorm kernel returns
        only the normalised values, so each LayerNorm is its own pass. Where the config says so
        (ModernBERT): no biases, no LayerNorm before layer 0's attention, rotary positions turning
        q and k in place on the QKV output, sliding-window attention in the local layers and a
        gated activation (GeGLU) on the up-projection."""
        c, t = self.config, self._tensors
        heads, head_dim, tokens = c.num_attention_heads, c.head_dim, x.shape[0]
        choice = gemm_choice(self.spec.gemm_choices, "attention", tokens)
        attend, attend_local = attention_for(choice), attention_for(choice, windowed=True)
        for w, rope in zip(self._layers, self._rotary):
            a = x if w.attn_ln_w is None else self._norm(x, w.attn_ln_w, w.attn_ln_b)
            qkv = F.linear(a, w.qkv_w, w.qkv_b).view(tokens, 3 * heads, head_dim)
            if rope is not None:
                rotary_(qkv[:, :2 * heads], position_ids, rope.cos, rope.sin)
            q, k, v = qkv.view(tokens, 3, heads, head_dim).unbind(1)
            if rope is None or rope.reach is None:
                ctx = attend(q, k, v, cu_seqlens, max_seqlen)
            else:
                ctx = attend_local(q, k, v, cu_seqlens, max_seqlen, reach=rope.reach)
            x = _add_projection(x, ctx.reshape(tokens, c.hidden_size), w.out_w, w.out_b)
            f = self._norm(x, w.ffn_ln_w, w.ffn_ln_b)
            if c.gated_ffn:
                up = gated_act(F.linear(f, w.in_w, w.in_b), c.hidden_act)
            else:
                up = F.linear(f, w.in_w)
                up = bias_gelu(up, w.in_b, out=up)
            x = _add_projection(x, up, w.ffn_out_w, w.ffn_out_b)
        return self._norm(x, t["final_ln.weight"], t.get("final_ln.bias"))

    def _norm(self, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor | None) -> torch.Tensor:
        """LayerNorm(x) in one kernel (fp32 inside); a LayerNorm without beta adds zeros."""
        zero = self.zero_bias
        return bias_residual_layernorm(x, zero, None, gamma, zero if beta is None else beta, self.config.layer_norm_eps)

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, position_ids: torch.Tensor, *,
              quant_out: torch.Tensor | None = None, quant_inv_scale: torch.Tensor | None = None) -> torch.Tensor:
        """(T, H) the embedding layer's output: gathers + LayerNorm in one kernel, which also writes
        the first GEMM's quantised copy into ``quant_out``; for ELECTRA, its projection to hidden
        width after (and the copy rounded from that, in a pass of its own)."""
        c, t = self.config, self._tensors
        if "embeddings.position" not in t:  # rotary positions (ModernBERT): the word vectors' LayerNorm alone
            return self._norm(t["embeddings.word"][input_ids], t["embeddings.ln.weight"], t.get("embeddings.ln.bias"))
        if c.position_offset:  # RoBERTa's positions start after padding_idx
            position_ids = position_ids + c.position_offset
        if not c.embedding_layer_norm:  # Megatron-BERT: the sum alone (its first layer normalises it)
            return (t["embeddings.word"][input_ids] + t["embeddings.position"][position_ids]
                    + self.token_type_table[token_type_ids])
        project = "embeddings.project.weight" in t
        x = embed_layernorm(input_ids, token_type_ids, position_ids, t["embeddings.word"], t["embeddings.position"],
                            self.token_type_table, t["embeddings.ln.weight"], t["embeddings.ln.bias"],
                            c.layer_norm_eps, quant_out=None if project else quant_out,
                            quant_inv_scale=None if project else quant_inv_scale)
        if project:
            x = F.linear(x, t["embeddings.project.weight"], t["embeddings.project.bias"])
            if quant_out is not None:
                quant_out.copy_(quantize(x, quant_inv_scale, format_of(quant_out.dtype)))
        return x

    def _qa(self, input_ids, token_type_ids, position_ids, cu_seqlens, max_seqlen) -> torch.Tensor:
        hidden = self._hidden(input_ids, token_type_ids, position_ids, cu_seqlens, max_seqlen)
        return qa_head(self._token_transform(hidden), self._tensors["heads.qa.weight"], self._tensors["heads.qa.bias"])

    def _head_transform(self, x: torch.Tensor) -> torch.Tensor:
        """The dense layer before a classifier, its activation (``config.pooler_act``) and, where the
        family has one (ModernBERT's prediction head), its LayerNorm; in ``x``'s dtype."""
        t = self._tensors
        weight = t["pooler.weight"].to(x.dtype)
        bias = t.get("pooler.bias")
        x = ACTIVATIONS[self.config.pooler_act](F.linear(x, weight, None if bias is None else bias.to(x.dtype)))
        if not self.config.head_norm:
            return x
        beta = t.get("pooler_ln.bias")
        return F.layer_norm(x, x.shape[-1:], t["pooler_ln.weight"].to(x.dtype),
                            None if beta is None else beta.to(x.dtype), self.config.layer_norm_eps)

    def _token_transform(self, hidden: torch.Tensor) -> torch.Tensor:
        """ModernBERT's token heads read every token through its prediction head first."""
        return self._head_transform(hidden) if self.config.head_norm else hidden

    def _forward_fn(self, kind: str):
        return {"hidden": self._hidden, "qa": self._qa}[kind]

    def _runner(self, kind: str):
        if kind not in self._runners:
            from bertrt.engine.graphs import GraphRunner

            self._runners[kind] = GraphRunner(self._forward_fn(kind), device=self.device, max_tokens=self.max_tokens,
                                              max_batch=self.max_batch, max_seq_length=self.max_seq_length)
        return self._runners[kind]

    def capture(self, token_counts: Sequence[int], kind: str = "qa") -> None:
        """Capture the graphs for these token counts now (no-op without graphs)."""
        if not self.graphs:
            return
        runner = self._runner(kind)
        for count in token_counts:
            runner.capture(runner.bucket(count))

    def _run(self, kind: str, batch: PackedBatch) -> torch.Tensor:
        if batch.max_seqlen > self.max_seq_length:
            raise ValueError(f"a sequence of {batch.max_seqlen} tokens exceeds the engine's max_seq_length "
                             f"{self.max_seq_length}; rebuild with a larger --max-seq-length")
        outputs = [self._run_chunk(kind, part) for part in self._split(batch)]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def _run_chunk(self, kind: str, batch: PackedBatch) -> torch.Tensor:
        if self.graphs and (self.graph_max_tokens is None or batch.total_tokens <= self.graph_max_tokens):
            try:
                return self._runner(kind).run(batch)  # host batches go over in one copy
            except torch.cuda.OutOfMemoryError:
                raise
            except RuntimeError as exc:
                # A kernel that cannot be captured must not make the engine unusable.
                warnings.warn(f"CUDA graph capture failed ({str(exc).splitlines()[0]}); running eagerly",
                              RuntimeWarning, stacklevel=3)
                self.graphs = False
                self._runners.clear()
        if batch.input_ids.device != self.device:
            batch = batch.to(self.device)
        cu = batch.cu_seqlens.to(torch.int32)
        with torch.inference_mode():
            return self._forward_fn(kind)(batch.input_ids, batch.token_type_ids, batch.position_ids, cu,
                                          batch.max_seqlen)

    def _split(self, batch: PackedBatch) -> list[PackedBatch]:
        """Cut a batch into runs of whole sequences within max_batch and max_tokens."""
        if batch.num_sequences <= self.max_batch and batch.total_tokens <= self.max_tokens:
            return [batch]
        offsets = batch.cu_seqlens.tolist()
        parts, first = [], 0
        for i in range(1, len(offsets)):
            too_many = i - first > self.max_batch or offsets[i] - offsets[first] > self.max_tokens
            if too_many:
                parts.append(_slice(batch, offsets, first, i - 1))
                first = i - 1
        parts.append(_slice(batch, offsets, first, len(offsets) - 1))
        return parts

    # --- public entry points --------------------------------------------------------------

    def encode(self, batch: PackedBatch) -> torch.Tensor:
        """(total_tokens, hidden) last hidden states in the engine precision."""
        return self._run("hidden", batch)

    def qa_logits(self, batch: PackedBatch) -> torch.Tensor:
        """(total_tokens, 2) fp32 start/end logits: the interface of ``ReferenceBert.qa_logits``."""
        if "qa" not in self.heads:
            raise ValueError("this engine has no question-answering head")
        return self._run("qa", batch)

    def pooled(self, batch: PackedBatch, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """(B, hidden) fp32: act(W h_[CLS] + b), the pooled output (act: tanh for BERT, the
        family's ``config.pooler_act`` otherwise); for ModernBERT its prediction head (dense,
        activation, LayerNorm) on the first token or on the mean of all tokens
        (``config.classifier_pooling``)."""
        if not self.spec.has_pooler:
            raise ValueError("this engine has no pooler")
        hidden = self.encode(batch) if hidden is None else hidden
        with torch.inference_mode():
            if self.config.classifier_pooling == "mean":
                return self._head_transform(mean_per_sequence(hidden.float(), batch.to(hidden.device)))
            first = batch.cu_seqlens[:-1].to(hidden.device, torch.long)
            return self._head_transform(hidden[first].float())

    def classify(self, batch: PackedBatch) -> torch.Tensor:
        """(B, num_labels) fp32 logits of the sequence-classification head."""
        if "classifier" not in self.heads:
            raise ValueError("this engine has no classification head")
        t = self._tensors
        with torch.inference_mode():
            return F.linear(self.pooled(batch), t["heads.classifier.weight"].float(),
                            t["heads.classifier.bias"].float())

    def mean_pooled(self, batch: PackedBatch, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """(B, hidden) fp32: mean of each sequence's last hidden states (sentence-transformers style)."""
        hidden = self.encode(batch) if hidden is None else hidden
        with torch.inference_mode():
            return mean_per_sequence(hidden.float(), batch.to(hidden.device))

    def cls_pooled(self, batch: PackedBatch, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """(B, hidden) fp32: each sequence's first-token last hidden state."""
        hidden = self.encode(batch) if hidden is None else hidden
        return hidden[batch.cu_seqlens[:-1].to(hidden.device, torch.long)].float()

    def token_logits(self, batch: PackedBatch) -> torch.Tensor:
        """(total_tokens, num_labels) fp32 logits of the token-classification head."""
        if "token_classifier" not in self.heads:
            raise ValueError("this engine has no token-classification head")
        t = self._tensors
        with torch.inference_mode():
            hidden = self._token_transform(self.encode(batch)).float()
            weight, bias = t["heads.token_classifier.weight"], t["heads.token_classifier.bias"]
            return F.linear(hidden, weight.float(), bias.float())

    def run(self, input_ids: Sequence[Sequence[int]] | torch.Tensor, attention_mask: torch.Tensor | None = None,
            token_type_ids: Sequence[Sequence[int]] | torch.Tensor | None = None) -> list[torch.Tensor] | torch.Tensor:
        """QA logits at the API edge, where inputs may be padded.

        Args:
            input_ids: a list of token-id lists (ragged), or a (B, S) tensor.
            attention_mask: with a tensor, (B, S) 1 for real tokens (left-aligned); default all real.
            token_type_ids: same layout as ``input_ids``; default all 0.

        Returns:
            For lists: one (len_i, 2) fp32 tensor per sequence. For a tensor: (B, S, 2) fp32 with
            zeros at padded positions.
        """
        if isinstance(input_ids, torch.Tensor):
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
            mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
            batch = pack_padded(input_ids, mask, token_type_ids)
            logits = self.qa_logits(batch)
            return pad_packed(logits, batch.cu_seqlens.to(logits.device), input_ids.shape[1])
        batch = pack_sequences(input_ids, token_type_ids)
        return batch.split(self.qa_logits(batch))


def _add_projection(residual: torch.Tensor, inputs: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor | None) -> torch.Tensor:
    """residual + inputs @ weight.T (+ bias): cuBLAS adds the product to the residual (beta = 1)."""
    out = torch.addmm(residual, inputs, weight.t())
    return out if bias is None else out.add_(bias)


def _slice(batch: PackedBatch, offsets: list[int], first: int, last: int) -> PackedBatch:
    """Sequences first..last-1 of a packed batch (``offsets`` = its cu_seqlens as a list)."""
    start, end = offsets[first], offsets[last]
    lengths = [offsets[i + 1] - offsets[i] for i in range(first, last)]
    cu = (batch.cu_seqlens[first:last + 1] - start).to(torch.int32)
    return PackedBatch(batch.input_ids[start:end], batch.token_type_ids[start:end], batch.position_ids[start:end],
                       cu, max(lengths))


def _check_tensors(spec: EngineSpec, tensors: dict[str, torch.Tensor], *, source: str) -> None:
    """The weights must be what engine.json describes: schema names and shapes, the engine's dtype
    (quantised projections in theirs, with their scales)."""
    from bertrt.engine.quantized import check_quantized_tensors, is_scale

    shapes = {k: (v if v.is_floating_point() else torch.empty(v.shape, device="meta"))
              for k, v in tensors.items() if not is_scale(k)}
    try:
        validate(spec.config, shapes, source=source)
    except CheckpointError as exc:
        raise EngineError(f"{exc}; rebuild the engine") from exc
    check_quantized_tensors(tensors, spec.config.num_hidden_layers, spec.quantization, spec.precision.dtype,
                            source=source)
    heads = tuple(h for h in HEADS if f"heads.{h}.weight" in tensors)
    if set(heads) != set(spec.heads):
        raise EngineError(f"{source}: heads {heads} do not match engine.json's {spec.heads}; rebuild the engine")
