/**
 * Answers to the questions tools ask nbdkit before running it, in nbdkit's format, so that
 * imageio-nbd can stand in for nbdkit. virt-v2v (lib/nbdkit.ml, output_rhv_upload.ml) runs:
 *   nbdkit --version                        exit status only
 *   nbdkit --dump-config                    key=value lines: version=MAJOR.MINOR.RELEASE (>= 1.22.0
 *                                           wanted), selinux= (must not be "no" on SELinux hosts)
 *   nbdkit python SCRIPT --dump-plugin      exit status only
 * and scripts probe options with `nbdkit --long-options | grep '^--name$'`.
 */
import * as os from 'node:os';
import * as path from 'node:path';
import { VERSION } from '../core/version';
import { longOptionNames, shortOptionNames } from './option-table';

/**
 * The nbdkit release whose command line and behaviour imageio-nbd follows: --dump-config's
 * version=, which callers compare against the nbdkit they need.
 */
export const NBDKIT_COMPAT_VERSION = '1.32.0';

const HOST_CPU: Record<string, string> = { x64: 'x86_64', arm64: 'aarch64', ppc64: 'powerpc64le', s390x: 's390x', ia32: 'i686' };

/** `--dump-config`: sorted key=value lines, as nbdkit prints them. */
export function dumpConfig(binary: string): string {
  const [major, minor] = NBDKIT_COMPAT_VERSION.split('.');
  const facts: Record<string, string> = {
    binary,
    bindir: path.dirname(binary),
    // nbdkit's key: --exit-with-parent works here.
    exit_with_parent: 'yes',
    host_cpu: HOST_CPU[os.arch()] ?? os.arch(),
    host_os: `${os.platform()}-gnu`,
    imageio_nbd_version: VERSION,
    name: 'imageio-nbd',
    // --selinux-label is accepted, so callers on SELinux hosts may pass it (virt-v2v refuses
    // selinux=no there). The socket keeps its directory's label; virt-v2v relabels it itself.
    selinux: 'yes',
    // No NBD over TLS (--tls is refused).
    tls: 'no',
    version: NBDKIT_COMPAT_VERSION,
    version_major: major,
    version_minor: minor,
  };
  return Object.keys(facts)
    .sort()
    .map((k) => `${k}=${facts[k]}`)
    .join('\n');
}

/** `[PLUGIN] --dump-plugin`: what nbdkit prints for a plugin; "python" for virt-v2v's probe. */
export function dumpPlugin(binary: string, plugin = 'imageio'): string {
  const lines = [
    `path=${binary}`,
    `name=${plugin}`,
    `version=${NBDKIT_COMPAT_VERSION}`,
    'api_version=2',
    'max_thread_model=parallel',
    'thread_model=parallel',
    'errno_is_preserved=1',
    `magic_config_key=${plugin === 'python' ? 'script' : 'url'}`,
    ...['has_get_size', 'has_can_write', 'has_can_flush', 'has_can_fua', 'has_can_zero', 'has_can_fast_zero', 'has_can_extents',
      'has_can_multi_conn', 'has_pread', 'has_pwrite', 'has_flush', 'has_zero', 'has_extents'].map((k) => `${k}=1`),
    `imageio_nbd_version=${VERSION}`,
  ];
  return lines.join('\n');
}

/** `--long-options`: one "--name" a line, every spelling the parser accepts. */
export function longOptions(): string {
  return longOptionNames().map((n) => `--${n}`).join('\n');
}

/** `--short-options`: one "-x" a line. */
export function shortOptions(): string {
  return shortOptionNames().map((n) => `-${n}`).join('\n');
}
