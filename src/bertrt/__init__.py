"""bertrt: fast inference for BERT-family encoders."""

__version__ = "0.1.0"

__all__ = ["__version__", "build", "Engine"]


def __getattr__(name: str):
    # Lazy, so that `import bertrt` stays light (no torch import until an engine is asked for).
    if name in ("build", "Engine"):
        from bertrt import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'bertrt' has no attribute {name!r}")
