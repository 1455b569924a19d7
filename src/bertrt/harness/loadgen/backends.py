"""What the SUT runs: three interchangeable backends with one contract.

``run(input_ids, token_type_ids)`` takes B samples (each a (len,) int32 array) and returns their
start/end logits as one (total_tokens, 2) float32 array in packed order (sample 0's tokens first),
so the SUT never needs to know whether the backend padded. ``padded`` tells the batcher whether a
batch costs ``sum(len)`` tokens (packed) or ``B * max(len)`` (padded).

- ``bertrt``: packed tokens through ``bertrt.engine.Engine`` on a GPU (a saved engine, or one
  built in memory from the checkpoint), or the fp32 ``ReferenceBert`` on the CPU.
- ``pytorch``: Hugging Face ``BertForQuestionAnswering`` from the same checkpoint, padded batches,
  fp16 on CUDA and fp32 on CPU (what the MLPerf reference runs).
- ``onnxruntime``: that model exported to ONNX with dynamic batch and sequence axes, run by the
  CUDA execution provider when there is one, else the CPU provider.

``DeviceBackends`` holds one bertrt or pytorch backend per device (``make_backends``); the SUT
feeds them from one queue.

Each framework is imported inside the backend that needs it.
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from bertrt.errors import UserError
from bertrt.packed import PackedBatch, pad_sequences, position_ids_from_cu_seqlens


def require_qa_head(checkpoint) -> None:
    if "qa" not in checkpoint.heads:
        raise UserError(f"{checkpoint.source}: the model has no question-answering head "
                        "(fine-tune it first with `bertrt train`)")


# Batches up to this many tokens replay the engine's CUDA graphs; larger ones run eagerly. Graphs
# remove launch overhead, which matters for a few hundred tokens (SingleStream, light Server load)
# and not for tens of thousands (Offline), where capturing a graph for every token bucket met in
# the run (~200 buckets up to max_tokens, each warmed up and captured on first use) would cost
# seconds of the timed run.
GRAPH_MAX_TOKENS = 4096


class PackedBackend:
    """The bertrt backend: any model with ``qa_logits(PackedBatch) -> (total_tokens, 2)``.

    Args:
        model: an ``Engine`` or a ``ReferenceBert``.
        device: where its inputs go.
        name: for reports.
        graph_max_tokens: for engines with CUDA graphs, the largest batch that replays a graph.
        blocking_sync: on CUDA, wait for every batch's result asleep in the driver (a blocking
            event) instead of spinning a core until the GPU is done, as a synchronous copy does.
            For servers, whose processes share the host's cores and on one GPU wait for one
            another's batches; LoadGen keeps the spin, which wakes sooner.
    """

    padded = False

    def __init__(self, model, device: torch.device, name: str, *, graph_max_tokens: int = GRAPH_MAX_TOKENS,
                 blocking_sync: bool = False):
        self.model, self.device, self.name = model, device, name
        self.graph_max_tokens = graph_max_tokens
        self.blocking_sync = blocking_sync and device.type == "cuda"
        self.has_graphs = bool(getattr(model, "graphs", False))
        if self.has_graphs:
            model.graph_max_tokens = graph_max_tokens

    def capture_graphs(self) -> None:
        """Capture every graph bucket up to ``graph_max_tokens`` now, outside the timed run."""
        if self.has_graphs:
            self.model.capture(range(64, self.graph_max_tokens + 1, 64))

    @property
    def max_batch_samples(self) -> int | None:
        """The engine's sequence limit per pass: batches beyond it would be split (with a host sync)."""
        return getattr(self.model, "max_batch", None)

    @property
    def max_tokens(self) -> int | None:
        return getattr(self.model, "max_tokens", None)

    def submit(self, input_ids: list[np.ndarray], token_type_ids: list[np.ndarray]) -> "_Pending":
        """Launch a batch without waiting for it; ``.result()`` gives the (total_tokens, 2) logits.

        For batches above ``graph_max_tokens`` on CUDA nothing here waits for the GPU (pinned
        staging, async copies both ways), so the SUT prepares and launches the next batch meanwhile.
        """
        lengths = np.fromiter((len(x) for x in input_ids), dtype=np.int32, count=len(input_ids))
        total = int(lengths.sum())
        cu = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=cu[1:])
        overlap = self.device.type == "cuda" and total > self.graph_max_tokens
        if self.has_graphs and not overlap:
            # A batch for a CUDA graph stays on the host: the engine lays it out in its graph's
            # input region and copies that over in one go (graphs.py), no launches besides.
            positions = np.arange(total, dtype=np.int32) - np.repeat(cu[:-1], lengths)
            batch = PackedBatch(input_ids=torch.from_numpy(np.concatenate(input_ids)),
                                token_type_ids=torch.from_numpy(np.concatenate(token_type_ids)),
                                position_ids=torch.from_numpy(positions), cu_seqlens=torch.from_numpy(cu),
                                max_seqlen=int(lengths.max()))
        else:
            batch = self._device_batch(input_ids, token_type_ids, cu, total, int(lengths.max()), pinned=overlap)
        with torch.inference_mode():
            logits = self.model.qa_logits(batch).float()
        if not overlap and not self.blocking_sync:
            return _Pending(logits.cpu().numpy())
        out = torch.empty(logits.shape, dtype=torch.float32, pin_memory=True)
        out.copy_(logits, non_blocking=True)
        done = torch.cuda.Event(blocking=self.blocking_sync)
        done.record()
        return _Pending(out, done)

    def run(self, input_ids: list[np.ndarray], token_type_ids: list[np.ndarray]) -> np.ndarray:
        return self.submit(input_ids, token_type_ids).result()

    def _device_batch(self, input_ids: list[np.ndarray], token_type_ids: list[np.ndarray], cu: np.ndarray,
                      total: int, max_seqlen: int, *, pinned: bool) -> PackedBatch:
        """The batch on the device in one host-to-device copy of ids, types and cu_seqlens (three
        copies would each pay the latency); ``pinned`` makes that copy asynchronous."""
        host = torch.from_numpy(np.concatenate([*input_ids, *token_type_ids, cu]))
        flat = host.pin_memory().to(self.device, non_blocking=True) if pinned else host.to(self.device)
        cu_seqlens = flat[2 * total:]
        # int32 ids as they come: the kernels take them, and two casts would be two more launches.
        return PackedBatch(input_ids=flat[:total], token_type_ids=flat[total:2 * total],
                           position_ids=position_ids_from_cu_seqlens(cu_seqlens, total),
                           cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)


