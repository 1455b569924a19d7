"""The model behind the server: what it can answer, how windows are made, how one packed batch runs.

One ``ServedModel`` wraps a runner (a GPU ``Engine`` or the CPU ``ReferenceBert``) and its
tokenizer. ``run(kind, ids, types)`` runs one packed batch of one kind of work and returns
something with ``result()``:

- ``"qa"``: (total_tokens, 2) float32 start/end logits, through ``PackedBackend`` (the LoadGen
  backend: CUDA graphs for small batches, asynchronous copies for large ones);
- ``"embed"``: (B, hidden) float32 mean of each sequence's last hidden states;
- ``"classify"``: (B, num_labels) float32 logits of the classification head.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from bertrt.batching import Ready
from bertrt.packed import PackedBatch, pack_sequences
from bertrt.tasks.squad import FeatureConfig
from bertrt.tokenizer import BertTokenizer

KINDS = ("qa", "embed", "classify")


class MissingHead(Exception):
    """The loaded model cannot do this kind of work (no such head)."""


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    name: str
    device: str
    precision: str
    heads: tuple[str, ...]
    hidden_size: int
    num_labels: int | None
    max_seq_length: int


def mean_pool(hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """(total_tokens, H) -> (B, H) fp32: the mean of each sequence's rows."""
    hidden = hidden.float()
    lengths = batch.seqlens.to(hidden.device)
    seq = torch.repeat_interleave(torch.arange(batch.num_sequences, device=hidden.device), lengths,
                                  output_size=hidden.shape[0])
    sums = hidden.new_zeros(batch.num_sequences, hidden.shape[1]).index_add_(0, seq, hidden)
    return sums / lengths.to(hidden.dtype)[:, None]


class ModelFront:
    """What the HTTP side needs of a model: its description, tokenizer and window geometry, and
    which kinds of work it answers. Plain data, so a model process can send it to its HTTP workers."""

    def __init__(self, info: ModelInfo, tokenizer: BertTokenizer, features: FeatureConfig):
        self.info, self.tokenizer, self.features = info, tokenizer, features

    def supports(self, kind: str) -> bool:
        """Embeddings need only the encoder; the other kinds need their head."""
        return kind == "embed" or {"qa": "qa", "classify": "classifier"}[kind] in self.info.heads

    def require(self, kind: str) -> None:
        if not self.supports(kind):
            what = {"qa": "question-answering head (qa_outputs)",
                    "classify": "sequence-classification head (classifier)"}[kind]
            raise MissingHead(f"the loaded model ({self.info.name}) has no {what}; serve a model that has one")

    def front(self) -> "ModelFront":
        return ModelFront(self.info, self.tokenizer, self.features)


