"""SQuAD v1.1: reading the json, features (sliding windows), running a QA model, post-processing.

Features follow the original BERT ``run_squad.py``: the question is cut to ``max_query_length``
WordPiece tokens, the passage is cut into windows of at most
``max_seq_length - len(question) - 3`` tokens that start at 0 and advance by
``min(window length, doc_stride)`` (``doc_stride`` is the step, not an overlap), each laid out as
``[CLS] question [SEP] window [SEP]`` with token types 0/1. A passage token seen by several windows
is scored only in the window where it has the most context on both sides. On the SQuAD v1.1 dev
set at the defaults this gives the 10,833 features that MLPerf and NVIDIA quote.

Unlike the original we keep each passage token's character span in the context (from the
``tokenizers`` offsets), so an answer is projected back onto the original, cased text directly.

Example:
    >>> examples = read_squad("dev-v1.1.json")
    >>> features = make_features(examples, tokenizer)
    >>> starts, ends = run_qa_model(model, features)
    >>> predictions, nbest = postprocess(examples, features, starts, ends)
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from bertrt.errors import BertrtWarning
from bertrt.packed import pack_sequences
from bertrt.tokenizer import BertTokenizer, EncodingCache


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Window geometry, in WordPiece tokens (BERT's SQuAD defaults)."""

    max_seq_length: int = 384
    doc_stride: int = 128
    max_query_length: int = 64

    def __post_init__(self):
        if self.doc_stride <= 0 or self.max_query_length <= 0:
            raise ValueError("doc_stride and max_query_length must be positive")
        if self.max_seq_length - self.max_query_length - 3 <= 0:
            raise ValueError(f"max_seq_length={self.max_seq_length} leaves no room for the passage "
                             f"after a {self.max_query_length}-token question and 3 special tokens")


@dataclasses.dataclass
class SquadExample:
    """One question on one paragraph. ``answers``: [{"text": str, "answer_start": int}, ...]."""

    qid: str
    title: str
    article_index: int
    context: str
    question: str
    answers: list[dict]


@dataclasses.dataclass
class SquadFeature:
    """One window of one example, ready for the model.

    ``input_ids`` / ``token_type_ids``: ``[CLS] question [SEP] window [SEP]`` and 0...0 1...1 (the
    tokenizer's own layout: RoBERTa's is ``<s> question </s></s> window </s>``, all type 0).
    ``token_offsets[i]``: (start, end) character span in the example's context for passage tokens,
    None for [CLS], question and [SEP]. ``token_is_max_context[i]``: this window is where passage
    token i has the most context (always False outside the passage). ``start_position`` /
    ``end_position``: training targets as token indices in this feature; 0, 0 ([CLS]) when the
    answer is not wholly inside the window.
    """

    example_index: int
    qid: str
    input_ids: list[int]
    token_type_ids: list[int]
    token_offsets: list[tuple[int, int] | None]
    token_is_max_context: list[bool]
    start_position: int = 0
    end_position: int = 0


def parse_articles(text: str | None, *, flag: str = "--articles") -> slice | None:
    """Articles of a SQuAD file, in file order: ``"32:48"`` -> slice(32, 48), ``"32:"`` -> from 32 on,
    ``"5"`` -> slice(5, 6) (article 5 alone), None -> None (all).

    Raises:
        UserError: anything else (negative numbers, a step, an empty range), naming ``flag``.
    """
    from bertrt.errors import UserError

    if text is None:
        return None
    parts = text.strip().split(":")
    try:
        if len(parts) == 1:
            start = int(parts[0])
            chosen = slice(start, start + 1)
        elif len(parts) == 2:
            chosen = slice(int(parts[0]) if parts[0].strip() else None, int(parts[1]) if parts[1].strip() else None)
        else:
            raise ValueError(text)
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected A:B (articles A to B-1, e.g. 32:48) "
                        "or one article number") from None
    if any(v is not None and v < 0 for v in (chosen.start, chosen.stop)):
        raise UserError(f"{flag} {text!r}: article numbers count from 0 and cannot be negative")
    if chosen.start is not None and chosen.stop is not None and chosen.stop <= chosen.start:
        raise UserError(f"{flag} {text!r}: an empty range (B must be larger than A)")
    return chosen


