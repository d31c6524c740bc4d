#!/usr/bin/env bash
# npm run bench [-- --size 4G --only REGEX]: the upload benchmark (see docs/performance.md).
# npm run bench:nbdkit [-- --size 1G]: NBD overhead against nbdkit's file plugin.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/node-env.sh
bash scripts/ensure-deps.sh
which="${BENCH:-upload}"
case "$which" in
  upload) exec node dist/bench/upload-bench.js "$@" ;;
  nbdkit) exec node dist/bench/nbdkit-compare.js "$@" ;;
  *) echo "unknown BENCH=$which" >&2; exit 2 ;;
esac
