#!/usr/bin/env bash
# The serving figures on one GPU in one command (about 560 s of a 600 s limit): random BERT-Large,
# fp16 and fp8, one and eight questions per request, the shared model process at 8, 12 and 16
# workers, each rate's model-process CPU beside the total, and the HF baseline in the same run.
#
#   bash benchmarks/device_serve.sh COMMIT [DATA]
#
# COMMIT: the commit being run (the device's .git may be stale); DATA: SQuAD v1.1 dev json
# (default .carry/data/dev-v1.1.json). Writes serve_load.json, serve_load_p99.png and servers.log
# under $OUT/serve (three files: the copy back takes at most eight). serve's Python packages
# missing on the device come as wheels in .whl/ (loadgen, fastapi, starlette, uvicorn, pydantic and
# pydantic-core, httptools, opentelemetry-api, typing-extensions, typing-inspection,
# annotated-types, annotated-doc, anyio; the device has aiohttp), installed into /tmp/site.
set -euo pipefail
commit=${1:?usage: device_serve.sh COMMIT [DATA]}
data=${2:-.carry/data/dev-v1.1.json}
out=${OUT:?OUT is the folder whose files come back}/serve
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1
# fp8 at the rates where requests of eight approach its engine's 5,508 questions/s (80%: 4,406);
# one question per request with more workers, to find whether the workers or the model process
# run out first (model_process_cpu_cores per rate).
python3 benchmarks/serve_load.py --random large --data "$data" --out "$out" --commit "$commit" \
  --sweep fp8/w8/k8=4000,4400,4600,4800 \
  --sweep fp8/w16/k1=3200,3600,4000,4400 \
  --sweep fp16/w12/k1=3200,3600,4000 \
  --sweep fp16/w8/k1=3200,3600 \
  --baseline-rates 5,10,20 --duration-s 8 --grace-s 4 --processes 4 --budget-s 540
