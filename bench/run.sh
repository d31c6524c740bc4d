#!/usr/bin/env bash
# npm run bench [-- --quick | --size 4G --repeat 3 --only REGEX --json FILE ...]: the performance
#   benchmark (upload, block-size hints, download, backpressure, start-up; see docs/performance.md,
#   and `npm run bench -- --help` for the options).
# npm run bench:nbdkit [-- --size 1G]: NBD overhead against nbdkit's file plugin.
# npm run bench:floor [-- --size 2G]: the CPU floor of forwarding bytes through one Node process.
# BENCH=jobs npm run bench [-- --size 256M --host-rate 200M --only cost|balance]: --jobs, many
#   transfers in one process and balancing over hosts (bench/jobs-bench.ts).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/node-env.sh
bash scripts/ensure-deps.sh
# imageio-nbd's CPU and peak RSS are measured from outside with GNU time when it is there.
[ -x /usr/bin/time ] || echo "bench: /usr/bin/time is missing (Debian package 'time'); falling back to an in-process rusage wrapper" >&2
which="${BENCH:-all}"
case "$which" in
  all|upload) exec node dist/bench/bench.js "$@" ;;
  nbdkit) exec node dist/bench/nbdkit-compare.js "$@" ;;
  floor) exec node dist/bench/forwarder-floor.js "$@" ;;
  jobs) exec node dist/bench/jobs-bench.js "$@" ;;
  *) echo "unknown BENCH=$which" >&2; exit 2 ;;
esac
