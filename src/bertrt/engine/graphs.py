"""CUDA graphs of the packed forward pass, one per token-count bucket.

A graph replays fixed kernels on fixed addresses, so every input lives in one static int32 buffer
and each bucket's graph reads its own region of it: ``[ids | types | positions | cu_seqlens]``,
``bucket`` tokens each, then ``max_batch + 2`` offsets. A batch of T real tokens in B sequences
runs in the smallest bucket >= T:

- tokens T..bucket-1 are padding: id, type and position 0;
- ``cu_seqlens`` always has ``max_batch + 2`` entries: the B real sequences, then one sequence
  holding all the padding, then empty sequences (every later offset equals ``bucket``);
- ``max_seqlen`` is fixed at ``max_seq_length`` when the graph is captured.

Padding tokens only attend to each other, and every other op works row by row, so the real
tokens' results are exactly those of the eager pass. Buckets are 64 tokens apart up to 2048 and
256 apart above, so padding stays under 256 tokens (and under ~12% of a small batch).

A batch still on the host is staged in one copy: its region is filled in pinned host memory
and copied over whole. Every extra launch before the replay is host time on the critical path of
a single request (SingleStream); copying the batch to the device first and then into the static
buffer took about a dozen launches (copies, dtype casts, the position ids). A batch already on
the device takes six (zero the region, then copy its parts in).

Graphs share one memory pool. That is safe because replays never overlap (a lock) and each
replay's output is copied out before the next replay can overwrite the memory it lives in.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from bertrt.packed import PackedBatch

# forward(input_ids, token_type_ids, position_ids, cu_seqlens, max_seqlen) -> (T, ...) tensor
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]

FINE_STEP, COARSE_STEP, SWITCH = 64, 256, 2048


class StagedInputs(NamedTuple):
    """One bucket's int32 views of a staging buffer, in the order ``Forward`` takes them."""

    input_ids: torch.Tensor
    token_type_ids: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor


def token_buckets(max_tokens: int) -> list[int]:
    """Token counts that get a graph: multiples of 64 up to 2048, of 256 above, and max_tokens."""
    sizes = list(range(FINE_STEP, min(SWITCH, max_tokens) + 1, FINE_STEP))
    sizes += list(range(SWITCH + COARSE_STEP, max_tokens + 1, COARSE_STEP))
    if not sizes or sizes[-1] != max_tokens:
        sizes.append(max_tokens)
    return sizes


