"""CUDA graphs of the packed forward pass, one per token-count bucket.

A graph replays fixed kernels on fixed addresses, so every input lives in one static buffer sized
for ``max_tokens`` and each bucket's graph reads its first ``bucket`` tokens. A batch of T real
tokens in B sequences runs in the smallest bucket >= T:

- tokens T..bucket-1 are padding: whatever an earlier batch (or the capture's zeros) left in the
  buffers there, always valid ids, positions and types, so nothing is written for them;
- ``cu_seqlens`` always has ``max_batch + 2`` entries: the B real sequences, then one sequence
  holding all the padding, then empty sequences (every later offset equals ``bucket``);
- ``max_seqlen`` is fixed at ``max_seq_length`` when the graph is captured.

Padding tokens only attend to each other, and every other op works row by row, so the real
tokens' results are exactly those of the eager pass. Buckets are 64 tokens apart up to 2048 and
256 apart above, so padding stays under 256 tokens (and under ~12% of a small batch).

Graphs share one memory pool. That is safe because replays never overlap (a lock) and each
replay's output is copied out before the next replay can overwrite the memory it lives in.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable

import torch

from bertrt.packed import PackedBatch

# forward(input_ids, token_type_ids, position_ids, cu_seqlens, max_seqlen) -> (T, ...) tensor
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]

FINE_STEP, COARSE_STEP, SWITCH = 64, 256, 2048


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
        with torch.inference_mode():
            self.input_ids = torch.zeros(max_tokens, dtype=torch.long, device=device)
            self.token_type_ids = torch.zeros(max_tokens, dtype=torch.long, device=device)
            self.position_ids = torch.zeros(max_tokens, dtype=torch.long, device=device)
            self.cu_seqlens = torch.zeros(max_batch + 2, dtype=torch.int32, device=device)
        self.use_graphs = use_graphs
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = torch.cuda.graph_pool_handle() if use_graphs else None
        self._lock = threading.Lock()

    def bucket(self, tokens: int) -> int:
        """The smallest bucket holding ``tokens`` tokens."""
        if tokens > self.max_tokens:
            raise ValueError(f"{tokens} tokens exceed max_tokens {self.max_tokens}")
        return self.buckets[bisect.bisect_left(self.buckets, tokens)]

    def _static_call(self, bucket: int) -> torch.Tensor:
        return self.forward(self.input_ids[:bucket], self.token_type_ids[:bucket], self.position_ids[:bucket],
                            self.cu_seqlens, self.max_seq_length)

    def _fill_placeholder(self, bucket: int) -> None:
        """Valid inputs for warm-up and capture: sequences of max_seq_length tokens."""
        self.input_ids.zero_()
        self.token_type_ids.zero_()
        self.position_ids.zero_()
        offsets = [min(i * self.max_seq_length, bucket) for i in range(self.max_batch + 2)]
        offsets[-1] = bucket
        self.cu_seqlens.copy_(torch.tensor(offsets, dtype=torch.int32))

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

    def run(self, batch: PackedBatch) -> torch.Tensor:
        """Forward of a batch that fits the limits (tensors on this device): (T, ...) fresh tensor."""
        tokens, sequences = batch.total_tokens, batch.num_sequences
        if sequences > self.max_batch or batch.max_seqlen > self.max_seq_length:
            raise ValueError(f"batch of {sequences} sequences (longest {batch.max_seqlen}) exceeds the graph "
                             f"limits (max_batch {self.max_batch}, max_seq_length {self.max_seq_length})")
        bucket = self.bucket(tokens)
        with self._lock, torch.inference_mode():
            self.capture(bucket)
            self._stage(batch, bucket)
            if not self.use_graphs:
                return self._static_call(bucket)[:tokens].clone()
            graph, out = self.graphs[bucket]
            graph.replay()
            return out[:tokens].clone()

    def _stage(self, batch: PackedBatch, bucket: int) -> None:
        """Copy a batch into the static buffers, padding it to ``bucket`` tokens.

        The padding tokens keep what is already there (see the module docstring): they only attend
        to each other and every other op works row by row, and not zeroing them saves three
        launches per batch on the host's critical path at batch 1."""
        tokens, sequences = batch.total_tokens, batch.num_sequences
        self.input_ids[:tokens].copy_(batch.input_ids)
        self.token_type_ids[:tokens].copy_(batch.token_type_ids)
        self.position_ids[:tokens].copy_(batch.position_ids)
        self.cu_seqlens[:sequences + 1].copy_(batch.cu_seqlens)
        self.cu_seqlens[sequences + 1:].fill_(bucket)
