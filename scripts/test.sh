#!/usr/bin/env bash
# Runs every test (unit, protocol, and end to end with qemu-img, nbdcopy, nbdinfo, nbdsh) and
# ends with the line "N passed, N failed". Exit status is jest's, or 1 if it produced no results.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/node-env.sh || { echo "0 passed, 1 failed"; exit 1; }
bash scripts/ensure-deps.sh || { echo "0 passed, 1 failed"; exit 1; }
results=$(mktemp /tmp/jest-results.XXXXXX.json)
trap 'rm -f "$results"' EXIT
npx jest --ci --json --outputFile="$results" "$@"
rc=$?
node -e '
const fs = require("fs");
let r;
try { r = JSON.parse(fs.readFileSync(process.argv[1], "utf8")); } catch { console.log("0 passed, 1 failed"); process.exit(1); }
const failed = r.numFailedTests + r.numRuntimeErrorTestSuites;
console.log(`${r.numPassedTests} passed, ${failed} failed`);
if (r.numTotalTests === 0 || failed > 0) process.exit(1);
' "$results"
summary_rc=$?
[ "$rc" -ne 0 ] || rc=$summary_rc
exit $rc