def _require(cond: bool, path, what: str) -> None:
    if not cond:
        raise ValueError(f"{path}: not a SQuAD json file ({what})")


def read_squad_articles(path: str | Path, articles: slice | None = None) -> list[dict]:
    """The article dicts of a SQuAD json (its ``"data"``), optionally a slice of them in file order.

    This is what ``squad_metric.evaluate`` takes as its dataset.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a SQuAD json file (not UTF-8 text: bad byte at offset {err.start})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a SQuAD json file (not valid JSON: {err})") from None
    except RecursionError:
        raise ValueError(f"{path}: not a SQuAD json file (JSON nested too deeply)") from None
    _require(isinstance(raw, dict) and isinstance(raw.get("data"), list), path, 'no top-level "data" list')
    data = raw["data"]
    return data if articles is None else data[articles]


def read_squad(path: str | Path, articles: slice | None = None) -> list[SquadExample]:
    """Every question of a SQuAD v1.1 json, in file order.

    Args:
        path: a SQuAD json file (``{"data": [{"title", "paragraphs": [{"context", "qas"}]}]}``).
        articles: which articles to read, as a slice of ``data["data"]`` in file order
            (``article_index`` stays the position in the whole file).

    A question id seen before is dropped (the first question with that id is kept), with a
    ``BertrtWarning``: predictions are keyed by id, so only one answer per id can be reported.

    Raises:
        ValueError: the file is not JSON or lacks the SQuAD structure (answers included).
    """
    path = Path(path)
    data = read_squad_articles(path)
    indices = range(len(data)) if articles is None else range(len(data))[articles]
    examples, seen, duplicates = [], set(), []
    for ai in indices:
        article = data[ai]
        _require(isinstance(article, dict) and isinstance(article.get("paragraphs"), list),
                 path, f'article {ai} has no "paragraphs" list')
        for pi, para in enumerate(article["paragraphs"]):
            _require(isinstance(para, dict) and isinstance(para.get("context"), str)
                     and isinstance(para.get("qas"), list),
                     path, f'article {ai} paragraph {pi} needs "context" and "qas"')
            for qa in para["qas"]:
                _require(isinstance(qa, dict) and isinstance(qa.get("id"), (str, int))
                         and isinstance(qa.get("question"), str),
                         path, f'article {ai} paragraph {pi}: a question lacks a string "id" or "question"')
                answers = qa.get("answers", [])
                _require(isinstance(answers, list) and all(_is_answer(a) for a in answers), path,
                         f'article {ai} paragraph {pi} question {qa["id"]}: "answers" must be a list of '
                         '{"text": str, "answer_start": int >= 0}')
                qid = str(qa["id"])
                if qid in seen:
                    duplicates.append(qid)
                    continue
                seen.add(qid)
                examples.append(SquadExample(
                    qid=qid, title=str(article.get("title", "")), article_index=ai,
                    context=para["context"], question=qa["question"], answers=list(answers)))
    if duplicates:
        shown = ", ".join(repr(q) for q in duplicates[:3]) + (", ..." if len(duplicates) > 3 else "")
        warnings.warn(f"{path}: {len(duplicates)} question(s) repeat an earlier id ({shown}); "
                      "kept the first question of each id", BertrtWarning, stacklevel=2)
    return examples


def _is_answer(answer) -> bool:
    start = answer.get("answer_start") if isinstance(answer, dict) else None
    return (isinstance(answer, dict) and isinstance(answer.get("text"), str)
            and isinstance(start, int) and not isinstance(start, bool) and start >= 0)


# --------------------------------------------------------------------------------------------
# Features


def doc_spans(num_doc_tokens: int, max_tokens_for_doc: int, doc_stride: int) -> list[tuple[int, int]]:
    """(start, length) of each window over ``num_doc_tokens`` passage tokens, as original BERT.

    An empty passage gives no window (and so no feature), as in the original.
    """
    spans, start = [], 0
    while start < num_doc_tokens:
        length = min(num_doc_tokens - start, max_tokens_for_doc)
        spans.append((start, length))
        if start + length == num_doc_tokens:
            break
        start += min(length, doc_stride)
    return spans


def max_context_flags(spans: Sequence[tuple[int, int]], span_index: int) -> list[bool]:
    """For each token of window ``span_index``: is this the window with its maximum context?

    Score of a window for a token: ``min(left, right) + 0.01 * window length``; the first window
    with the best score wins ties, as in the original.
    """
    start, length = spans[span_index]
    if len(spans) == 1:
        return [True] * length
    flags = []
    for pos in range(start, start + length):
        best, best_score = -1, None
        for i, (s, n) in enumerate(spans):
            end = s + n - 1
            if s <= pos <= end:
                score = min(pos - s, end - pos) + 0.01 * n
                if best_score is None or score > best_score:
                    best, best_score = i, score
        flags.append(best == span_index)
    return flags


def _answer_tokens(offsets: list[tuple[int, int]], ends: list[int], example: SquadExample
                   ) -> tuple[int, int] | None:
    """First and last passage token of the first gold answer, or None."""
    if not example.answers:
        return None
    answer = example.answers[0]
    char_start = int(answer["answer_start"])
    char_end = char_start + len(answer["text"])
    first = bisect.bisect_right(ends, char_start)  # first token that ends after the answer starts
    last = first
    while last + 1 < len(offsets) and offsets[last + 1][0] < char_end:
        last += 1
    if first >= len(offsets) or offsets[first][0] >= char_end:
        return None
    return first, last


def _window_start(tokenizer, query: list[int]) -> int:
    """Where the passage window starts in the tokenizer's (question, window) layout."""
    marker = -1  # no vocabulary has id -1
    ids, _ = tokenizer.pair(query, [marker])
    return ids.index(marker)


