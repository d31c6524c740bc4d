#!/usr/bin/env bash
# Makes a fresh machine ready: Debian's NBD tools (the real peers tests and the demo drive),
# node_modules, and the compiled dist/. Safe to run again; does only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/node-env.sh

need=()
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v nbdcopy >/dev/null || need+=(libnbd-bin)
[ -e /usr/lib/python3/dist-packages/nbd.py ] || need+=(python3-libnbd)
command -v nbdkit >/dev/null || need+=(nbdkit)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
# The packaging test installs the package with an older Node (Debian's) and runs it there.
[ -x /usr/bin/node ] || need+=(nodejs)
# script(1) gives the progress test a terminal.
command -v script >/dev/null || need+=(bsdutils)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${need[*]}; run as root or: sudo apt-get install ${need[*]}" >&2
    exit 1
  fi
  echo "installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund >&2
fi
npx tsc -p tsconfig.json