class GraphRunner:
    """Lazily captured CUDA graphs of ``forward`` for every token bucket; replays them on demand.

    Args:
        forward: the packed forward pass (see ``Forward``); must be capturable (no host syncs).
        device: the CUDA device.
        max_tokens, max_batch, max_seq_length: the engine limits; batches given to ``run`` must fit.
        use_graphs: False stages batches exactly as for a graph but calls ``forward`` on the static
            buffers directly: what the tests use to check the padding scheme on the CPU.
    """

    def __init__(self, forward: Forward, *, device: torch.device, max_tokens: int, max_batch: int,
                 max_seq_length: int, use_graphs: bool = True):
        self.forward = forward
        self.device = device
        self.max_tokens, self.max_batch, self.max_seq_length = max_tokens, max_batch, max_seq_length
        self.buckets = token_buckets(max_tokens)
        size = 3 * max_tokens + max_batch + 2
        with torch.inference_mode():
            self._static = torch.zeros(size, dtype=torch.int32, device=device)
            # Where host batches are laid out before their one copy (pinned: the copy is asynchronous).
            self._host = torch.zeros(size, dtype=torch.int32, pin_memory=device.type == "cuda")
        self._host_free: torch.cuda.Event | None = None  # recorded after the last copy out of _host
        self._regions: dict[int, tuple[StagedInputs, torch.Tensor, StagedInputs, torch.Tensor]] = {}
        self.use_graphs = use_graphs
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = torch.cuda.graph_pool_handle() if use_graphs else None
        self._lock = threading.Lock()

    def bucket(self, tokens: int) -> int:
        """The smallest bucket holding ``tokens`` tokens."""
        if tokens > self.max_tokens:
            raise ValueError(f"{tokens} tokens exceed max_tokens {self.max_tokens}")
        return self.buckets[bisect.bisect_left(self.buckets, tokens)]

    def region_size(self, bucket: int) -> int:
        return 3 * bucket + self.max_batch + 2

    def inputs(self, bucket: int) -> StagedInputs:
        """The views of the static device buffer that ``bucket``'s graph reads."""
        return self._views(bucket)[0]

    def _views(self, bucket: int) -> tuple[StagedInputs, torch.Tensor, StagedInputs, torch.Tensor]:
        """``bucket``'s region of the device buffer, split and whole, then of the host buffer as
        numpy arrays (cheaper than torch on small arrays) and whole. Made once per bucket: at
        batch 1 a few microseconds of Python per view are a visible part of a request."""
        if bucket not in self._regions:
            size, sizes = self.region_size(bucket), [bucket, bucket, bucket, self.max_batch + 2]
            device, host = self._static[:size], self._host[:size]
            arrays = np.split(host.numpy(), np.cumsum(sizes[:-1]))
            self._regions[bucket] = (StagedInputs(*device.split(sizes)), device, StagedInputs(*arrays), host)
        return self._regions[bucket]

    def _static_call(self, bucket: int) -> torch.Tensor:
        staged = self.inputs(bucket)
        return self.forward(staged.input_ids, staged.token_type_ids, staged.position_ids, staged.cu_seqlens,
                            self.max_seq_length)

    def _fill_placeholder(self, bucket: int) -> None:
        """Valid inputs for warm-up and capture: sequences of max_seq_length tokens."""
        staged = self.inputs(bucket)
        staged.input_ids.zero_()
        staged.token_type_ids.zero_()
        staged.position_ids.zero_()
        offsets = [min(i * self.max_seq_length, bucket) for i in range(self.max_batch + 2)]
        offsets[-1] = bucket
        staged.cu_seqlens.copy_(torch.tensor(offsets, dtype=torch.int32))

    def capture(self, bucket: int) -> None:
        """Warm up (compiles the Triton kernels, picks cuBLAS algorithms) and capture one bucket."""
        if bucket in self.graphs or not self.use_graphs:
            return
        with torch.inference_mode():
            self._fill_placeholder(bucket)
            # Warm up on a side stream, as torch.cuda.graph's documentation asks.
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._static_call(bucket)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                out = self._static_call(bucket)
            self.graphs[bucket] = (graph, out)

    def run(self, batch: PackedBatch, *, from_host: bool | None = None) -> torch.Tensor:
        """Forward of a batch that fits the limits: (T, ...) fresh tensor on this device.

        The batch may be on the host (staged in one copy) or on this device; ``from_host`` picks
        the staging where both are the CPU (tests), default: by where the batch is."""
        tokens, sequences = batch.total_tokens, batch.num_sequences
        if sequences > self.max_batch or batch.max_seqlen > self.max_seq_length:
            raise ValueError(f"batch of {sequences} sequences (longest {batch.max_seqlen}) exceeds the graph "
                             f"limits (max_batch {self.max_batch}, max_seq_length {self.max_seq_length})")
        bucket = self.bucket(tokens)
        if from_host is None:
            from_host = batch.input_ids.device.type == "cpu"
        with self._lock, torch.inference_mode():
            self.capture(bucket)
            if from_host:
                self._stage_from_host(batch, bucket)
            else:
                self._stage_on_device(batch, bucket)
            if not self.use_graphs:
                return self._static_call(bucket)[:tokens].clone()
            graph, out = self.graphs[bucket]
            graph.replay()
            return out[:tokens].clone()

    def _stage_from_host(self, batch: PackedBatch, bucket: int) -> None:
        """Lay a host batch out in ``bucket``'s region, padding included, and copy the region over once."""
        tokens, sequences = batch.total_tokens, batch.num_sequences
        if self._host_free is not None:
            self._host_free.synchronize()  # the previous batch's copy has read _host
        _, device, staged, host = self._views(bucket)
        for target, source in ((staged.input_ids, batch.input_ids), (staged.token_type_ids, batch.token_type_ids),
                               (staged.position_ids, batch.position_ids)):
            target[:tokens] = source.numpy()
            target[tokens:] = 0
        staged.cu_seqlens[:sequences + 1] = batch.cu_seqlens.numpy()
        staged.cu_seqlens[sequences + 1:] = bucket
        device.copy_(host, non_blocking=True)
        if self.device.type == "cuda":
            self._host_free = torch.cuda.Event()
            self._host_free.record()

    def _stage_on_device(self, batch: PackedBatch, bucket: int) -> None:
        """Copy a device batch into ``bucket``'s region, zeroing it first: stale contents could be
        invalid there (another bucket's region puts ids where this one reads types or positions)."""
        tokens, sequences = batch.total_tokens, batch.num_sequences
        staged, region, _, _ = self._views(bucket)
        region.zero_()
        staged.input_ids[:tokens].copy_(batch.input_ids)
        staged.token_type_ids[:tokens].copy_(batch.token_type_ids)
        staged.position_ids[:tokens].copy_(batch.position_ids)
        staged.cu_seqlens[:sequences + 1].copy_(batch.cu_seqlens)
        staged.cu_seqlens[sequences + 1:].fill_(bucket)
