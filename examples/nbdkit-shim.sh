#!/bin/sh
# nbdkit in front of imageio-nbd: installed in place of nbdkit, it hands virt-v2v's oVirt
# upload (nbdkit's python plugin running rhv-upload-plugin.py, or ovirt-upload-plugin.py in
# newer virt-v2v) to imageio-nbd, and every other invocation to the real nbdkit, unchanged.
# virt-v2v's probes of that invocation (python SCRIPT --dump-plugin) are answered by
# imageio-nbd; --version and --dump-config by the real nbdkit (by imageio-nbd if there is none).
#
# Install with a diversion, so that package upgrades keep the real nbdkit beside it:
#   dpkg-divert --local --rename --divert /usr/bin/nbdkit.distrib --add /usr/bin/nbdkit
#   install -m 755 "$(npm root -g)/imageio-nbd/examples/nbdkit-shim.sh" /usr/bin/nbdkit
# Undo:
#   rm /usr/bin/nbdkit && dpkg-divert --local --rename --remove /usr/bin/nbdkit
#
# NBDKIT_REAL (default /usr/bin/nbdkit.distrib) names the real nbdkit, IMAGEIO_NBD (default
# imageio-nbd) the command that serves the upload. The installed imageio-nbd command runs on
# the Node.js that came with it, so the machine's own Node (Debian 12's is 18) does not matter.
real=${NBDKIT_REAL:-/usr/bin/nbdkit.distrib}
imageio_nbd=${IMAGEIO_NBD:-imageio-nbd}

for arg in "$@"; do
  case $arg in
    *rhv-upload-plugin.py | *ovirt-upload-plugin.py)
      # shellcheck disable=SC2086 # IMAGEIO_NBD may be a command with arguments
      exec $imageio_nbd "$@" ;;
  esac
done
if [ -x "$real" ]; then
  exec "$real" "$@"
fi
# shellcheck disable=SC2086
exec $imageio_nbd "$@"
