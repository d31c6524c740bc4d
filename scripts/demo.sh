#!/usr/bin/env bash
# The whole product end to end on a built-in default: a generated sparse disk is uploaded with
# qemu-img through imageio-nbd into the built-in imageio-compatible server, then verified
# byte for byte. Usage: npm run demo [-- SIZE]   (default 1G virtual, about a third data)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/node-env.sh
size=${1:-1G}
bash scripts/ensure-deps.sh

work=$(mktemp -d /tmp/imageio-nbd-demo.XXXXXX)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "demo: generating a $size sparse disk" >&2
node dist/sim/sparse-image.js "$work/disk.raw" "$size" > "$work/layout.json"
truncate -s "$(stat -c %s "$work/disk.raw")" "$work/target.raw"

# The built-in imageio server on TCP and on its local unix socket; its first line is the URL.
node bin/imageio-nbd.js imageio-server --image "$work/target.raw" --port 0 --unix "$work/imageio.sock" \
  > "$work/server.out" &
server_pid=$!
for _ in $(seq 100); do [ -s "$work/server.out" ] && break; sleep 0.1; done
url=$(head -n 1 "$work/server.out")
[ -n "$url" ] || { echo "demo: the imageio server did not start" >&2; exit 1; }
echo "demo: imageio server at $url" >&2

export DISK="$work/disk.raw"
start=$(date +%s%N)
node bin/imageio-nbd.js --stats="$work/stats.txt" \
  --run 'qemu-img convert -n -f raw -O raw "$DISK" "$uri"' "$url"
end=$(date +%s%N)
cat "$work/stats.txt" >&2

cmp "$work/disk.raw" "$work/target.raw"
node -e '
const l = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
const ms = (BigInt(process.argv[3]) - BigInt(process.argv[2])) / 1000000n;
const mib = (n) => (n / 1048576).toFixed(0) + " MiB";
console.log(`demo: uploaded a ${mib(l.size)} disk (${mib(l.dataBytes)} data, ${mib(l.zeroBytes)} written zeroes, ${l.extents} extents) ` +
  `with qemu-img through imageio-nbd into imageio in ${(Number(ms) / 1000).toFixed(2)} s; verified byte for byte`);
' "$work/layout.json" "$start" "$end"
