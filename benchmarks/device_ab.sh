#!/usr/bin/env bash
# Latency of several source trees on the same GPU in one device call, each in its own process:
#   bash benchmarks/device_ab.sh SRC_DIR [SRC_DIR ...]     (e.g. src .carry/src_attention-unmasked-blocks)
# For each: `bertrt perf --model large` (a random-weight engine built by that source) at
# b 1 8 32 x s 128 384 with the hf-graph peer as a same-machine control, 500 iterations;
# writes $OUT/ab_<dir>.json. Running the list twice (A B A B) shows the run-to-run noise.
# Each report records the commit in SRC_DIR/COMMIT (written by scripts/carry_source.sh), else
# $BERTRT_COMMIT: the device's copy of .git is stale.
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out"
for src in "$@"; do
  name=$(echo "$src" | tr '/.' '__')
  echo "== $src"
  commit=$( [ -f "$src/COMMIT" ] && cat "$src/COMMIT" || echo "${BERTRT_COMMIT:-}" )
  BERTRT_COMMIT=$commit PYTHONPATH=$src timeout 150 python3 -m bertrt.cli perf --model large -b 1 8 32 -s 128 384 --iterations 500 \
    --warmup 50 --peers hf-graph --no-progress --json "$out/ab_$name.json" 2>&1 | grep -E "^ +(128|384) "
done