def make_features(examples: Sequence[SquadExample], tokenizer: BertTokenizer,
                  config: FeatureConfig = FeatureConfig(), *, training: bool = False,
                  progress: bool = False, contexts_cache: EncodingCache | None = None) -> list[SquadFeature]:
    """Cut every example into model windows (see the module docstring for the algorithm).

    Args:
        examples: the questions; ``SquadFeature.example_index`` indexes this sequence.
        tokenizer: a BertTokenizer or any ``bertrt.tokenizer.load_tokenizer`` tokenizer (offsets must
            index the original context); its ``pair`` lays out question and window.
        training: also fill ``start_position`` / ``end_position`` from the first gold answer.
        progress: show a tqdm bar.
        contexts_cache: contexts' encodings to reuse, and to keep the new ones in.

    Questions longer than ``config.max_query_length`` tokens are cut to it, with a ``BertrtWarning``.

    Returns:
        Features in example order, each example's windows in passage order.
    """
    # Paragraphs carry several questions: tokenise each distinct context once.
    # Contexts and questions in one tokenizer call: each call has a cost of its own beside its texts.
    contexts = list(dict.fromkeys(ex.context for ex in examples))
    context_enc = {}
    if contexts_cache is not None:
        context_enc = {c: e for c in contexts if (e := contexts_cache.get(c)) is not None}
    missing = [c for c in contexts if c not in context_enc]
    encoded = tokenizer.encode_batch(missing + [ex.question for ex in examples])
    for text, enc in zip(missing, encoded):
        context_enc[text] = enc
        if contexts_cache is not None:
            contexts_cache.put(text, enc)
    question_enc = encoded[len(missing):]
    specials = tokenizer.special_tokens(pair=True)

    items = enumerate(examples)
    if progress:
        from tqdm import tqdm
        items = tqdm(items, total=len(examples), desc="features", unit="ex")

    long_questions = [ex.qid for ex, enc in zip(examples, question_enc) if len(enc.ids) > config.max_query_length]
    if long_questions:
        longest = max(len(enc.ids) for enc in question_enc)
        warnings.warn(f"{len(long_questions)} question(s) longer than max_query_length {config.max_query_length} "
                      f"tokens (longest: {longest}) were cut to their first {config.max_query_length} tokens",
                      BertrtWarning, stacklevel=2)
    features = []
    span_cache: dict[tuple[int, int], tuple[list, list]] = {}
    for ex_index, ex in items:
        query = question_enc[ex_index].ids[:config.max_query_length]
        doc = context_enc[ex.context]
        max_tokens_for_doc = config.max_seq_length - len(query) - specials
        key = (len(doc.ids), max_tokens_for_doc)
        if key not in span_cache:
            spans = doc_spans(len(doc.ids), max_tokens_for_doc, config.doc_stride)
            span_cache[key] = (spans, [max_context_flags(spans, i) for i in range(len(spans))])
        spans, flags = span_cache[key]
        target = None
        if training:
            target = _answer_tokens(doc.offsets, [e for _, e in doc.offsets], ex)
        prefix = _window_start(tokenizer, query)  # [CLS] question [SEP] (RoBERTa: <s> question </s></s>)
        for (start, length), is_max in zip(spans, flags):
            ids, types = tokenizer.pair(query, doc.ids[start:start + length])
            tail = len(ids) - prefix - length
            offsets = [None] * prefix + list(doc.offsets[start:start + length]) + [None] * tail
            max_ctx = [False] * prefix + is_max + [False] * tail
            start_pos = end_pos = 0
            if target is not None and start <= target[0] and target[1] < start + length:
                start_pos, end_pos = target[0] - start + prefix, target[1] - start + prefix
            features.append(SquadFeature(ex_index, ex.qid, ids, types, offsets, max_ctx,
                                         start_pos, end_pos))
    return features


