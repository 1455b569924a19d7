"""Fine-tuning on packed tokens: SQuAD question answering and sentence-pair classification.

Both loops train ``ReferenceBert`` (the same module that serves as the CPU path), so what is trained
is exactly what is run. Output is a Hugging Face-compatible folder every loader reads.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bertrt.packed import PackedBatch, pack_sequences, pad_packed
from bertrt.reference import ReferenceBert
from bertrt.atomic import MARKER, marker_text
from bertrt.weights import Checkpoint, load_checkpoint, save_hf_folder


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (AdamW, linear warm-up then linear decay)."""

    epochs: float = 3.0
    learning_rate: float = 1e-4
    batch_size: int = 32
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 42
    device: str | None = None  # None: CUDA when available, else CPU
    mixed_precision: bool = True  # bf16 autocast on CUDA
    # PyTorch's fused varlen attention on CUDA; False trains through the exact padded reference,
    # for a torch whose fused kernel has no backward on this GPU.
    fused_attention: bool = True

    def resolved_device(self) -> torch.device:
        from bertrt.device import resolve_device

        return resolve_device(self.device)


@dataclasses.dataclass
class Example:
    """One training sequence: token ids, token types and its targets."""

    input_ids: list[int]
    token_type_ids: list[int]
    targets: tuple[int, ...]
    teacher: torch.Tensor | None = None  # (len(input_ids), 2) teacher start/end logits, for distillation


@dataclasses.dataclass(frozen=True)
class Distillation:
    """Train a QA student on an ensemble's soft start/end distributions as well as the gold span.

    loss = (1 - weight) * cross-entropy(gold) + weight * T^2 * KL(teacher_T || student_T), where
    ``_T`` is a softmax at temperature ``temperature`` over each sequence's tokens and the teacher
    logits are the mean of the ``teachers``' logits (checkpoints bertrt loads).
    """

    teachers: tuple[str, ...]
    weight: float = 0.5
    temperature: float = 2.0

    def __post_init__(self):
        if not self.teachers:
            raise ValueError("distillation needs at least one teacher")
        if not 0.0 <= self.weight <= 1.0 or self.temperature <= 0:
            raise ValueError(f"distillation weight must be in [0, 1] and temperature > 0, got "
                             f"{self.weight}, {self.temperature}")


def model_for_finetuning(base: Checkpoint, head: str, *, num_labels: int = 2, seed: int = 0) -> ReferenceBert:
    """A ReferenceBert with ``base``'s encoder (and pooler) and a freshly initialised ``head``."""
    config = dataclasses.replace(base.config, num_labels=num_labels) if head == "classifier" else base.config
    model = ReferenceBert(config, heads=(head,), pooler=True)
    model.init_weights(seed=seed)
    encoder = {k: v.float() for k, v in base.tensors.items() if not k.startswith("heads.")}
    if "pooler.weight" not in encoder:  # a base without a pooler: start it from BERT's init
        gen = torch.Generator().manual_seed(seed)
        encoder["pooler.weight"] = torch.randn(config.hidden_size, config.hidden_size, generator=gen) * 0.02
        encoder["pooler.bias"] = torch.zeros(config.hidden_size)
    missing, unexpected = model.load_state_dict(encoder, strict=False)
    assert not unexpected and all(k.startswith("heads.") for k in missing), (missing, unexpected)
    return model


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if name.endswith("bias") or ".ln." in name or name.startswith("embeddings.ln") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _batches(examples: Sequence[Example], batch_size: int, rng: random.Random):
    order = list(range(len(examples)))
    rng.shuffle(order)
    for i in range(0, len(order), batch_size):
        yield [examples[j] for j in order[i:i + batch_size]]


