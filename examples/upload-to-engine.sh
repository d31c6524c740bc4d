#!/usr/bin/env bash
# Upload a local disk image (raw or qcow2) into a new oVirt disk, in one command.
#   examples/upload-to-engine.sh IMAGE ENGINE-API-URL STORAGE-DOMAIN [imageio-nbd options...]
# imageio-nbd logs in to the engine, creates the disk (as big as the image's virtual size,
# qcow2 images as cow disks, which are always thin, named after the file), creates the image
# transfer on this host or the least busy one (or lets the engine choose), lets qemu-img write
# the guest data through it, and finalizes the transfer; stdout then has disk-id=ID. If
# anything fails the transfer is cancelled and the new disk removed; a killed run's transfer
# is cancelled by the engine after the inactivity timeout (timeout_policy cancel).
# Environment: OVIRT_PASSWORD_FILE (required: first line is the password),
#              OVIRT_USERNAME (default admin@internal), OVIRT_CAFILE (the engine's CA, PEM).
set -euo pipefail
usage() {
  echo "usage: $0 IMAGE ENGINE-API-URL STORAGE-DOMAIN [imageio-nbd options...]" >&2
  echo "  e.g. OVIRT_PASSWORD_FILE=pw OVIRT_CAFILE=ca.pem $0 disk.qcow2 https://engine.example.com/ovirt-engine/api data" >&2
  exit 2
}
[ $# -ge 3 ] || usage
[ -n "${OVIRT_PASSWORD_FILE:-}" ] || { echo "$0: set OVIRT_PASSWORD_FILE" >&2; usage; }
image=$1 engine=$2 sd=$3; shift 3
here=$(dirname "$0")

# The image's format and virtual size, from qemu-img.
read -r format size < <(qemu-img info --output=json "$image" |
  node -e 'const i = JSON.parse(require("fs").readFileSync(0, "utf8")); console.log(i.format, i["virtual-size"])')
case $format in
  raw) disk_format=raw ;;
  qcow2) disk_format=cow ;;
  *) echo "$0: $image is $format; expected raw or qcow2" >&2; exit 1 ;;
esac

export IMAGE="$image" FORMAT="$format"
exec node "$here/../bin/imageio-nbd.js" \
  --engine "$engine" --username "${OVIRT_USERNAME:-admin@internal}" --password-file "$OVIRT_PASSWORD_FILE" \
  ${OVIRT_CAFILE:+--cafile "$OVIRT_CAFILE"} \
  --create-disk --storage-domain "$sd" --size "$size" --disk-format "$disk_format" --disk-name "$(basename "$image")" \
  "$@" \
  --run 'qemu-img convert -n -f "$FORMAT" -O raw "$IMAGE" "$uri"'
