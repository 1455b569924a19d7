"""`bertrt qa`: answer one question about one passage."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from bertrt.commands._common import add_model_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "qa", help="answer a question about a passage",
        description="Answer a question about a passage (extractive QA). Passages longer than the model's "
                    "window are read through overlapping windows, never truncated; a question longer than "
                    "64 tokens is cut, with a warning.",
        epilog='example: bertrt qa --context @passage.txt --question "What is TensorRT?" --json')
    p.add_argument("--context", required=True, metavar="TEXT",
                   help="the passage, or @FILE to read it from a UTF-8 text file ('-' after @ reads stdin)")
    p.add_argument("--question", required=True, metavar="TEXT", help="the question, or @FILE as for --context")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print JSON with the answer, its score and character offsets")
    p.set_defaults(func=run)


def read_text_arg(value: str, what: str) -> str:
    """A literal value, or the contents of @FILE (UTF-8), or of standard input for @-."""
    from bertrt.commands._common import read_stdin_text
    from bertrt.errors import UserError

    if not value.startswith("@"):
        return value
    name = value[1:]
    if name == "-":
        return read_stdin_text(f"--{what}")
    path = Path(name)
    if path.is_dir() or not path.exists():  # FIFOs and /dev/stdin are read like files
        raise UserError(f"--{what} {value}: " + ("is a folder, not a file" if path.is_dir() else "no such file"))
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"--{what} {value}: the file is not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise UserError(f"--{what} {value}: cannot read it ({exc.strerror})") from None


def run(args: argparse.Namespace) -> int:
    from bertrt.commands._common import fitted_window
    from bertrt.errors import UserError
    from bertrt.loading import load_qa
    from bertrt.tasks.qa import answer_question
    from bertrt.tasks.squad import FeatureConfig

    if args.context == "@-" and args.question == "@-":
        raise UserError("--context and --question cannot both read standard input (@-); give one as text or @FILE")
    context = read_text_arg(args.context, "context")
    question = read_text_arg(args.question, "question")
    if not context.strip():
        raise UserError("the context is empty: give a passage to search for the answer")
    if not question.strip():
        raise UserError("the question is empty")
    model, tokenizer = load_qa(args.model, device=args.device, engine=args.engine)
    window = fitted_window(model, max_seq_length=None)
    config = FeatureConfig(window, doc_stride=min(128, window // 2), max_query_length=min(64, window // 2))
    try:
        answer = answer_question(model, tokenizer, question, context, config=config)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if not math.isfinite(answer.score):
        raise UserError("the model gave a score that is not a number: its weights or config are broken")
    if args.json:
        print(json.dumps({"answer": answer.text, "score": round(float(answer.score), 4),
                          "start": answer.start, "end": answer.end}, ensure_ascii=False, allow_nan=False))
    else:
        print(answer.text if answer.text else "(no answer found)")
    return 0