def qa_loss(logits: torch.Tensor, batch: PackedBatch, starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Mean of start and end cross-entropies, each softmax taken over one sequence's tokens only."""
    padded = pad_packed(logits.float(), batch.cu_seqlens, batch.max_seqlen, fill=float("-inf"))  # (B, S, 2)
    return (F.cross_entropy(padded[..., 0], starts) + F.cross_entropy(padded[..., 1], ends)) / 2


def soft_qa_loss(logits: torch.Tensor, teacher: torch.Tensor, batch: PackedBatch, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), per sequence, mean of start and end.

    ``logits`` and ``teacher`` are both packed (total_tokens, 2); padding never enters a softmax.
    """
    student = pad_packed(logits.float() / temperature, batch.cu_seqlens, batch.max_seqlen, fill=float("-inf"))
    target = pad_packed(teacher.float() / temperature, batch.cu_seqlens, batch.max_seqlen, fill=float("-inf"))
    log_p, log_q = F.log_softmax(target, dim=1), F.log_softmax(student, dim=1)  # (B, S, 2) over S
    real = torch.isfinite(target)
    kl = torch.where(real, log_p.exp() * (log_p - log_q), 0.0).sum(dim=1)  # (B, 2)
    return kl.mean() * temperature ** 2


def train(model: ReferenceBert, examples: Sequence[Example],
          loss_fn: Callable[[ReferenceBert, PackedBatch, torch.Tensor, torch.Tensor | None], torch.Tensor],
          config: TrainConfig, *, desc: str = "train") -> dict:
    """Run the optimisation loop; returns a log of the run (steps, losses, seconds).

    ``loss_fn(model, batch, targets, teacher)``: ``teacher`` is the packed (total_tokens, 2) teacher
    logits when the examples carry them, else None.
    """
    if not examples:
        raise ValueError("no training examples")
    device = config.resolved_device()
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    model.to(device).train()
    model.fused_attention = config.fused_attention
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total = max(1, int(round(steps_per_epoch * config.epochs)))
    warmup = int(total * config.warmup_fraction)
    opt = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.learning_rate,
                            fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=config.mixed_precision and device.type == "cuda")
    losses, step, start = [], 0, time.perf_counter()
    bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True)
    while step < total:
        for chunk in _batches(examples, config.batch_size, rng):
            batch = pack_sequences([e.input_ids for e in chunk], [e.token_type_ids for e in chunk]).to(device)
            targets = torch.tensor([e.targets for e in chunk], device=device)
            teacher = None
            if chunk[0].teacher is not None:
                teacher = torch.cat([e.teacher for e in chunk]).to(device)
            with autocast:
                loss = loss_fn(model, batch, targets, teacher)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            opt.step()
            sched.step()
            losses.append(loss.item())
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
            if step >= total:
                break
    bar.close()
    model.eval()
    return {"steps": total, "examples": len(examples), "seconds": round(time.perf_counter() - start, 1),
            "final_loss": sum(losses[-50:]) / len(losses[-50:]), "config": dataclasses.asdict(config)}


# --- SQuAD ----------------------------------------------------------------------------

def squad_examples(features, teacher_logits: Sequence[torch.Tensor] | None = None) -> list[Example]:
    teachers = teacher_logits if teacher_logits is not None else [None] * len(features)
    return [Example(f.input_ids, f.token_type_ids, (f.start_position, f.end_position), t)
            for f, t in zip(features, teachers)]


def _squad_loss(model: ReferenceBert, batch: PackedBatch, targets: torch.Tensor,
                teacher: torch.Tensor | None) -> torch.Tensor:
    return qa_loss(model.qa_logits(batch), batch, targets[:, 0], targets[:, 1])


def _distill_loss(distill: Distillation):
    def loss(model: ReferenceBert, batch: PackedBatch, targets: torch.Tensor, teacher: torch.Tensor | None):
        logits = model.qa_logits(batch)
        hard = qa_loss(logits, batch, targets[:, 0], targets[:, 1])
        return (1 - distill.weight) * hard + distill.weight * soft_qa_loss(logits, teacher, batch,
                                                                             distill.temperature)
    return loss


def _check_teachers(teachers: Sequence[str | Path], student: Checkpoint) -> None:
    """Teachers must answer questions over the student's token ids; fail before any training."""
    for path in teachers:
        teacher = load_checkpoint(path)
        if "qa" not in teacher.heads:
            raise ValueError(f"teacher {path}: no question-answering head (fine-tune it first with "
                             "`bertrt train-squad`)")
        if teacher.config.vocab_size != student.config.vocab_size:
            raise ValueError(f"teacher {path}: vocabulary of {teacher.config.vocab_size} tokens, the student's "
                             f"has {student.config.vocab_size}; teachers must share the student's vocabulary")


def ensemble_logits(teachers: Sequence[str | Path], features, device: torch.device,
                    batch_size: int = 64) -> list[torch.Tensor]:
    """Per feature, the mean over ``teachers`` of their (len, 2) fp32 start/end logits (on the CPU)."""
    from bertrt.tasks.squad import run_qa_model

    total = None
    for path in teachers:
        model = ReferenceBert.from_checkpoint(load_checkpoint(path), device=device)
        starts, ends = run_qa_model(model, features, batch_size=batch_size)
        logits = [torch.from_numpy(np.stack([s, e], axis=1)) for s, e in zip(starts, ends)]
        total = logits if total is None else [a + b for a, b in zip(total, logits)]
        del model
    return [t / len(teachers) for t in total]


def every_answer(examples) -> list:
    """One example per distinct gold answer: SQuAD's dev questions have up to ~3 annotators each,
    and training on all of them teaches where annotators put answer boundaries."""
    out = []
    for example in examples:
        seen = set()
        for answer in example.answers:
            key = (answer["text"], answer["answer_start"])
            if key not in seen:
                seen.add(key)
                out.append(dataclasses.replace(example, answers=[answer]))
    return out


def train_squad(base: str | Path | None, data: str | Path, out: str | Path, *, articles: slice = slice(0, 32),
                config: TrainConfig = TrainConfig(), feature_config=None, save_dtype: torch.dtype | None = None,
                model_card: str | None = None, all_answers: bool = False,
                distill: Distillation | None = None) -> dict:
    """Fine-tune ``base`` for extractive QA on the SQuAD articles ``articles`` and save to ``out``.

    ``all_answers``: train on every distinct gold answer of a question, not only the first.
    ``distill``: also learn the soft start/end distributions of an ensemble of fine-tuned teachers.
    """
    from bertrt.tasks.squad import FeatureConfig, make_features, read_squad
    from bertrt.tokenizer import BertTokenizer

    checkpoint = load_checkpoint(base)
    if checkpoint.vocab_file is None:
        raise ValueError(f"{checkpoint.source}: no vocab.txt beside the weights")
    tokenizer = BertTokenizer(checkpoint.vocab_file, lowercase=checkpoint.config.do_lower_case,
                              vocab_size=checkpoint.config.vocab_size)
    feature_config = feature_config or FeatureConfig()
    positions = checkpoint.config.max_position_embeddings
    if feature_config.max_seq_length > positions:
        import warnings

        from bertrt.errors import BertrtWarning

        warnings.warn(f"{checkpoint.source}: the position table has {positions} rows: training on "
                      f"{positions}-token windows instead of {feature_config.max_seq_length}", BertrtWarning)
        feature_config = FeatureConfig(positions, min(feature_config.doc_stride, positions // 2),
                                       min(feature_config.max_query_length, positions // 2))
    examples = read_squad(data, articles)
    if not examples:
        raise ValueError(f"{data}: no questions in articles {articles.start}:{articles.stop}")
    unanswered = sum(not e.answers for e in examples)
    if unanswered == len(examples):
        raise ValueError(f"{data}: no question in articles {articles.start}:{articles.stop} has an answer to "
                         "train on (a test file?)")
    if unanswered:
        import warnings

        from bertrt.errors import BertrtWarning

        warnings.warn(f"{data}: {unanswered} of {len(examples)} questions have no answer; trained without them",
                      BertrtWarning)
        examples = [e for e in examples if e.answers]
    if distill is not None:
        _check_teachers(distill.teachers, checkpoint)
    training_examples = every_answer(examples) if all_answers else examples
    features = make_features(training_examples, tokenizer, feature_config or FeatureConfig(), training=True,
                             progress=True)
    teacher_logits, loss_fn = None, _squad_loss
    if distill is not None:
        teacher_logits = ensemble_logits(distill.teachers, features, config.resolved_device())
        loss_fn = _distill_loss(distill)
    model = model_for_finetuning(checkpoint, "qa", seed=config.seed)
    log = train(model, squad_examples(features, teacher_logits), loss_fn, config, desc="train-squad")
    log.update(task="squad", data=str(data), articles=f"{articles.start}:{articles.stop}",
               questions=len(examples), answers_used=len(training_examples), features=len(features))
    if distill is not None:
        log["distillation"] = {**dataclasses.asdict(distill), "teachers": [str(t) for t in distill.teachers]}
    trained = model.to_checkpoint(vocab_file=checkpoint.vocab_file, source=str(out))
    extra = {"training_log.json": json.dumps(log, indent=2) + "\n", MARKER: marker_text("model")}
    if model_card:
        extra["README.md"] = model_card
    save_hf_folder(trained, out, dtype=save_dtype, extra_files=extra)
    return log


# --- sentence-pair classification (MRPC-style TSV) -----------------------------------

@dataclasses.dataclass(frozen=True)
class PairExample:
    label: int
    first: str
    second: str
    ids: tuple[str, str]


def read_pair_tsv(path: str | Path, *, exclude_ids: str | Path | None = None) -> list[PairExample]:
    """Read ``label<TAB>id1<TAB>id2<TAB>sentence1<TAB>sentence2`` rows after a header line (GLUE MRPC
    and msr_paraphrase_*.txt). ``exclude_ids``: a TSV of id pairs to leave out (GLUE's dev_ids.tsv)."""
    path = Path(path)
    skip = set()
    if exclude_ids is not None:
        for line in _read_utf8(exclude_ids).splitlines():
            parts = line.strip().split("\t")
            if len(parts) >= 2:
                skip.add((parts[0], parts[1]))
    rows = _read_utf8(path).splitlines()
    if not rows:
        raise ValueError(f"{path}: empty file")
    out = []
    for number, line in enumerate(rows[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 5 or parts[0] not in ("0", "1"):
            raise ValueError(f"{path}:{number}: expected 'label<TAB>id1<TAB>id2<TAB>s1<TAB>s2' with label 0/1")
        if (parts[1], parts[2]) in skip:
            continue
        out.append(PairExample(int(parts[0]), parts[3], parts[4], (parts[1], parts[2])))
    if not out:
        raise ValueError(f"{path}: no sentence pairs to use (after the header{' and --exclude-ids' if skip else ''})")
    return out


def _read_utf8(path: str | Path) -> str:
    try:
        return Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None


def encode_pairs(pairs: Sequence[PairExample], tokenizer, max_seq_length: int = 128) -> list[Example]:
    """[CLS] a [SEP] b [SEP], truncating the longer sentence first (as BERT's GLUE scripts do)."""
    firsts = tokenizer.encode_batch([p.first for p in pairs])
    seconds = tokenizer.encode_batch([p.second for p in pairs])
    out = []
    for pair, a, b in zip(pairs, firsts, seconds):
        a_ids, b_ids = list(a.ids), list(b.ids)
        while len(a_ids) + len(b_ids) > max_seq_length - 3:
            (a_ids if len(a_ids) > len(b_ids) else b_ids).pop()
        ids, types = tokenizer.pair(a_ids, b_ids)
        out.append(Example(ids, types, (pair.label,)))
    return out


def _classifier_loss(model: ReferenceBert, batch: PackedBatch, targets: torch.Tensor,
                     teacher: torch.Tensor | None) -> torch.Tensor:
    return F.cross_entropy(model.classify(batch).float(), targets[:, 0])


@torch.inference_mode()
def predict_labels(model: ReferenceBert, examples: Sequence[Example], batch_size: int = 64) -> list[int]:
    device = next(model.parameters()).device
    labels: list[int] = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        batch = pack_sequences([e.input_ids for e in chunk], [e.token_type_ids for e in chunk]).to(device)
        labels += model.classify(batch).float().argmax(-1).tolist()
    return labels


def accuracy_f1(predicted: Sequence[int], gold: Sequence[int]) -> dict:
    """Accuracy and F1 of the positive class, as percentages (GLUE's MRPC metrics)."""
    tp = sum(p == g == 1 for p, g in zip(predicted, gold))
    fp = sum(p == 1 and g == 0 for p, g in zip(predicted, gold))
    fn = sum(p == 0 and g == 1 for p, g in zip(predicted, gold))
    acc = sum(p == g for p, g in zip(predicted, gold)) / max(1, len(gold))
    f1 = 2 * tp / max(1, 2 * tp + fp + fn)
    return {"accuracy": 100 * acc, "f1": 100 * f1, "count": len(gold)}


def train_classifier(base: str | Path | None, train_tsv: str | Path, out: str | Path, *,
                     exclude_ids: str | Path | None = None, dev_tsv: str | Path | None = None,
                     max_seq_length: int = 128, config: TrainConfig = TrainConfig()) -> dict:
    """Fine-tune ``base`` on sentence pairs; evaluates on ``dev_tsv`` when given; saves to ``out``."""
    from bertrt.tokenizer import BertTokenizer

    checkpoint = load_checkpoint(base)
    if checkpoint.vocab_file is None:
        raise ValueError(f"{checkpoint.source}: no vocab.txt beside the weights")
    tokenizer = BertTokenizer(checkpoint.vocab_file, lowercase=checkpoint.config.do_lower_case,
                              vocab_size=checkpoint.config.vocab_size)
    if max_seq_length > checkpoint.config.max_position_embeddings:
        raise ValueError(f"max_seq_length {max_seq_length}: the model's position table has only "
                         f"{checkpoint.config.max_position_embeddings} rows")
    pairs = read_pair_tsv(train_tsv, exclude_ids=exclude_ids)
    model = model_for_finetuning(checkpoint, "classifier", seed=config.seed)
    log = train(model, encode_pairs(pairs, tokenizer, max_seq_length), _classifier_loss, config,
                desc="train-classifier")
    log.update(task="classifier", train=str(train_tsv), pairs=len(pairs))
    if dev_tsv is not None:
        dev = read_pair_tsv(dev_tsv)
        predicted = predict_labels(model, encode_pairs(dev, tokenizer, max_seq_length))
        log["dev"] = {"data": str(dev_tsv), **accuracy_f1(predicted, [p.label for p in dev])}
    trained = model.to_checkpoint(vocab_file=checkpoint.vocab_file, source=str(out))
    save_hf_folder(trained, out, extra_files={"training_log.json": json.dumps(log, indent=2) + "\n",
                                                  MARKER: marker_text("model")})
    return log
