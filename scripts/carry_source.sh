#!/usr/bin/env bash
# Put a commit's (or branch's) src/bertrt into .carry/src_<name>, for a before/after on the device
# in one call (benchmarks/device_ab.sh): the device sees only the working tree, not git history.
#   scripts/carry_source.sh REV [NAME]      e.g. scripts/carry_source.sh attention-unmasked-blocks
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: scripts/carry_source.sh REV [NAME]}
name=${2:-$(printf '%s' "$rev" | tr -c 'A-Za-z0-9_-' '_')}
git rev-parse --verify --quiet "$rev^{commit}" > /dev/null || { echo "no such commit: $rev" >&2; exit 2; }
dest=.carry/src_$name
rm -rf "$dest" && mkdir -p "$dest"
git archive "$rev" src/bertrt | tar -x -C "$dest" --strip-components=1
rm -rf "$dest/bertrt/models"  # the default model (45 MB) is not needed for speed runs
git rev-parse "$rev^{commit}" > "$dest/COMMIT"  # what benchmarks/device_ab.sh records for this tree
echo "$dest ($(git rev-parse --short "$rev"), $(du -sh "$dest" | cut -f1))"
