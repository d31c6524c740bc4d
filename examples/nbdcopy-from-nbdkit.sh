#!/usr/bin/env bash
# A pipeline from an NBD source into imageio: nbdkit serves a source (here a generated sparse
# random disk of the transfer's size), and nbdcopy copies it into imageio-nbd, which serves
# the transfer. Both servers run captive (--run), so everything stops when the copy ends.
#   examples/nbdcopy-from-nbdkit.sh TRANSFER_URL SIZE [SEED]
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 TRANSFER_URL SIZE [SEED]" >&2
  exit 2
fi
url=$1 size=$2 seed=${3:-1}
export TRANSFER_URL="$url"
# Outer: nbdkit's source as $uri; inner: imageio-nbd's export, whose $uri nbdcopy writes to.
nbdkit -U - sparse-random size="$size" seed="$seed" percent=20 --run '
  src="$uri"
  imageio-nbd --run "nbdcopy --flush \"$src\" \"\$uri\"" "$TRANSFER_URL"
'
