"""`bertrt squad`: predict answers for a SQuAD file, and score them when it has answers."""

from __future__ import annotations

import argparse
import json

from bertrt.commands._common import add_model_args, add_overwrite_arg


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "squad", help="answer every question of a SQuAD v1.1 file; print EM/F1 when it has answers",
        description="Run extractive QA over a SQuAD v1.1 json: features at max_seq_length/doc_stride/"
                    "max_query_length, n-best post-processing, answers projected onto the original passage. "
                    "Writes --out (qid -> text) and the n-best lists beside it, named nbest_ + its name "
                    "(predictions.json -> nbest_predictions.json). Existing files are replaced only with "
                    "--overwrite.",
        epilog="example: bertrt squad --data dev-v1.1.json --out predictions.json --articles 32:48")
    p.add_argument("--data", required=True, metavar="FILE", help="SQuAD v1.1 json")
    p.add_argument("--out", required=True, metavar="FILE", help="where to write predictions.json")
    p.add_argument("--articles", metavar="A:B", help="only articles A..B-1 in file order (e.g. 32:48)")
    add_model_args(p)
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="features per batch (default 32)")
    p.add_argument("--max-seq-length", type=int, metavar="N",
                   help="window length in tokens (default 384, or the model's limit when smaller)")
    p.add_argument("--doc-stride", type=int, default=128, metavar="N")
    p.add_argument("--max-query-length", type=int, default=64, metavar="N")
    p.add_argument("--n-best", type=int, default=20, metavar="N")
    p.add_argument("--max-answer-length", type=int, default=30, metavar="N")
    add_overwrite_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bertrt.atomic import check_destination
    from bertrt.commands._common import fitted_window, require_positive
    from bertrt.commands.evaluate import load_json
    from bertrt.tasks.squad import parse_articles
    from bertrt.errors import UserError
    from bertrt.loading import load_qa
    from bertrt.tasks.squad import (FeatureConfig, make_features, nbest_path, postprocess, read_squad,
                                    run_qa_model, write_predictions)
    from bertrt.tasks.squad_metric import evaluate

    require_positive(args, "batch_size", "max_seq_length", "doc_stride", "max_query_length", "n_best",
                     "max_answer_length")
    articles = parse_articles(args.articles)
    if Path(args.data).is_dir() or not Path(args.data).exists():
        raise UserError(f"--data {args.data}: " + ("is a folder, not a file" if Path(args.data).is_dir()
                                                   else "no such file"))
    inputs = [("--data", args.data), ("--model", args.model), ("--engine", args.engine)]
    out = check_destination(args.out, inputs=inputs, overwrite=args.overwrite)
    check_destination(nbest_path(out), flag="--out (its n-best file)", inputs=inputs + [("--out", out)],
                      overwrite=args.overwrite)
    try:
        examples = read_squad(args.data, articles)
    except ValueError as exc:
        raise UserError(f"--data {exc}") from None
    if not examples:
        raise UserError(f"--data {args.data}: no questions in the chosen articles")
    model, tokenizer = load_qa(args.model, device=args.device, engine=args.engine)
    window = fitted_window(model, max_seq_length=args.max_seq_length)
    try:
        config = FeatureConfig(window, args.doc_stride, args.max_query_length)
    except ValueError as exc:
        raise UserError(f"--max-seq-length/--max-query-length: {exc}") from None
    features = make_features(examples, tokenizer, config, progress=True)
    starts, ends = run_qa_model(model, features, batch_size=args.batch_size, progress=True)
    predictions, nbest = postprocess(examples, features, starts, ends, n_best_size=args.n_best,
                                     max_answer_length=args.max_answer_length)
    write_predictions(predictions, nbest, out)
    print(f"wrote {len(predictions)} predictions to {out} (n-best lists: {nbest_path(out)})")
    if any(e.answers for e in examples):
        data = load_json(args.data, "--data")["data"]
        print(json.dumps(evaluate(data[articles] if articles else data, predictions)))
    return 0