class _Pending:
    """A launched batch: ``result()`` waits for its copy to the host and returns it as numpy."""

    def __init__(self, value, done=None):
        self.value, self.done = value, done

    def result(self) -> np.ndarray:
        if self.done is not None:
            self.done.synchronize()  # sleeps in the driver, releasing the GIL
            self.value, self.done = self.value.numpy(), None
        return self.value


class DeviceBackends:
    """The same backend once per device, for the SUT to feed from one queue (a worker per device).

    Args:
        backends: one backend per device, each with a ``device`` attribute; all of one kind.

    Attributes:
        backends, devices: in the order given.
        name, padded, model: those of the first backend (the same on every device).
        max_tokens, max_batch_samples: the smallest of the backends' limits (None if none has one).
    """

    def __init__(self, backends: list):
        if not backends:
            raise ValueError("DeviceBackends needs at least one backend")
        self.backends = list(backends)
        self.devices = [b.device for b in self.backends]
        first = self.backends[0]
        self.name, self.padded, self.model = first.name, first.padded, getattr(first, "model", None)

    @property
    def max_tokens(self) -> int | None:
        return _smallest(getattr(b, "max_tokens", None) for b in self.backends)

    @property
    def max_batch_samples(self) -> int | None:
        return _smallest(getattr(b, "max_batch_samples", None) for b in self.backends)


def _smallest(values) -> int | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


def on_device(device) -> contextlib.AbstractContextManager:
    """``device`` made the thread's current CUDA device for the block (nothing for the CPU): loading,
    capturing graphs and launching Triton kernels all act on the current device."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


class TorchBackend:
    """Hugging Face BertForQuestionAnswering on padded batches."""

    padded = True
    name = "pytorch"

    def __init__(self, model, device: torch.device):
        self.model, self.device = model, device

    def run(self, input_ids: list[np.ndarray], token_type_ids: list[np.ndarray]) -> np.ndarray:
        ids, mask, types = (t.to(self.device) for t in pad_sequences(input_ids, token_type_ids))
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, token_type_ids=types)
            logits = torch.stack([out.start_logits, out.end_logits], dim=-1)[mask.bool()]
        return logits.float().cpu().numpy()


class OnnxBackend:
    """An ONNX export of the Hugging Face model, run by onnxruntime on padded batches."""

    padded = True
    name = "onnxruntime"

    def __init__(self, session):
        self.session = session
        self.providers = session.get_providers()

    def run(self, input_ids: list[np.ndarray], token_type_ids: list[np.ndarray]) -> np.ndarray:
        ids, mask, types = (t.numpy() for t in pad_sequences(input_ids, token_type_ids))
        start, end = self.session.run(["start_logits", "end_logits"],
                                      {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
        return np.stack([start, end], axis=-1)[mask.astype(bool)].astype(np.float32, copy=False)


def hf_model(checkpoint, device: torch.device, *, attn_implementation: str = "sdpa"):
    """``BertForQuestionAnswering`` with the checkpoint's weights (fp16 on CUDA, fp32 on CPU)."""
    from bertrt.harness.peers import hf_qa_model

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    return hf_qa_model(checkpoint.config, checkpoint.tensors, device=device, dtype=dtype,
                       attn_implementation=attn_implementation)


