/** virt-v2v's use of nbdkit, as a script: what the nbdkit drop-in tests run through examples/nbdkit-shim.sh. */
/**
 * What virt-v2v -o rhv-upload does with nbdkit (lib/nbdkit.ml and output/output_rhv_upload.ml):
 * probe, then start it with the python plugin's parameters, wait up to 30 s for the pidfile,
 * nbdcopy into the socket, SIGTERM. PLUGIN_FORM picks virt-v2v 2.x's "script=FILE" or the
 * older positional script.
 *
 * Run with bash -c, `nbdkit` first on PATH, and in the environment: PLUGIN (a file),
 * PLUGIN_FORM (script or positional), DIR (pidfile and socket), SIZE, URL, SRC (the disk
 * nbdcopy copies). Prints "probed: nbdkit VERSION selinux=yes" and "copied".
 */
export const VIRT_V2V = String.raw`
set -eu
nbdkit --version >/dev/null 2>&1
config=$(nbdkit --dump-config)
version=$(printf '%s\n' "$config" | sed -n 's/^version=//p')
printf '%s\n' "$version" | grep -Eq '^[0-9]+\.[0-9]+\.[0-9]+'
[ "$(printf '%s\n1.22.0\n' "$version" | sort -V | head -n1)" = 1.22.0 ] || { echo "nbdkit is not new enough: $version" >&2; exit 1; }
selinux=$(printf '%s\n' "$config" | sed -n 's/^selinux=//p')
[ "$selinux" != no ] || { echo "nbdkit was compiled without SELinux support" >&2; exit 1; }
for o in exit-with-parent foreground pidfile unix threads selinux-label; do
  nbdkit --long-options | grep -q "^--$o\$"
done
nbdkit --short-options | grep -q '^-D$'
nbdkit python "$PLUGIN" --dump-plugin >/dev/null
echo "probed: nbdkit $version selinux=$selinux"

if [ "$PLUGIN_FORM" = script ]; then plugin_args="script=$PLUGIN"; else plugin_args="$PLUGIN"; fi
LANG=C nbdkit --exit-with-parent --foreground --pidfile "$DIR/nbdkit1.pid" --unix "$DIR/out0" --threads 8 \
  --selinux-label system_u:object_r:svirt_socket_t:s0 -D nbdkit.backend.datapath=0 \
  python $plugin_args size="$SIZE" url="$URL" insecure=true &
pid=$!
i=0
while [ ! -e "$DIR/nbdkit1.pid" ]; do
  i=$((i + 1)); [ $i -le 300 ] || { echo "nbdkit did not start up" >&2; exit 1; }
  sleep 0.1
done
[ "$(cat "$DIR/nbdkit1.pid")" = "$pid" ]
nbdcopy "$SRC" "nbd+unix:///?socket=$DIR/out0" --request-size=4194304 --requests=16 --flush
kill -TERM "$pid"
wait "$pid"
echo "copied"
`;
