"""Calibration: the clip value (amax) of every tensor a quantised engine rounds, measured by running
the fp32 reference over calibration batches, and the cache that lets later builds skip the data.

Methods (``--calib-method``):
- ``max``: the largest magnitude seen;
- ``percentile:P``: the P-th percentile of the magnitudes (larger values are clipped), from up to
  ``SAMPLE`` values drawn from each batch;
- ``mse``: of candidate clip values (the maximum and a range of percentiles), the one whose
  rounding to the target format has the least squared error on those samples.

The cache is JSON (``bertrt-calibration``): the method, the sha256 of the model's weights, where
the data came from, and the amax of every tensor; a cache made for other weights is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bertrt.quant.numerics import fake_quantize, scale_for
from bertrt.quant.recipe import (PROJECTIONS, RESIDUALS, QuantError, input_name, output_name, parse_method,
                                 residual_name)

CACHE_FORMAT = "bertrt-calibration"
CACHE_VERSION = 1
SAMPLE = 65536  # values drawn per tensor per batch for percentiles and mse
MIN_FEATURES = 8  # fewer calibration windows than this give scales that depend on the draw
MSE_PERCENTILES = (99.0, 99.9, 99.99, 99.999)


def checkpoint_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of a model's weights in canonical names (names, dtypes, shapes and bytes): what a
    calibration cache is tied to."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Clip values of a model's quantised tensors.

    Args:
        method: how they were chosen (``recipe.METHODS``, or "qat").
        amax: tensor name (``recipe.input_name`` etc.) -> clip value (> 0, finite).
        model_sha256: ``checkpoint_sha256`` of the weights they were measured on.
        data: where they came from: file name, its sha256, articles, number of features.
    """

    method: str
    amax: dict[str, float]
    model_sha256: str
    data: dict[str, Any] = dataclasses.field(default_factory=dict)

    def require(self, names: Iterable[str], *, source: str = "calibration") -> None:
        missing = [n for n in names if n not in self.amax]
        if missing:
            raise QuantError(f"{source}: no clip value for {missing[0]} ({len(missing)} missing); calibrate again")

    def check_model(self, sha256: str, *, source: str) -> None:
        if self.model_sha256 != sha256:
            raise QuantError(f"{source}: made for other weights (model sha256 {self.model_sha256[:12]}..., these are "
                             f"{sha256[:12]}...); calibrate again with --calib-data")

    def to_json(self) -> dict[str, Any]:
        return {"format": CACHE_FORMAT, "version": CACHE_VERSION, "method": self.method,
                "model_sha256": self.model_sha256, "data": self.data, "amax": self.amax}

    def save(self, path: str | Path) -> Path:
        """Write the cache atomically (a failed write leaves any old cache as it was)."""
        from bertrt.atomic import write_text_atomically

        return write_text_atomically(path, json.dumps(self.to_json(), indent=1, allow_nan=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise QuantError(f"{path}: cannot read the calibration cache ({exc})") from exc
        if not isinstance(raw, dict) or raw.get("format") != CACHE_FORMAT:
            raise QuantError(f"{path}: not a bertrt calibration cache (no \"format\": \"{CACHE_FORMAT}\")")
        if raw.get("version") != CACHE_VERSION:
            raise QuantError(f"{path}: calibration cache version {raw.get('version')!r}, this bertrt reads "
                             f"{CACHE_VERSION}; calibrate again")
        amax = raw.get("amax")
        if not isinstance(amax, dict) or not all(_is_clip(v) for v in amax.values()):
            raise QuantError(f"{path}: amax must map tensor names to positive finite numbers")
        method = str(raw.get("method", ""))
        if method != "qat":
            try:
                parse_method(method)
            except QuantError as exc:
                raise QuantError(f"{path}: {exc}") from exc
        return cls(method=method, amax={str(k): float(v) for k, v in amax.items()},
                   model_sha256=str(raw.get("model_sha256", "")), data=dict(raw.get("data") or {}))


def _is_clip(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


class _Observer:
    """Magnitude statistics of one tensor over the calibration batches."""

    def __init__(self, name: str, generator: torch.Generator):
        self.name, self.generator = name, generator
        self.peak = 0.0
        self.samples: list[torch.Tensor] = []

    def observe(self, t: torch.Tensor) -> None:
        values = t.detach().abs().flatten().float()
        if not bool(torch.isfinite(values).all()):
            bad = "NaN" if bool(torch.isnan(values).any()) else "Inf"
            raise QuantError(f"calibration met {bad} in {self.name}: the model's numerics overflow there; check "
                             "its weights (or calibrate in fp32)")
        if values.numel() == 0:
            return
        self.peak = max(self.peak, float(values.max()))
        if values.numel() > SAMPLE:
            values = values[torch.randint(values.numel(), (SAMPLE,), generator=self.generator).to(values.device)]
        self.samples.append(values.cpu())

    def amax(self, method: str, fmt: str) -> float:
        kind, p = parse_method(method)
        if kind == "max" or not self.samples:
            return self.peak
        pooled = torch.cat(self.samples)
        if kind == "percentile":
            return float(np.percentile(pooled.numpy(), p))
        candidates = {self.peak, *(float(np.percentile(pooled.numpy(), q)) for q in MSE_PERCENTILES)}
        candidates = sorted(c for c in candidates if c > 0)
        if not candidates:
            return self.peak
        errors = [float(((fake_quantize(pooled, scale_for(c, fmt), fmt) - pooled) ** 2).mean()) for c in candidates]
        return candidates[int(np.argmin(errors))]


def observe_reference(model, batches: Iterable, *, progress: bool = True, seed: int = 0,
                      total: int | None = None) -> dict[str, _Observer]:
    """Run the fp32 reference ``model`` (``bertrt.reference.ReferenceBert``) over packed ``batches``
    and gather, per layer, every projection's input and output and each sub-layer's input."""
    from tqdm import tqdm

    generator = torch.Generator().manual_seed(seed)
    observers: dict[str, _Observer] = {}
    handles = []

    def observer(name: str) -> _Observer:
        return observers.setdefault(name, _Observer(name, generator))

    for i, layer in enumerate(model.layers):
        for projection in PROJECTIONS:
            module = layer.get_submodule(projection)
            def record(m, args, out, i=i, p=projection):  # returns None: the output is left as it is
                observer(input_name(i, p)).observe(args[0])
                observer(output_name(i, p)).observe(out)

            handles.append(module.register_forward_hook(record))
        for sublayer in RESIDUALS:
            def record_residual(m, args, i=i, s=sublayer):
                observer(residual_name(i, s)).observe(args[0])

            handles.append(layer.get_submodule(sublayer).register_forward_pre_hook(record_residual))
    try:
        with torch.inference_mode():
            for batch in tqdm(batches, desc="calibrating", unit="batch", total=total, disable=not progress):
                model.qa_logits(batch) if model.heads else model.encode(batch)
    finally:
        for handle in handles:
            handle.remove()
    if not observers or not any(o.peak for o in observers.values()):
        raise QuantError("calibration saw no data")
    return observers


def calibrate(checkpoint, batches: Sequence, *, method: str, fmt: str, data: dict[str, Any] | None = None,
              progress: bool = True, device: str | torch.device = "cpu") -> Calibration:
    """Clip values of every quantisable tensor of ``checkpoint`` (a ``weights.Checkpoint``) by
    ``method``, from the fp32 reference run over ``batches`` (``PackedBatch``es)."""
    from bertrt.reference import ReferenceBert

    parse_method(method)
    if not batches:
        raise QuantError("no calibration batches")
    model = ReferenceBert.from_checkpoint(checkpoint, device=device)
    observers = observe_reference(model, [b.to(device) for b in batches] if str(device) != "cpu" else batches,
                                  progress=progress, total=len(batches))
    amax = {}
    for name, obs in observers.items():
        value = obs.amax(method, fmt)
        amax[name] = value if value > 0 else 1.0  # an all-zero tensor: any scale represents it
    return Calibration(method=method, amax=amax, model_sha256=checkpoint_sha256(checkpoint.tensors), data=data or {})