class _LogitsOnly(torch.nn.Module):
    """Keyword-free forward returning (start, end), so the ONNX graph has named, fixed I/O."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.start_logits, out.end_logits


def onnx_session(checkpoint, device: torch.device, workdir: Path):
    """Export the Hugging Face model to ``workdir/model.onnx`` and open an onnxruntime session."""
    import onnxruntime as ort

    use_cuda = device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
    export_device = device if use_cuda else torch.device("cpu")
    # Eager attention exports to plain MatMul/Softmax that every onnxruntime provider runs.
    model = _LogitsOnly(hf_model(checkpoint, export_device, attn_implementation="eager"))
    ids = torch.ones(2, 16, dtype=torch.long, device=export_device)
    path = workdir / "model.onnx"
    axes = {0: "batch", 1: "seq"}
    with torch.inference_mode(), warnings.catch_warnings():
        # The TorchScript exporter warns about its own deprecation, index ops it handles, and
        # shape checks it freezes (transformers' mask padding test, always false for our inputs).
        for category in (UserWarning, FutureWarning, DeprecationWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        torch.onnx.export(model, (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(path),
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["start_logits", "end_logits"],
                          dynamic_axes={n: axes for n in ("input_ids", "attention_mask", "token_type_ids",
                                                          "start_logits", "end_logits")},
                          opset_version=17, dynamo=False)
    del model
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), options, providers=providers)


def make_backend(name: str, *, checkpoint=None, engine: Path | None = None, device: torch.device,
                 workdir: Path | None = None, graph_max_tokens: int | None = None):
    """Build the named backend.

    Args:
        name: "bertrt", "pytorch" or "onnxruntime".
        checkpoint: a ``Checkpoint`` with a QA head (all but bertrt-with-engine need one).
        engine: a saved engine folder for the bertrt backend.
        device: where to run.
        workdir: where the onnxruntime backend writes its .onnx file (a temp dir if None).
        graph_max_tokens: the bertrt engine's largest graph-replayed batch (None: GRAPH_MAX_TOKENS).
    """
    graphs = {"graph_max_tokens": graph_max_tokens or GRAPH_MAX_TOKENS}
    if name == "bertrt":
        if engine is not None:
            from bertrt.engine import Engine

            return PackedBackend(Engine.load(engine, device=device), device, "bertrt-engine", **graphs)
        require_qa_head(checkpoint)
        if device.type == "cuda":
            from bertrt.engine import Engine

            return PackedBackend(Engine.from_checkpoint(checkpoint, device=device), device, "bertrt-engine", **graphs)
        from bertrt.reference import ReferenceBert

        return PackedBackend(ReferenceBert.from_checkpoint(checkpoint, device=device), device, "bertrt-reference",
                             **graphs)
    require_qa_head(checkpoint)
    if name == "pytorch":
        return TorchBackend(hf_model(checkpoint, device), device)
    if name == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise UserError("the onnxruntime backend needs onnxruntime: pip install 'bertrt[loadgen]'") from None
        if workdir is None:
            workdir = Path(tempfile.mkdtemp(prefix="bertrt-onnx-"))
        return OnnxBackend(onnx_session(checkpoint, device, workdir))
    raise UserError(f"unknown backend {name!r}")


def make_backends(name: str, *, checkpoint=None, engine: Path | None = None, devices: list[torch.device],
                  workdir: Path | None = None, graph_max_tokens: int | None = None):
    """``make_backend`` on each of ``devices``, each loaded with its device current: the plain
    backend for one device, a ``DeviceBackends`` for several (bertrt and pytorch only). A GPU given
    without its index ('cuda') is given the current one's, so that the SUT's worker threads, whose
    current device starts at 0, know which to make current."""
    if len(devices) > 1 and name == "onnxruntime":
        raise UserError("the onnxruntime backend runs on one device; use --device, or the bertrt or pytorch "
                        "backend with --devices")
    devices = [torch.device("cuda", torch.cuda.current_device()) if d.type == "cuda" and d.index is None else d
               for d in map(torch.device, devices)]
    backends = []
    for device in devices:
        with on_device(device):
            backends.append(make_backend(name, checkpoint=checkpoint, engine=engine, device=device,
                                         workdir=workdir, graph_max_tokens=graph_max_tokens))
    return backends[0] if len(backends) == 1 else DeviceBackends(backends)
