#!/usr/bin/env bash
# How virt-v2v -o rhv-upload drives its nbdkit, with imageio-nbd in its place: start the
# server with the python plugin's key=value parameters, wait for the pidfile, copy with
# nbdcopy as virt-v2v does, then stop the server (SIGTERM flushes and closes every HTTP
# connection so oVirt can finalize the transfer at once).
#   examples/virt-v2v-style.sh DISK.raw TRANSFER_URL
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: $0 DISK.raw TRANSFER_URL" >&2
  exit 2
fi
disk=$1 url=$2
size=$(stat -c %s "$disk")
dir=$(mktemp -d)
pid=
trap '[ -z "$pid" ] || kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
imageio-nbd --exit-with-parent --foreground --pidfile "$dir/pid" \
  --unix "$dir/sock" --threads 8 -D nbdkit.backend.datapath=0 \
  url="$url" size="$size" insecure=true &
pid=$!
# virt-v2v waits up to 30 s for the pidfile; stop at once if imageio-nbd has exited.
for _ in $(seq 300); do
  [ -s "$dir/pid" ] && break
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid" && status=0 || status=$?
    pid=
    echo "imageio-nbd exited (status $status) before it was ready" >&2
    exit 1
  fi
  sleep 0.1
done
[ -s "$dir/pid" ] || { echo "imageio-nbd did not start within 30 s" >&2; exit 1; }
nbdcopy "$disk" "nbd+unix:///?socket=$dir/sock" --request-size=4194304 --requests=16 --flush
kill -TERM "$pid"
wait "$pid"
