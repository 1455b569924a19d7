"""What an fp8 or int8 engine quantises, and with which scales: a typed recipe, kept in ``engine.json``.

Every encoder projection (``PROJECTIONS``) reads its input and weight in the low-precision format,
accumulates in fp32 (fp8) or int32 (int8), and writes fp16. The scale of a tensor is the real value
of one step: ``real = q * scale``, ``scale = amax / QMAX[format]``, where ``amax`` is the clip value
(the weight's largest magnitude, or the input's calibrated one).

INT8 has FasterTransformer's two modes, as data:
- mode 1: weights per output channel, inputs per tensor, fp16 GEMM outputs and residuals;
- mode 2: everything per tensor, and the GEMM outputs and the residuals (each sub-layer's input)
  rounded to int8 as well (their scales calibrated like the inputs').

Names of calibrated tensors (``amax`` keys) follow the canonical weight names:
``layers.{i}.{projection}.input`` for each projection's input and, for mode 2,
``layers.{i}.{projection}.output`` and ``layers.{i}.{attn|ffn}.residual``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

PROJECTIONS = ("attn.qkv", "attn.out", "ffn.in", "ffn.out")
QUANT_FORMATS = ("fp8", "int8")
QMAX = {"fp8": 448.0, "int8": 127.0}  # largest finite e4m3 value; symmetric int8
METHODS = ("max", "percentile:99.9", "percentile:99.99", "mse")
GRANULARITIES = ("per-tensor", "per-channel")
# Each format's default calibration method and where its up-projection output is rounded: the
# choices that hold the held-out SQuAD bars on the H200 (benchmarks/results/h200/lowprec_accuracy.json:
# fp8 max with the rounding pass F1 67.20, with cuBLASLt's e4m3 epilogue 67.00, bar 67.03; int8's
# own GEMM rounds exactly in its epilogue, so int8 never needs the pass; int8 mode 1 percentile:99.999
# 66.74-66.85, 99.99 66.40, mse 66.11, max 65.81).
DEFAULT_METHOD = {"fp8": "max", "int8": "percentile:99.999"}
DEFAULT_EPILOGUE_ROUNDING = {"fp8": False, "int8": True}
ATTENTION_PRECISIONS = ("fp16", "fp8")
# Sub-layers whose input (the residual) mode 2 rounds to int8.
RESIDUALS = ("attn", "ffn")


class QuantError(ValueError):
    """A quantisation request or calibration that cannot be honoured; the message says why."""


def parse_method(method: str) -> tuple[str, float | None]:
    """("max" | "percentile" | "mse" | "qat", percentile or None) of a method string."""
    if method in ("max", "mse", "qat"):
        return method, None
    name, _, value = method.partition(":")
    if name == "percentile":
        try:
            p = float(value)
        except ValueError:
            p = float("nan")
        if 0 < p < 100:
            return "percentile", p
    raise QuantError(f"calibration method {method!r}: use max, percentile:P (0 < P < 100, e.g. 99.9 or "
                     "99.99) or mse")


def input_name(layer: int, projection: str) -> str:
    return f"layers.{layer}.{projection}.input"


def output_name(layer: int, projection: str) -> str:
    return f"layers.{layer}.{projection}.output"


def residual_name(layer: int, sublayer: str) -> str:
    return f"layers.{layer}.{sublayer}.residual"


@dataclasses.dataclass(frozen=True)
class QuantRecipe:
    """How an engine's GEMMs run in low precision.

    Args:
        format: "fp8" (e4m3, compute capability >= 8.9) or "int8".
        int8_mode: 1 or 2 for int8 (see the module docstring); None for fp8.
        method: how input scales were chosen: "max", "percentile:P", "mse", or "qat" (taken from a
            quantization-aware checkpoint).
        weights: "per-tensor" or "per-channel" weight scales.
        projections: which projections run quantised (the others stay in the engine's fp16).
        calibration: where the input scales came from (data file, its sha256, articles, features).
        epilogue_rounding: the FFN up-projection's output (the next GEMM's input) rounded in its
            GEMM's epilogue (True), or written in the engine precision and rounded by a pass of
            its own (False); None: the format's default (``DEFAULT_EPILOGUE_ROUNDING``). For fp8
            the epilogue is cuBLASLt's, about 12% faster on the SQuAD workload and 0.2 F1 lower.
        attention: "fp16" (attention's products in the engine precision) or "fp8" (both on e4m3
            operands; fp8 recipes only): see ``bertrt.ops.attention_triton``.
    """

    format: str
    int8_mode: int | None = None
    method: str = ""
    weights: str = "per-tensor"
    projections: tuple[str, ...] = PROJECTIONS
    calibration: dict[str, Any] = dataclasses.field(default_factory=dict)
    epilogue_rounding: bool | None = None
    attention: str = "fp16"

    def __post_init__(self) -> None:
        if self.format not in QUANT_FORMATS:
            raise QuantError(f"quantization format {self.format!r}: use one of {', '.join(QUANT_FORMATS)}")
        if not self.method:
            object.__setattr__(self, "method", DEFAULT_METHOD[self.format])
        if self.epilogue_rounding is None:
            object.__setattr__(self, "epilogue_rounding", DEFAULT_EPILOGUE_ROUNDING[self.format])
        if self.format == "int8" and self.int8_mode not in (1, 2):
            raise QuantError(f"int8 mode {self.int8_mode!r}: use 1 (per-channel weights, fp16 outputs) or 2 "
                             "(per-tensor scales, int8 outputs and residuals)")
        if self.format == "fp8" and self.int8_mode is not None:
            raise QuantError("an int8 mode was given for an fp8 recipe; it applies to int8 only")
        parse_method(self.method)
        if self.weights not in GRANULARITIES:
            raise QuantError(f"weight scales {self.weights!r}: use per-tensor or per-channel")
        if self.mode2 and self.weights != "per-tensor":
            raise QuantError("int8 mode 2 uses per-tensor weight scales")
        if self.attention not in ATTENTION_PRECISIONS:
            raise QuantError(f"attention precision {self.attention!r}: use one of {', '.join(ATTENTION_PRECISIONS)}")
        if self.attention == "fp8" and self.format != "fp8":
            raise QuantError("fp8 attention needs an fp8 recipe (int8 engines also run where fp8 does not)")
        unknown = [p for p in self.projections if p not in PROJECTIONS]
        if unknown or not self.projections:
            raise QuantError(f"quantised projections {list(self.projections)}: choose from {', '.join(PROJECTIONS)}")

    @property
    def qmax(self) -> float:
        return QMAX[self.format]

    @property
    def mode2(self) -> bool:
        return self.format == "int8" and self.int8_mode == 2

    @property
    def name(self) -> str:
        """"fp8", "int8-mode1" or "int8-mode2": how commands and reports name the recipe."""
        return "fp8" if self.format == "fp8" else f"int8-mode{self.int8_mode}"

    def calibrated_names(self, num_layers: int) -> list[str]:
        """Every tensor whose clip value calibration must supply for this recipe."""
        names = [input_name(i, p) for i in range(num_layers) for p in self.projections]
        if self.mode2:
            names += [output_name(i, p) for i in range(num_layers) for p in self.projections]
            names += [residual_name(i, s) for i in range(num_layers) for s in RESIDUALS]
        return names

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "int8_mode": self.int8_mode, "method": self.method,
                "weights": self.weights, "projections": list(self.projections), "calibration": self.calibration,
                "epilogue_rounding": self.epilogue_rounding, "attention": self.attention}

    @classmethod
    def from_json(cls, raw: Any) -> "QuantRecipe":
        if not isinstance(raw, dict):
            raise QuantError(f"quantization must be an object, got {raw!r}")
        try:
            return cls(format=raw["format"], int8_mode=raw.get("int8_mode"), method=raw.get("method", ""),
                       weights=raw.get("weights", "per-tensor"),
                       projections=tuple(raw.get("projections", PROJECTIONS)),
                       calibration=dict(raw.get("calibration") or {}),
                       epilogue_rounding=raw.get("epilogue_rounding"),
                       attention=raw.get("attention", "fp16"))
        except KeyError as exc:
            raise QuantError(f"quantization is missing {exc.args[0]!r}") from exc
        except TypeError as exc:
            raise QuantError(f"quantization: {exc}") from exc

    @classmethod
    def default(cls, format: str, int8_mode: int | None = None) -> "QuantRecipe":
        """The recipe a build uses when only the format is named."""
        if format == "int8":
            mode = int8_mode or 1
            return cls(format="int8", int8_mode=mode, weights="per-channel" if mode == 1 else "per-tensor")
        return cls(format=format, int8_mode=int8_mode)
