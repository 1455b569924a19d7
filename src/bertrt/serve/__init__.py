"""Serving: the HTTP app, the model behind it (batched by ``bertrt.batching``), the Ray Serve deployment.

Example:
    >>> from bertrt.serve import ServedModel, ServeSettings, create_app
    >>> app = create_app(ServedModel.load(), ServeSettings(max_batch_tokens=8192))
"""

from bertrt.serve.app import ServeSettings, create_app
from bertrt.serve.model import ServedModel

__all__ = ["ServeSettings", "ServedModel", "create_app"]
