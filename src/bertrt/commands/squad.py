"""`bertrt squad`: predict answers for a SQuAD file, and score them when it has answers."""

from __future__ import annotations

import argparse
import json

from bertrt.commands._common import add_model_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "squad", help="answer every question of a SQuAD v1.1 file; print EM/F1 when it has answers",
        description="Run extractive QA over a SQuAD v1.1 json: features at max_seq_length/doc_stride/"
                    "max_query_length, n-best post-processing, answers projected onto the original passage. "
                    "Writes predictions.json (qid -> text) and nbest_predictions.json beside it.",
        epilog="example: bertrt squad --data dev-v1.1.json --out predictions.json --articles 32:48")
    p.add_argument("--data", required=True, metavar="FILE", help="SQuAD v1.1 json")
    p.add_argument("--out", required=True, metavar="FILE", help="where to write predictions.json")
    p.add_argument("--articles", metavar="A:B", help="only articles A..B-1 in file order (e.g. 32:48)")
    add_model_args(p)
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="features per batch (default 32)")
    p.add_argument("--max-seq-length", type=int, default=384, metavar="N")
    p.add_argument("--doc-stride", type=int, default=128, metavar="N")
    p.add_argument("--max-query-length", type=int, default=64, metavar="N")
    p.add_argument("--n-best", type=int, default=20, metavar="N")
    p.add_argument("--max-answer-length", type=int, default=30, metavar="N")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bertrt.cli import UserError
    from bertrt.commands.evaluate import load_json
    from bertrt.loading import load_qa
    from bertrt.tasks.squad import (FeatureConfig, make_features, parse_articles, postprocess, read_squad,
                                    run_qa_model, write_predictions)
    from bertrt.tasks.squad_metric import evaluate

    if args.batch_size <= 0:
        raise UserError("--batch-size must be positive")
    config = FeatureConfig(args.max_seq_length, args.doc_stride, args.max_query_length)
    articles = parse_articles(args.articles)
    examples = read_squad(args.data, articles)
    if not examples:
        raise UserError(f"--data {args.data}: no questions in the chosen articles")
    model, tokenizer = load_qa(args.model, device=args.device, engine=args.engine)
    features = make_features(examples, tokenizer, config, progress=True)
    starts, ends = run_qa_model(model, features, batch_size=args.batch_size, progress=True)
    predictions, nbest = postprocess(examples, features, starts, ends, n_best_size=args.n_best,
                                     max_answer_length=args.max_answer_length)
    write_predictions(predictions, nbest, args.out)
    print(f"wrote {len(predictions)} predictions to {args.out}")
    if any(e.answers for e in examples):
        data = load_json(args.data, "--data")["data"]
        print(json.dumps(evaluate(data[articles] if articles else data, predictions)))
    return 0