# --------------------------------------------------------------------------------------------
# Model


def model_device(model) -> torch.device:
    """Where ``model``'s inputs go: its parameters' device (an ``nn.Module``), else its ``device``."""
    params = getattr(model, "parameters", None)
    if callable(params):
        first = next(iter(params()), None)
        if first is not None:
            return first.device
    return torch.device(getattr(model, "device", "cpu"))


def run_qa_model(model, features: Sequence[SquadFeature], *, batch_size: int = 32,
                 progress: bool = False) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Start and end logits of every feature, packed (no padding) in batches of ``batch_size``.

    Args:
        model: anything with ``qa_logits(PackedBatch) -> (total_tokens, 2)``.

    Returns:
        (start_logits, end_logits): one float32 array of shape (len(feature.input_ids),) per feature.
    """
    device = model_device(model)
    starts, ends = [], []
    chunks = range(0, len(features), batch_size)
    if progress:
        from tqdm import tqdm
        chunks = tqdm(chunks, desc="qa model", unit="batch")
    with torch.inference_mode():
        for i in chunks:
            chunk = features[i:i + batch_size]
            batch = pack_sequences([f.input_ids for f in chunk], [f.token_type_ids for f in chunk])
            logits = model.qa_logits(batch.to(device))
            if logits.shape != (batch.total_tokens, 2):
                raise ValueError(f"qa_logits returned shape {tuple(logits.shape)}, "
                                 f"expected ({batch.total_tokens}, 2)")
            logits = logits.float().cpu().numpy()
            if not np.isfinite(logits).all():
                raise ValueError("the model produced NaN or infinite scores: its weights or config "
                                 "(layer_norm_eps, ...) are broken; check the checkpoint")
            for part in np.split(logits, np.cumsum([len(f.input_ids) for f in chunk])[:-1]):
                starts.append(np.ascontiguousarray(part[:, 0]))
                ends.append(np.ascontiguousarray(part[:, 1]))
    return starts, ends


# --------------------------------------------------------------------------------------------
# Post-processing


def _softmax(scores: list[float]) -> list[float]:
    x = np.asarray(scores, dtype=np.float64)
    e = np.exp(x - x.max())
    return (e / e.sum()).tolist()


def _top_indices(logits: np.ndarray, n: int) -> np.ndarray:
    return np.argsort(-np.asarray(logits), kind="stable")[:n]


def postprocess(examples: Sequence[SquadExample], features: Sequence[SquadFeature],
                start_logits: Sequence[np.ndarray], end_logits: Sequence[np.ndarray], *,
                n_best_size: int = 20, max_answer_length: int = 30
                ) -> tuple[dict[str, str], dict[str, list[dict]]]:
    """Best answer span of every example, as original BERT (v1.1: never abstains).

    For each feature the ``n_best_size`` highest start and end logits are paired; pairs outside the
    passage, with end < start, longer than ``max_answer_length`` tokens, or whose start token lacks
    its maximum context in this window are dropped; the rest are ranked by start + end logit over
    all the example's windows, deduplicated by text, and the top ``n_best_size`` kept.

    Returns:
        predictions: qid -> answer text, cut from the original context ("" if no valid span).
        nbest: qid -> [{"text", "probability", "start_logit", "end_logit", "start", "end"}], best
            first; ``probability`` is a softmax over the n-best logit sums; ``start``/``end`` are
            character offsets into the context (end exclusive).
    """
    if n_best_size < 1 or max_answer_length < 1:
        raise ValueError(f"n_best_size ({n_best_size}) and max_answer_length ({max_answer_length}) must be >= 1")
    if not (len(features) == len(start_logits) == len(end_logits)):
        raise ValueError(f"{len(features)} features but {len(start_logits)} start and "
                         f"{len(end_logits)} end logit arrays")
    by_example: dict[int, list[int]] = {}
    for fi, feature in enumerate(features):
        by_example.setdefault(feature.example_index, []).append(fi)

    predictions, nbest = {}, {}
    for ex_index, ex in enumerate(examples):
        # (score, start_logit, end_logit, char_start, char_end) of every valid pair, in the
        # original's order (feature, then start rank, then end rank) before the stable sort.
        parts = [_feature_candidates(features[fi], start_logits[fi], end_logits[fi], n_best_size, max_answer_length)
                 for fi in by_example.get(ex_index, [])]
        parts = [p for p in parts if p is not None]
        ranked = []
        if parts:
            score, *columns = (np.concatenate(column) for column in zip(*parts))
            # Stable and descending, as the original's sort(reverse=True): ties keep their order.
            order = np.argsort(-score, kind="stable")
            ranked = zip(*(c[order].tolist() for c in columns))
        nbest[ex.qid] = _nbest(ex.context, ranked, n_best_size)
        predictions[ex.qid] = nbest[ex.qid][0]["text"]
    return predictions, nbest


def _nbest(context: str, ranked, n_best_size: int) -> list[dict]:
    """The n-best list of one question from its candidates (start_logit, end_logit, char_start,
    char_end), best first: the first ``n_best_size`` distinct texts (the empty answer when there is
    none), each with its softmax probability over the list."""
    entries, seen = [], set()
    for sl, el, cs, ce in ranked:
        if len(entries) >= n_best_size:
            break
        text = context[cs:ce]
        if text in seen:
            continue
        seen.add(text)
        entries.append({"text": text, "start_logit": sl, "end_logit": el, "start": cs, "end": ce})
    if not entries:
        entries = [{"text": "", "start_logit": 0.0, "end_logit": 0.0, "start": 0, "end": 0}]
    for entry, p in zip(entries, _softmax([e["start_logit"] + e["end_logit"] for e in entries])):
        entry["probability"] = p
    return [{k: e[k] for k in ("text", "probability", "start_logit", "end_logit", "start", "end")} for e in entries]


def _feature_candidates(feature: SquadFeature, s_log: np.ndarray, e_log: np.ndarray, n_best_size: int,
                        max_answer_length: int) -> tuple[np.ndarray, ...] | None:
    """One window's valid (start, end) pairs among its ``n_best_size`` best starts and ends, as
    arrays (score, start_logit, end_logit, char_start, char_end) in start-rank then end-rank order;
    None when there is none. The pairs are judged on the (starts x ends) grid at once instead of a
    Python loop over it: ``best_answer`` of a SQuAD question took 0.14 ms of an EPYC core with the
    loop and 0.07 ms so."""
    offsets, is_max = feature.token_offsets, feature.token_is_max_context
    s_log, e_log = np.asarray(s_log), np.asarray(e_log)
    starts, ends = _top_indices(s_log, n_best_size), _top_indices(e_log, n_best_size)
    s_list, e_list = starts.tolist(), ends.tolist()
    s_ok = np.array([offsets[s] is not None and bool(is_max[s]) for s in s_list], dtype=bool)
    e_ok = np.array([offsets[e] is not None for e in e_list], dtype=bool)
    span = ends[None, :] - starts[:, None]
    valid = s_ok[:, None] & e_ok[None, :] & (span >= 0) & (span + 1 <= max_answer_length)
    rows, cols = np.nonzero(valid)  # row-major: the original's nested loops
    if not len(rows):
        return None
    sl = s_log[starts].astype(np.float64)[rows]
    el = e_log[ends].astype(np.float64)[cols]
    char_start = np.array([offsets[s][0] if offsets[s] is not None else 0 for s in s_list], dtype=np.int64)[rows]
    char_end = np.array([offsets[e][1] if offsets[e] is not None else 0 for e in e_list], dtype=np.int64)[cols]
    return sl + el, sl, el, char_start, char_end


def postprocess_ref(examples: Sequence[SquadExample], features: Sequence[SquadFeature],
                    start_logits: Sequence[np.ndarray], end_logits: Sequence[np.ndarray], *,
                    n_best_size: int = 20, max_answer_length: int = 30
                    ) -> tuple[dict[str, str], dict[str, list[dict]]]:
    """``postprocess`` as original BERT's loops over start and end candidates: the oracle of its
    vectorised search."""
    by_example: dict[int, list[int]] = {}
    for fi, feature in enumerate(features):
        by_example.setdefault(feature.example_index, []).append(fi)
    predictions, nbest = {}, {}
    for ex_index, ex in enumerate(examples):
        candidates = []  # (score, start_logit, end_logit, char_start, char_end)
        for fi in by_example.get(ex_index, []):
            feature, s_log, e_log = features[fi], start_logits[fi], end_logits[fi]
            offsets, is_max = feature.token_offsets, feature.token_is_max_context
            for s in _top_indices(s_log, n_best_size):
                if offsets[s] is None or not is_max[s]:
                    continue
                for e in _top_indices(e_log, n_best_size):
                    if offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                        continue
                    sl, el = float(s_log[s]), float(e_log[e])
                    candidates.append((sl + el, sl, el, offsets[s][0], offsets[e][1]))
        candidates.sort(key=lambda c: c[0], reverse=True)  # stable, as the original's sorted()
        nbest[ex.qid] = _nbest(ex.context, (c[1:] for c in candidates), n_best_size)
        predictions[ex.qid] = nbest[ex.qid][0]["text"]
    return predictions, nbest


def _write_json_atomic(obj, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def nbest_path(out_path: str | Path) -> Path:
    """Where the n-best file of predictions ``out_path`` goes: ``nbest_`` + its name, beside it
    (``predictions.json`` -> ``nbest_predictions.json``, as original BERT)."""
    out_path = Path(out_path)
    return out_path.with_name(f"nbest_{out_path.name}")


def write_predictions(predictions: dict[str, str], nbest: dict[str, list[dict]],
                      out_path: str | Path) -> None:
    """Write ``predictions`` to ``out_path`` (the official evaluate script's input) and ``nbest`` to
    ``nbest_path(out_path)``; each through a temporary file and a rename."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(nbest, nbest_path(out_path))
    _write_json_atomic(predictions, out_path)
