"""Latency and throughput of an engine and of its peers, measured in the same process.

Two measurements:

- **the table**: for every (batch b, sequence length s), a full batch of b sequences of s tokens
  run ``iterations`` times after ``warmup`` untimed runs; each iteration is timed on its own (CUDA
  events on the GPU, synchronised; ``perf_counter`` on the CPU) and reported as avg/p50/p95/p99 ms.
- **the SQuAD workload**: the real dev set cut into features, sorted by length, run packed in
  token-budget batches by bertrt and padded to 384 in fixed-size batches by the peers; reported
  as features/s. Tokenisation is not timed; inputs are staged on the device beforehand.

The peers are built from the engine's own weights, in its precision (``harness.peers``); the
SQuAD workload is ``harness.workload``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bertrt.harness.peers import BERTRT, PEERS, hf_model, peer_runner
from bertrt.harness.timing import synchronize, time_iterations
from bertrt.packed import pack_padded

__all__ = ["BERTRT", "PEERS", "PerfRow", "environment", "engine_summary", "format_table", "source_commit", "latency_row", "perf_report",
           "plot", "rows_from_report", "run_table", "synchronize", "synthetic_inputs", "time_iterations", "write_json"]


@dataclasses.dataclass
class PerfRow:
    """Latency of one system on full batches of ``batch`` sequences of ``seq`` tokens (ms per batch)."""

    system: str
    batch: int
    seq: int
    iterations: int
    avg_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def sequences_per_s(self) -> float:
        return self.batch * 1000.0 / self.avg_ms

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "sequences_per_s": self.sequences_per_s}


# --------------------------------------------------------------------------------------------
# Timing


def latency_row(system: str, batch: int, seq: int, times_ms: Sequence[float]) -> PerfRow:
    t = np.asarray(times_ms, dtype=np.float64)
    p50, p95, p99 = np.percentile(t, [50, 95, 99])
    return PerfRow(system, batch, seq, len(t), float(t.mean()), float(p50), float(p95), float(p99))


# --------------------------------------------------------------------------------------------
# Inputs and peers


def synthetic_inputs(batch: int, seq: int, vocab_size: int, *, device: torch.device, seed: int = 0,
                     type_vocab_size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, seq) int64 ids and token types (first quarter 0 = question, rest 1 = passage; all 0
    for a model with fewer than two token types, RoBERTa's one or DistilBERT's none)."""
    gen = torch.Generator().manual_seed(seed)
    low = 1000 if vocab_size > 2000 else 1  # ordinary WordPieces of a BERT vocab, past the specials
    ids = torch.randint(low, vocab_size, (batch, seq), generator=gen)
    ids[:, 0] = 101 if vocab_size > 2000 else 0  # [CLS]
    types = torch.ones(batch, seq, dtype=torch.long)
    types[:, : max(1, seq // 4)] = 0
    if type_vocab_size < 2:
        types.zero_()
    return ids.to(device), types.to(device)


# --------------------------------------------------------------------------------------------
# The table


def run_table(engine, *, batches: Sequence[int], seqs: Sequence[int], iterations: int, warmup: int,
              peers: Sequence[str] = ("hf",), progress: bool = True, errors: list[dict] | None = None,
              model: torch.nn.Module | None = None) -> list[PerfRow]:
    """Latency rows of bertrt and each peer for every (seq, batch); failures go to ``errors``.

    ``model`` is the peers' Hugging Face model (default ``hf_model(engine)``, BERT's own class on the
    engine's weights); another family's peer is its own transformers model, on the same weights.
    """
    from tqdm import tqdm

    errors = [] if errors is None else errors
    device = engine.device
    rows: list[PerfRow] = []
    compiled: dict = {}
    if peers and model is None:
        try:
            model = hf_model(engine)
        except Exception as exc:  # a missing transformers must not lose the bertrt rows
            errors.append({"system": ",".join(peers), "error": f"{type(exc).__name__}: {exc}"})
            peers = ()
    shapes = [(s, b) for s in seqs for b in batches]
    bar = tqdm(total=len(shapes) * (1 + len(peers)), desc="perf", unit="row", disable=not progress)
    for seq, batch in shapes:
        ids, types = synthetic_inputs(batch, seq, engine.config.vocab_size, device=device,
                                      type_vocab_size=engine.config.type_vocab_size)
        for system in (BERTRT, *peers):
            bar.set_postfix_str(f"{system} b{batch} s{seq}")
            keep = None
            try:
                if seq > engine.max_seq_length:
                    raise ValueError(f"s={seq} exceeds the engine's max_seq_length {engine.max_seq_length}")
                if system == BERTRT:
                    packed = pack_padded(ids, torch.ones_like(ids), types)
                    fn = lambda packed=packed: engine.qa_logits(packed)  # noqa: E731
                else:
                    fn, keep = peer_runner(system, model, ids, types, compiled=compiled)
                times = time_iterations(fn, iterations=iterations, warmup=warmup, device=device)
                rows.append(latency_row(system, batch, seq, times))
            except Exception as exc:
                errors.append({"system": system, "batch": batch, "seq": seq, "error": f"{type(exc).__name__}: {exc}"})
            finally:
                del keep
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            bar.update()
    bar.close()
    return rows


def format_table(rows: Sequence[PerfRow]) -> str:
    """Plain-text table, one line per row, with each peer's latency as a ratio of bertrt's."""
    ours = {(r.batch, r.seq): r.avg_ms for r in rows if r.system == BERTRT}
    lines = [f"{'seq':>5} {'batch':>5} {'system':<9} {'avg ms':>9} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} "
             f"{'seq/s':>10} {'vs bertrt':>9}"]
    for r in sorted(rows, key=lambda r: (r.seq, r.batch, r.system != BERTRT)):
        base = ours.get((r.batch, r.seq))
        ratio = f"{r.avg_ms / base:.2f}x" if base else "-"
        lines.append(f"{r.seq:>5} {r.batch:>5} {r.system:<9} {r.avg_ms:>9.3f} {r.p50_ms:>9.3f} {r.p95_ms:>9.3f} "
                     f"{r.p99_ms:>9.3f} {r.sequences_per_s:>10.1f} {ratio:>9}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Report


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _driver() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


COMMIT_VARIABLE = "BERTRT_COMMIT"


def source_commit(commit: str | None = None) -> tuple[str | None, str]:
    """(the commit the measured source is at, where that was read).

    A copied tree (a device that receives the working tree, not the repository) carries a stale
    ``.git``, so the commit is taken from ``commit``, then the ``BERTRT_COMMIT`` variable, and only
    then from ``git rev-parse HEAD`` beside the package.
    """
    if commit:
        return commit, "argument"
    if os.environ.get(COMMIT_VARIABLE):
        return os.environ[COMMIT_VARIABLE], COMMIT_VARIABLE
    return _git("rev-parse", "HEAD"), "git"


def environment(device: torch.device, *, commit: str | None = None) -> dict[str, Any]:
    """Where and with what the numbers were measured.

    Args:
        device: the device that ran them.
        commit: the source's commit (see ``source_commit``); default ``BERTRT_COMMIT``, else git.
    """
    from bertrt import __version__

    is_cuda = device.type == "cuda"
    sha, sha_from = source_commit(commit)
    status = _git("status", "--porcelain") if sha_from == "git" else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if is_cuda else platform.processor() or platform.machine(),
        "compute_capability": list(torch.cuda.get_device_capability(device)) if is_cuda else None,
        "driver": _driver() if is_cuda else None,
        "cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "bertrt": __version__,
        "git_sha": sha,
        "git_sha_from": sha_from,
        "git_dirty": bool(status) if status is not None else None,
    }


def engine_summary(engine) -> dict[str, Any]:
    c = engine.config
    return {"layers": c.num_hidden_layers, "hidden": c.hidden_size, "heads": c.num_attention_heads,
            "intermediate": c.intermediate_size, "precision": engine.spec.precision_name, "graphs": engine.graphs,
            "max_tokens": engine.max_tokens, "max_seq_length": engine.max_seq_length, "max_batch": engine.max_batch,
            "source": engine.spec.source,
            # What the build timed and chose per token count: two builds of one model can differ here.
            "gemm_choices": {op: {str(k): v for k, v in table.items()} for op, table in engine.spec.gemm_choices.items()}}


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    """Write the report whole or not at all (a fresh temporary sibling, then a rename)."""
    from bertrt.atomic import write_text_atomically

    return write_text_atomically(path, json.dumps(report, indent=2, allow_nan=False) + "\n")


def plot(rows: Sequence[PerfRow], path: str | Path, *, title: str = "") -> Path:
    """Latency vs batch size, one panel per sequence length, one line per system, log axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    seqs = sorted({r.seq for r in rows})
    fig, axes = plt.subplots(1, max(1, len(seqs)), figsize=(5.5 * max(1, len(seqs)), 4.2), squeeze=False)
    for ax, seq in zip(axes[0], seqs):
        for system in dict.fromkeys(r.system for r in rows):
            pts = sorted((r.batch, r.avg_ms) for r in rows if r.seq == seq and r.system == system)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=system, linewidth=2.5 if system == BERTRT else 1.5)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted({r.batch for r in rows if r.seq == seq}))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("batch size (sequences)")
        ax.set_ylabel("latency per batch (ms)")
        ax.set_title(f"seq {seq}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# Everything together (what `bertrt perf` runs)


def find_vocab(engine, vocab: str | Path | None = None) -> Path:
    """The vocab to tokenise SQuAD with: given, the engine's, or the embedded default model's.

    Random-weight engines have no vocabulary; any BERT uncased vocab of the right size will do
    for speed, since only the token counts matter.
    """
    from bertrt.weights import DEFAULT_MODEL_DIR

    for candidate in (vocab, engine.vocab_file, DEFAULT_MODEL_DIR / "vocab.txt"):
        if candidate is not None and Path(candidate).is_file():
            return Path(candidate)
    raise FileNotFoundError("the SQuAD workload needs a vocab.txt: the engine has none and the default model's is "
                            "missing; pass --vocab FILE")


def perf_report(engine, *, batches: Sequence[int], seqs: Sequence[int], iterations: int, warmup: int,
                peers: Sequence[str] = ("hf",), workload_data: str | Path | None = None,
                max_features: int | None = None, vocab: str | Path | None = None, peer_batch: int = 64,
                progress: bool = True, name: str = "") -> dict[str, Any]:
    """Run the table (and the SQuAD workload when ``workload_data`` is given); the JSON-ready report."""
    errors: list[dict] = []
    report: dict[str, Any] = {
        "kind": "bertrt-perf",
        "model": name,
        "environment": environment(engine.device),
        "engine": engine_summary(engine),
        "settings": {"batches": list(batches), "seqs": list(seqs), "iterations": iterations, "warmup": warmup,
                     "peers": list(peers), "timing": "per iteration, CUDA events + synchronize on GPU"},
    }
    rows = run_table(engine, batches=batches, seqs=seqs, iterations=iterations, warmup=warmup, peers=peers,
                     progress=progress, errors=errors) if batches and seqs else []
    report["rows"] = [r.to_json() for r in rows]
    if workload_data is not None:
        from bertrt.harness.workload import squad_features, squad_workload
        from bertrt.tokenizer import BertTokenizer

        tokenizer = BertTokenizer(find_vocab(engine, vocab), lowercase=engine.config.do_lower_case,
                                  vocab_size=engine.config.vocab_size)

        features = squad_features(workload_data, tokenizer, max_features=max_features, progress=progress)
        work = squad_workload(engine, features, peers=[p for p in peers if p != "compile"], peer_batch=peer_batch,
                              progress=progress, errors=errors)
        report["workload"] = {"name": "squad-v1.1-dev", "data": str(workload_data), "peer_batch": peer_batch,
                              "peer_padding": 384, "rows": [r.to_json() for r in work]}
    report["errors"] = errors
    return report


def rows_from_report(report: dict[str, Any]) -> list[PerfRow]:
    fields = {f.name for f in dataclasses.fields(PerfRow)}
    return [PerfRow(**{k: v for k, v in r.items() if k in fields}) for r in report.get("rows", [])]
