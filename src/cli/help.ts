/**
 * --help, made from the option table (option-table.ts) in the help format of every command
 * (src/core/command-line.ts). One line per option, never wrapped, so
 * that the README's options tables can be checked against it line by line.
 */
import { formatHelp } from '../core/command-line';
import { GROUP_TITLES, OPTIONS, PLUGIN_PARAMETERS, UNSUPPORTED_NBDKIT_OPTIONS, optionLabel, type OptionGroup } from './option-table';

const USAGE = [
  'imageio-nbd [OPTIONS] URL',
  'imageio-nbd [OPTIONS] [python [script=]PLUGIN.py] url=URL [size=N] [cafile=F] [insecure=true] [is_ovirt_host=true]',
  'imageio-nbd --engine API-URL --username U --password-file F (--disk-id ID | --create-disk --storage-domain SD --size N) --run CMD',
  'imageio-nbd imageio-server --image FILE [...]   (a built-in imageio-compatible server; --help for its options)',
  'imageio-nbd engine-server [--hosts N] [...]      (a fake oVirt engine for tests and demos; --help for its options)',
  'imageio-nbd verify FILE URL                       (compare a local image with imageio\'s checksum of the transfer)',
];

const DESCRIPTION = `Serves URL as an NBD export, in the manner of nbdkit. URL is an oVirt imageio transfer URL
(https://HOST:54322/images/TICKET, or http://...), a disk image (a path, or file:///absolute/path),
or memory:SIZE (e.g. memory:1G). By default it listens on TCP 127.0.0.1:10809 and detaches once listening.`;

/** The main command's exit statuses (README "Durability and failures" says the same). */
export const EXIT_STATUS: ReadonlyArray<readonly [string, string]> = [
  ['0', 'the --run command succeeded (or the server was stopped by a signal, or its -s client left) and every write was flushed'],
  ['1', 'a failure to start, or written data that could not be sent and flushed'],
  ['N', 'the --run command failed with status N'],
  ['128+N', 'interrupted by signal N during --run (130: SIGINT), or the --run command was killed by it'],
];

export function helpText(): string {
  return formatHelp({
    usage: USAGE,
    description: DESCRIPTION,
    sections: [
      ...(Object.keys(GROUP_TITLES) as OptionGroup[]).map((group) => ({
        title: GROUP_TITLES[group],
        rows: OPTIONS.filter((o) => o.group === group).map((o) => [optionLabel(o), o.describe] as const),
      })),
      { title: "virt-v2v's rhv-upload plugin parameters:", rows: PLUGIN_PARAMETERS.map((p) => [p.label, p.describe] as const) },
    ],
    notes: [`nbdkit options that are refused with a reason: ${UNSUPPORTED_NBDKIT_OPTIONS.map((u) => (u.short ? `-${u.short}/` : '') + `--${u.name}`).join(', ')}.`],
    exitStatus: EXIT_STATUS,
  });
}
