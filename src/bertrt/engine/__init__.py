"""GPU engines: ``build`` (any checkpoint -> saved engine folder) and ``Engine`` (load and run).

Example:
    >>> from bertrt.engine import build, Engine
    >>> engine = Engine.load(build("my-squad-model/", "engines/fp16"))
    >>> logits = engine.qa_logits(batch)      # (total_tokens, 2) fp32, batch: PackedBatch
"""

from bertrt.engine.build import build
from bertrt.engine.format import EngineError, EngineSpec
from bertrt.engine.runtime import Engine

__all__ = ["build", "Engine", "EngineError", "EngineSpec"]
