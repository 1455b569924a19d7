"""bertrt: fast inference for BERT-family encoders.

The public surface, each name imported on first use (``import bertrt`` alone imports no torch):

- ``pipeline(task, model=None, *, engine=None, device="auto")``: text in, answers out;
- ``load_checkpoint(model=None)``: any checkpoint format into the canonical weights;
- ``build(model, out_dir, ...)``: a saved GPU engine from any checkpoint;
- ``Engine``: load a saved engine and run packed tokens through it.

Example:
    >>> import bertrt
    >>> qa = bertrt.pipeline("question-answering", device="cpu")
    >>> qa(question="Who wrote it?", context="It was written by Ada Lovelace.")["answer"]
    'Ada Lovelace'
    >>> checkpoint = bertrt.load_checkpoint()          # the embedded default model
    >>> checkpoint.config.num_hidden_layers, checkpoint.heads
    (6, ('qa',))
"""

__version__ = "0.1.0"

__all__ = ["__version__", "pipeline", "load_checkpoint", "build", "Engine"]

# name -> the module that defines it
_LAZY = {
    "pipeline": "bertrt.pipelines",
    "load_checkpoint": "bertrt.weights",
    "build": "bertrt.engine",
    "Engine": "bertrt.engine",
}


def __getattr__(name: str):
    # Lazy, so that `import bertrt` stays light: torch is imported when a name that needs it is used.
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bertrt' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])
