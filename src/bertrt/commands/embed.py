"""`bertrt embed`: sentence embeddings, one JSON object per input line."""

from __future__ import annotations

import argparse
import json

from bertrt.commands._common import add_model_args
from bertrt.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "embed", help="sentence embeddings (mean or CLS pooling), one JSON line per input",
        description="Embed texts with an encoder: the pooled last hidden states, one JSON object "
                    '{"embedding": [...]} per input on stdout, in input order. Pooling, normalisation and '
                    "the longest input default to the checkpoint's sentence-transformers settings.",
        epilog='example: bertrt embed --model ./all-MiniLM-L6-v2 --text "A sentence." --text "Another."')
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", action="append", metavar="TEXT", help="a text to embed (repeat for more)")
    source.add_argument("--input", metavar="FILE", help="a UTF-8 file with one text per line ('-': stdin)")
    p.add_argument("--pooling", choices=("mean", "cls"), default=None,
                   help="mean of the token states or the first token's (default: the checkpoint's, else mean)")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="L2-normalise each vector (default: as the checkpoint's sentence-transformers modules say)")
    p.add_argument("--max-length", type=int, default=None, metavar="N",
                   help="tokens per input, special tokens included (default: the checkpoint's setting)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="inputs per forward pass (default 32)")
    add_model_args(p)
    p.set_defaults(func=run)


def read_lines(path: str) -> list[str]:
    """The lines of a UTF-8 file (or stdin for '-'), without their line ends."""
    import sys
    from pathlib import Path

    if path == "-":
        return sys.stdin.read().splitlines()
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--input {path}: no such file")
    return file.read_text(encoding="utf-8-sig").splitlines()


def run(args: argparse.Namespace) -> int:
    from bertrt.tasks.embeddings import embed
    from bertrt.tasks.loading import load_for_task

    texts = args.text if args.text is not None else read_lines(args.input)
    if not texts:
        raise UserError("nothing to embed: the input has no lines")
    if args.max_length is not None and args.max_length < 2:
        raise UserError(f"--max-length must be at least 2, got {args.max_length}")
    task_model = load_for_task(args.model, "feature-extraction", device=args.device, engine=args.engine)
    vectors = embed(task_model, texts, pooling=args.pooling, normalize=args.normalize,
                    max_length=args.max_length, batch_size=args.batch_size)
    for row in vectors.tolist():
        print(json.dumps({"embedding": row}))
    return 0
