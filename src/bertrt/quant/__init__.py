"""Low precision: what is quantised and how (``recipe``), the rounding itself (``numerics``) and the
scales, measured on calibration data or read from a cache (``calibration``).

Scales are data: an engine stores them as tensors beside its weights and records its
:class:`QuantRecipe` in ``engine.json``; the kernels take them as arguments.
"""

from bertrt.quant.recipe import QUANT_FORMATS, QuantError, QuantRecipe

__all__ = ["QUANT_FORMATS", "QuantError", "QuantRecipe"]
