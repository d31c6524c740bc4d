#!/usr/bin/env bash
# Back up (download) an imageio disk: nbdinfo --map shows which parts hold data (imageio's
# extents, served as NBD base:allocation), and nbdcopy copies only those, leaving holes.
#   examples/backup-download.sh TRANSFER_URL BACKUP.raw
set -euo pipefail
url=$1 out=$2
here=$(dirname "$0")
export OUT="$out"
node "$here/../bin/imageio-nbd.js" --readonly --run '
  nbdinfo --map "$uri"
  nbdcopy "$uri" "$OUT"
' "$url"
