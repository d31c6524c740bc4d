#!/usr/bin/env bash
# A pipeline from an NBD source into imageio: nbdkit serves a source (here a generated sparse
# random disk of the transfer's size), and nbdcopy copies it into imageio-nbd, which serves
# the transfer. Both servers run captive (--run), so everything stops when the copy ends.
#   examples/nbdcopy-from-nbdkit.sh TRANSFER_URL SIZE [SEED]
set -euo pipefail
url=$1 size=$2 seed=${3:-1}
here=$(dirname "$0")
export IMAGEIO_NBD="node $here/../bin/imageio-nbd.js" TRANSFER_URL="$url"
# Outer: nbdkit's source as $uri; inner: imageio-nbd's export, whose $uri nbdcopy writes to.
nbdkit -U - sparse-random size="$size" seed="$seed" percent=20 --run '
  src="$uri"
  $IMAGEIO_NBD --run "nbdcopy --flush \"$src\" \"\$uri\"" "$TRANSFER_URL"
'
