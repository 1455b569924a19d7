"""Timing calls on the CPU or a GPU: the one clock that the latency table and the workload share."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_iterations(fn: Callable[[], object], *, iterations: int, warmup: int, device: torch.device) -> list[float]:
    """Milliseconds of each of ``iterations`` calls of ``fn``, after ``warmup`` untimed calls.

    On a GPU each call is timed by CUDA events around it and synchronised before the next; on the
    CPU by ``time.perf_counter``.
    """
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        synchronize(device)
        times = []
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            for _ in range(iterations):
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
        else:
            for _ in range(iterations):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1000.0)
    return times