class ServedModel(ModelFront):
    """A runner and its tokenizer, with the window geometry the server uses.

    Args:
        runner: ``Engine`` or ``ReferenceBert`` (anything with ``encode``; ``qa_logits`` and
            ``classify`` where it has those heads).
        tokenizer: the model's ``BertTokenizer``.
        name: what ``/v1/info`` calls the model.
        device: where the runner's inputs go.
        graph_max_tokens: question-answering batches up to this many tokens replay the engine's
            CUDA graphs (None: the LoadGen backend's default); ``bertrt serve`` sets it to the
            batcher's budget, so no batch runs eagerly: an eager pass launches hundreds of kernels,
            each giving up the interpreter lock (an eager fp8 BERT-Large pass costs 10-18 ms of
            host time on an H200 host, as long as the GPU takes for it).
    """

    def __init__(self, runner, tokenizer: BertTokenizer, *, name: str, device: torch.device,
                 graph_max_tokens: int | None = None):
        from bertrt.harness.loadgen.backends import GRAPH_MAX_TOKENS, PackedBackend

        self.runner, self.device = runner, torch.device(device)
        config = runner.config
        heads = tuple(getattr(runner, "heads", ()))
        max_seq = min(config.max_position_embeddings, getattr(runner, "max_seq_length", 512))
        precision = getattr(runner, "precision", None)
        info = ModelInfo(
            name=name, device=str(self.device),
            precision=precision.value if precision is not None else _dtype_name(runner),
            heads=heads, hidden_size=config.hidden_size,
            num_labels=config.num_labels if "classifier" in heads else None, max_seq_length=max_seq)
        # BERT's SQuAD windows (384 / 128 / 64), narrowed for models with shorter positions.
        seq = min(384, max_seq)
        super().__init__(info, tokenizer, FeatureConfig(max_seq_length=seq, doc_stride=min(128, seq // 3),
                                                        max_query_length=min(64, seq // 4)))
        self._qa = None
        if "qa" in heads:
            limit = min(graph_max_tokens or GRAPH_MAX_TOKENS, getattr(runner, "max_tokens", None) or GRAPH_MAX_TOKENS)
            self._qa = PackedBackend(runner, self.device, name, graph_max_tokens=limit, blocking_sync=True)

    @classmethod
    def load(cls, model: str | Path | None = None, *, engine: str | Path | None = None,
             device: str | None = "auto", graph_max_tokens: int | None = None) -> "ServedModel":
        """The checkpoint ``model`` (default: the embedded model) or the saved ``engine``, on the
        GPU engine when there is a GPU and the CPU reference otherwise."""
        from bertrt.device import resolve_device
        from bertrt.loading import tokenizer_from_files
        from bertrt.weights import CheckpointError, load_checkpoint

        dev = resolve_device(device)
        if engine is not None:
            from bertrt.engine import Engine

            runner = Engine.load(engine, device=dev)
            if runner.vocab_file is None and runner.tokenizer_dir is None:
                raise CheckpointError(f"{engine}: the engine has no vocab.txt")
            tokenizer = tokenizer_from_files(runner.vocab_file, runner.config, str(engine),
                                             folder=runner.tokenizer_dir)
            return cls(runner, tokenizer, name=str(engine), device=dev, graph_max_tokens=graph_max_tokens)
        checkpoint = load_checkpoint(model)
        # Without a vocab.txt, the checkpoint's own tokenizer files (ModernBERT's tokenizer.json).
        folder = checkpoint.tokenizer_dir if checkpoint.vocab_file is None else None
        if checkpoint.vocab_file is None and folder is None:
            raise CheckpointError(f"{checkpoint.source}: no vocab.txt beside the weights")
        tokenizer = tokenizer_from_files(checkpoint.vocab_file, checkpoint.config, checkpoint.source,
                                         folder=folder)
        if dev.type == "cuda":
            from bertrt.engine import Engine

            # No kernel timing at start-up: the default kernels serve at once; `bertrt build`
            # records tuned choices, and `--engine` serves them.
            runner = Engine.from_checkpoint(checkpoint, device=dev, gemm_choices={})
        else:
            from bertrt.reference import ReferenceBert

            runner = ReferenceBert.from_checkpoint(checkpoint, device=dev)
        return cls(runner, tokenizer, name=str(checkpoint.source), device=dev, graph_max_tokens=graph_max_tokens)

    def run(self, kind: str, input_ids: list[np.ndarray], token_type_ids: list[np.ndarray]):
        """Launch one packed batch of ``kind``; ``.result()`` gives its float32 numpy output."""
        if kind == "qa":
            return self._qa.submit(input_ids, token_type_ids)
        batch = pack_sequences([x.tolist() for x in input_ids], [x.tolist() for x in token_type_ids])
        batch = batch.to(self.device)
        with torch.inference_mode():
            if kind == "embed":
                out = mean_pool(self.runner.encode(batch), batch)
            elif kind == "classify":
                out = self.runner.classify(batch)
            else:
                raise ValueError(f"unknown kind of work {kind!r}")
        return Ready(out.float().cpu().numpy())

    def warm_up(self, max_batch_tokens: int | None = None) -> None:
        """One batch of each kind the model serves, so the first request pays no first-call cost.

        With CUDA graphs, question answering also runs eager batches of full windows from just past
        the graphs' largest bucket up to ``max_batch_tokens`` (the batcher's budget): batches past
        the graphs run eagerly, where allocator growth, cuBLASLt plans and any kernel tiling not
        met by the captures would otherwise land in the first large batch of the timed run
        (several questions per request make such batches; LoadGen's warm-up does the same).
        """
        if self._qa is not None:
            self._qa.capture_graphs()
        ids, types = self.tokenizer.pair(self.tokenizer.encode("warm up").ids, self.tokenizer.encode("now").ids)
        sample = ([np.asarray(ids, dtype=np.int32)], [np.asarray(types, dtype=np.int32)])
        for kind in KINDS:
            if self.supports(kind):
                self.run(kind, *sample).result()
        if self._qa is not None and self._qa.has_graphs and max_batch_tokens:
            for tokens in self.eager_warm_up_tokens(max_batch_tokens):
                self.run("qa", *self._full_windows(tokens)).result()

    def eager_warm_up_tokens(self, max_batch_tokens: int) -> list[int]:
        """Token counts of the eager warm-up batches (none when every batch fits a graph)."""
        above = self._qa.graph_max_tokens + 1
        if max_batch_tokens < above:
            return []
        return sorted({above, (above + max_batch_tokens) // 2, max_batch_tokens})

    def _full_windows(self, tokens: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """``tokens`` tokens as windows of ``features.max_seq_length`` (the last one shorter)."""
        seq = self.features.max_seq_length
        lengths = [seq] * (tokens // seq) + ([tokens % seq] if tokens % seq else [])
        filler = self.tokenizer.encode("warm up").ids[0]
        ids = [np.full(n, filler, dtype=np.int32) for n in lengths]
        if self.tokenizer.cls_id is not None:
            for x in ids:
                x[0] = self.tokenizer.cls_id
        types = [np.zeros(n, dtype=np.int32) for n in lengths]
        return ids, types


def _dtype_name(runner) -> str:
    params = getattr(runner, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(
        getattr(first, "dtype", torch.float32), "fp32")
