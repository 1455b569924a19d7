"""Arguments and checks shared by several commands."""

from __future__ import annotations

import argparse
import sys
import warnings

from bertrt.errors import BertrtWarning, UserError


def add_model_args(parser: argparse.ArgumentParser, *, engine: bool = True) -> None:
    parser.add_argument("--model", metavar="PATH",
                        help="checkpoint: Hugging Face folder, TensorFlow checkpoint, .onnx, state dict, or a "
                             "hub name when online (default: the embedded SQuAD-tuned MiniLM)")
    if engine:
        parser.add_argument("--engine", metavar="DIR", help="a saved engine from `bertrt build` (overrides --model)")
    parser.add_argument("--device", default="auto",
                        help="auto (GPU when present, else CPU), cpu, cuda or cuda:N (default: auto)")


def add_overwrite_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output that bertrt did not write (default: refuse)")


def warn(message: str) -> None:
    """One line on stderr (``bertrt COMMAND: warning: ...``) saying what was changed."""
    warnings.warn(message, BertrtWarning, stacklevel=2)


def require_positive(args: argparse.Namespace, *names: str, minimum: int = 1) -> None:
    """UserError naming the first of ``names`` (attribute names) whose value is below ``minimum``."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise UserError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


def require_finite(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and not (value == value and abs(value) != float("inf")):
            raise UserError(f"--{name.replace('_', '-')} must be a finite number, got {value}")


def only_with(args: argparse.Namespace, needs: str, *names: str, defaults: dict | None = None) -> None:
    """UserError when an option of ``names`` is given without the option ``needs`` it modifies."""
    if getattr(args, needs.lstrip("-").replace("-", "_")):
        return
    for name in names:
        value = getattr(args, name)
        if value not in (None, False, [], (defaults or {}).get(name)):
            raise UserError(f"--{name.replace('_', '-')} only has a meaning with {needs}; add {needs} or drop it")


def read_stdin_text(flag: str) -> str:
    """All of standard input as UTF-8 text; UserError naming ``flag`` when it is not UTF-8."""
    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{flag} @-: standard input is not UTF-8 text (bad byte at offset {exc.start})") from None


def fitted_window(model, *, max_seq_length: int | None, default: int = 384) -> int:
    """The window to read passages through: ``max_seq_length`` when the model accepts it (UserError
    otherwise); without one, ``default`` clamped to the model's limit, with a warning when clamped."""
    from bertrt.loading import max_window

    limit = max_window(model)
    if max_seq_length is not None:
        if max_seq_length > limit:
            raise UserError(f"--max-seq-length {max_seq_length}: the model accepts at most {limit} tokens "
                            "(its position table or the engine's limit); pass a smaller value")
        return max_seq_length
    if default > limit:
        warn(f"the model accepts at most {limit} tokens (position table or engine limit): "
             f"reading passages through {limit}-token windows instead of {default}")
        return limit
    return default
