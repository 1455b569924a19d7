"""The SQuAD v1.1 dev workload: features/s of bertrt (packed, token-budget batches, sorted by
length) against Hugging Face peers (padded to 384), each run once untimed and once timed."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from bertrt.harness.peers import BERTRT, hf_call, hf_model, peer_runner
from bertrt.harness.timing import synchronize
from bertrt.packed import PackedBatch, pack_sequences, pad_sequences


@dataclasses.dataclass
class WorkloadRow:
    """Throughput of one system on the SQuAD features."""

    system: str
    features: int
    tokens: int              # real tokens in all features
    computed_tokens: int     # tokens the system computed (padding included)
    batches: int
    seconds: float
    max_abs_diff: float | None = None  # vs bertrt's logits on the first batch of features

    @property
    def features_per_s(self) -> float:
        return self.features / self.seconds if self.seconds > 0 else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "features_per_s": self.features_per_s}


def squad_features(data: str | Path, tokenizer, *, max_features: int | None = None, progress: bool = True):
    """SQuAD dev features (max_seq_length 384, doc_stride 128, max_query_length 64)."""
    from bertrt.tasks.squad import FeatureConfig, make_features, read_squad

    examples = read_squad(data)
    if max_features:
        examples = examples[:max_features]  # each example gives at least one feature
    features = make_features(examples, tokenizer, FeatureConfig(), progress=progress)
    return features[:max_features] if max_features else features


def packed_batches(features, *, max_batch: int, max_tokens: int) -> list[list[int]]:
    """Indices of features sorted by length, cut greedily into batches within both limits."""
    order = sorted(range(len(features)), key=lambda i: len(features[i].input_ids))
    batches, current, tokens = [], [], 0
    for i in order:
        n = len(features[i].input_ids)
        if current and (len(current) == max_batch or tokens + n > max_tokens):
            batches.append(current)
            current, tokens = [], 0
        current.append(i)
        tokens += n
    if current:
        batches.append(current)
    return batches


def _packed(features, indices: Sequence[int]) -> PackedBatch:
    return pack_sequences([features[i].input_ids for i in indices], [features[i].token_type_ids for i in indices])


def _padded(features, indices: Sequence[int], batch: int, seq: int, device) -> tuple[torch.Tensor, ...]:
    """(batch, seq) ids, types, mask for these features; missing rows are one-token dummies."""
    ids, mask, types = pad_sequences([features[i].input_ids for i in indices],
                                     [features[i].token_type_ids for i in indices], width=seq, rows=batch)
    mask[len(indices):, 0] = 1
    return ids.to(device), types.to(device), mask.to(device)


def _timed_pass(calls: Sequence[Callable[[], object]], device: torch.device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    for call in calls:
        call()
    synchronize(device)
    return time.perf_counter() - t0


def squad_workload(engine, features, *, peers: Sequence[str] = ("hf",), peer_batch: int = 64, seq: int = 384,
                   progress: bool = True, errors: list[dict] | None = None) -> list[WorkloadRow]:
    """Features/s of bertrt (packed, token-budget batches) and of each peer (padded to ``seq``).

    Each system runs the whole set once untimed (capturing graphs) and once timed.
    """
    from tqdm import tqdm

    errors = [] if errors is None else errors
    device = engine.device
    real_tokens = sum(len(f.input_ids) for f in features)
    rows: list[WorkloadRow] = []
    with torch.inference_mode():
        groups = packed_batches(features, max_batch=engine.max_batch, max_tokens=engine.max_tokens)
        batches = [_packed(features, g).to(device) for g in tqdm(groups, desc="stage bertrt", disable=not progress)]
        calls = [lambda b=b: engine.qa_logits(b) for b in batches]
        _timed_pass(calls, device)
        seconds = _timed_pass(calls, device)
        rows.append(WorkloadRow(BERTRT, len(features), real_tokens, real_tokens, len(batches), seconds))
        first = list(range(min(peer_batch, len(features))))
        reference = engine.qa_logits(_packed(features, first).to(device))
        if not peers:
            return rows
        order = sorted(range(len(features)), key=lambda i: len(features[i].input_ids))
        chunks = [order[i:i + peer_batch] for i in range(0, len(order), peer_batch)]
        padded = [_padded(features, c, peer_batch, seq, device) for c in tqdm(chunks, desc="stage peers",
                                                                              disable=not progress)]
        try:
            model = hf_model(engine)
        except Exception as exc:
            errors.append({"system": ",".join(peers), "workload": "squad", "error": f"{type(exc).__name__}: {exc}"})
            return rows
        for name in peers:
            keep = None
            try:
                if name == "hf":
                    calls = [lambda p=p: hf_call(model, *p[:2], p[2]) for p in padded]
                elif name == "hf-graph":
                    static = [t.clone() for t in padded[0]]
                    replay, keep = peer_runner("hf-graph", model, static[0], static[1], static[2])

                    def step(p, static=static, replay=replay):
                        for dst, src in zip(static, p):
                            dst.copy_(src)
                        replay()

                    calls = [lambda p=p: step(p) for p in padded]
                else:
                    raise ValueError(f"peer {name!r} is not run on the SQuAD workload (hf and hf-graph are)")
                _timed_pass(calls, device)
                seconds = _timed_pass(calls, device)
                check = _padded(features, first, peer_batch, seq, device)
                out = hf_call(model, *check[:2], check[2])
                real = check[2][: len(first)].bool()
                theirs = torch.stack([out.start_logits, out.end_logits], dim=-1)[: len(first)][real]
                diff = float((theirs.float() - reference).abs().max())
                rows.append(WorkloadRow(name, len(features), real_tokens, len(features) * seq, len(chunks), seconds,
                                        diff))
            except Exception as exc:
                errors.append({"system": name, "workload": "squad", "error": f"{type(exc).__name__}: {exc}"})
            finally:
                del keep
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return rows


def format_workload(rows: Sequence[WorkloadRow]) -> str:
    ours = next((r.features_per_s for r in rows if r.system == BERTRT), None)
    lines = [f"{'system':<9} {'features':>8} {'computed tokens':>15} {'seconds':>8} {'features/s':>11} "
             f"{'bertrt x':>8} {'max |diff|':>10}"]
    for r in rows:
        speedup = f"{ours / r.features_per_s:.2f}x" if ours and r.features_per_s else "-"
        diff = "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.2e}"
        lines.append(f"{r.system:<9} {r.features:>8} {r.computed_tokens:>15} {r.seconds:>8.2f} "
                     f"{r.features_per_s:>11.1f} {speedup:>8} {diff:>10}")
    return "\n".join(lines)


def workload_from_report(report: dict[str, Any]) -> list[WorkloadRow]:
    fields = {f.name for f in dataclasses.fields(WorkloadRow)}
    return [WorkloadRow(**{k: v for k, v in r.items() if k in fields})
            for r in report.get("workload", {}).get("rows", [])]
