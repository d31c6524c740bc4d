#!/usr/bin/env bash
# Upload a local disk image into an imageio transfer with qemu-img, the way most users do.
#   examples/upload-qemu-img.sh DISK.raw TRANSFER_URL [imageio-nbd options...]
# imageio-nbd serves the transfer on a private unix socket for exactly as long as qemu-img
# runs (--run), then sends and flushes everything and exits with qemu-img's status.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 DISK.raw TRANSFER_URL [imageio-nbd options...]" >&2
  exit 2
fi
disk=$1 url=$2; shift 2
export DISK="$disk"
exec imageio-nbd "$@" --run 'qemu-img convert -n -f raw -O raw "$DISK" "$uri"' "$url"
