/**
 * --help, made from the option table (cli-options.ts). One line per option, never wrapped, so
 * that the README's options tables can be checked against it line by line.
 */
import { GROUP_TITLES, OPTIONS, PLUGIN_PARAMETERS, UNSUPPORTED_NBDKIT_OPTIONS, optionLabel, type OptionGroup } from './option-table';

const USAGE = `Usage: imageio-nbd [OPTIONS] URL
       imageio-nbd [OPTIONS] [python [script=]PLUGIN.py] url=URL [size=N] [cafile=F] [insecure=true] [is_ovirt_host=true]
       imageio-nbd --engine API-URL --username U --password-file F (--disk-id ID | --create-disk --storage-domain SD --size N) --run CMD
       imageio-nbd imageio-server --image FILE [...]   (a built-in imageio-compatible server; --help for its options)
       imageio-nbd engine-server [--hosts N] [...]      (a fake oVirt engine for tests and demos; --help for its options)
       imageio-nbd verify FILE URL                       (compare a local image with imageio's checksum of the transfer)

Serves URL as an NBD export, in the manner of nbdkit. URL is an oVirt imageio transfer URL
(https://HOST:54322/images/TICKET, or http://...), a disk image (a path, or file:///absolute/path),
or memory:SIZE (e.g. memory:1G). By default it listens on TCP 127.0.0.1:10809 and detaches once listening.`;

function table(rows: Array<[string, string]>): string[] {
  const width = Math.max(...rows.map(([l]) => l.length)) + 2;
  return rows.map(([l, d]) => `  ${l.padEnd(width)}${d}`);
}

export function helpText(): string {
  const lines: string[] = [USAGE];
  for (const group of Object.keys(GROUP_TITLES) as OptionGroup[]) {
    lines.push('', GROUP_TITLES[group]);
    lines.push(...table(OPTIONS.filter((o) => o.group === group).map((o) => [optionLabel(o), o.describe])));
  }
  lines.push('', "virt-v2v's rhv-upload plugin parameters:");
  lines.push(...table(PLUGIN_PARAMETERS.map((p) => [p.label, p.describe])));
  lines.push(
    '',
    `nbdkit options that are refused with a reason: ${UNSUPPORTED_NBDKIT_OPTIONS.map((u) => (u.short ? `-${u.short}/` : '') + `--${u.name}`).join(', ')}.`,
  );
  return lines.join('\n');
}
