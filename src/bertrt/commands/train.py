"""`bertrt train-squad` and `bertrt train-classifier`: fine-tune a BERT checkpoint."""

from __future__ import annotations

import argparse
import json


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, metavar="PATH",
                   help="checkpoint to start from (any format `bertrt` loads, or a hub name when online)")
    p.add_argument("--out", required=True, metavar="DIR", help="output Hugging Face-compatible folder")
    p.add_argument("--epochs", type=float, default=3.0, help="passes over the data (default 3)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak AdamW learning rate (default 1e-4)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per step (default 32)")
    p.add_argument("--warmup", type=float, default=0.1, help="fraction of steps of linear warm-up (default 0.1)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-squad", help="fine-tune for extractive question answering on SQuAD v1.1 articles",
        description="Fine-tune a BERT checkpoint for extractive QA on chosen articles of a SQuAD v1.1 file "
                    "(the project trains on dev articles 0-31 and holds out 32-47).",
        epilog="example: bertrt train-squad --base ./minilm --data dev-v1.1.json --articles 0:32 --out ./qa-model")
    _add_train_args(p)
    p.add_argument("--data", required=True, metavar="FILE", help="SQuAD v1.1 json with answers")
    p.add_argument("--articles", default="0:32", metavar="A:B", help="articles to train on (default 0:32)")
    p.add_argument("--fp16", action="store_true", help="save the weights in fp16 (half the size)")
    p.add_argument("--all-answers", action="store_true",
                   help="train on every distinct gold answer of each question (dev-style files list several "
                        "annotators' answers), not only the first")
    p.add_argument("--teacher", action="append", default=[], metavar="PATH",
                   help="distil from this fine-tuned QA model (repeat for an ensemble: the student also learns "
                        "the mean of the teachers' start/end logits)")
    p.add_argument("--distill-weight", type=float, default=0.5, metavar="W",
                   help="with --teacher: weight of the teachers' soft targets against the gold span (default 0.5)")
    p.add_argument("--distill-temperature", type=float, default=2.0, metavar="T",
                   help="with --teacher: softmax temperature of the soft targets (default 2)")
    p.set_defaults(func=run_squad)

    c = subparsers.add_parser(
        "train-classifier", help="fine-tune a sentence-pair classifier (MRPC-style TSV)",
        description="Fine-tune a BERT checkpoint as a sentence-pair classifier on a TSV of "
                    "label, id1, id2, sentence1, sentence2 rows after a header (GLUE MRPC format).",
        epilog="example: bertrt train-classifier --base ./minilm --train msr_paraphrase_train.txt "
               "--exclude-ids dev_ids.tsv --dev dev.tsv --out ./mrpc-model")
    _add_train_args(c)
    c.add_argument("--train", required=True, metavar="TSV", help="training pairs")
    c.add_argument("--exclude-ids", metavar="TSV", help="id pairs to leave out of --train (GLUE's dev_ids.tsv)")
    c.add_argument("--dev", metavar="TSV", help="pairs to report accuracy and F1 on after training")
    c.add_argument("--max-seq-length", type=int, default=128)
    c.set_defaults(func=run_classifier)


def _config(args):
    from bertrt.cli import UserError
    from bertrt.tasks.train import TrainConfig

    if args.epochs <= 0 or args.lr <= 0 or args.batch_size <= 0:
        raise UserError("--epochs, --lr and --batch-size must be positive")
    return TrainConfig(epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size,
                       warmup_fraction=args.warmup, seed=args.seed, device=args.device)


def run_squad(args: argparse.Namespace) -> int:
    import torch

    from bertrt.cli import UserError
    from bertrt.tasks.squad import parse_articles
    from bertrt.tasks.train import Distillation, train_squad

    distill = None
    if args.teacher:
        try:
            distill = Distillation(tuple(args.teacher), weight=args.distill_weight,
                                   temperature=args.distill_temperature)
        except ValueError as exc:
            raise UserError(f"--distill-weight/--distill-temperature: {exc}") from exc
    log = train_squad(args.base, args.data, args.out, articles=parse_articles(args.articles), config=_config(args),
                      save_dtype=torch.float16 if args.fp16 else None, all_answers=args.all_answers,
                      distill=distill)
    print(json.dumps({k: log[k] for k in ("steps", "features", "seconds", "final_loss")}))
    print(f"saved to {args.out}")
    return 0


def run_classifier(args: argparse.Namespace) -> int:
    from bertrt.tasks.train import train_classifier

    log = train_classifier(args.base, args.train, args.out, exclude_ids=args.exclude_ids, dev_tsv=args.dev,
                           max_seq_length=args.max_seq_length, config=_config(args))
    print(json.dumps({k: log[k] for k in ("steps", "pairs", "seconds", "final_loss")}))
    if "dev" in log:
        print(json.dumps(log["dev"]))
    print(f"saved to {args.out}")
    return 0
