#!/usr/bin/env bash
# Back up (download) an imageio disk: nbdinfo --map shows which parts hold data (imageio's
# extents, served as NBD base:allocation), and nbdcopy copies only those, leaving holes.
#   examples/backup-download.sh TRANSFER_URL BACKUP.raw
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: $0 TRANSFER_URL BACKUP.raw" >&2
  exit 2
fi
url=$1 out=$2
export OUT="$out"
imageio-nbd --readonly --run '
  nbdinfo --map "$uri"
  nbdcopy "$uri" "$OUT"
' "$url"
