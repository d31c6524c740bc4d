/**
 * `imageio-nbd imageio-server`: serve a raw image over the imageio /images API until a stop
 * signal. Prints the transfer URL as the first line of stdout once listening, then
 * `unix_socket=SOCKET` for the local service: by default a fresh abstract socket (shown as
 * `@/org/ovirt/imageio/PID-N`), as the real daemon listens on the abstract
 * "\0/org/ovirt/imageio"; `--unix PATH` for a file system socket, `--no-unix` for none.
 */
import { promises as fsp } from 'node:fs';
import { allValues, formatHelp, lastValue, optionLabel, OptionParser, wholeNumberOption, type OptionRow } from '../../src/core/command-line';
import { parseSize } from '../../src/core/size';
import { VERSION } from '../../src/core/version';
import { createLogger } from '../../src/core/log';
import { announce, numberOption, readTlsFiles, stopSignal, type StopSignals } from '../subcommand';
import { ControlServer } from './control';
import { DATA_OPS, type FaultOp } from './faults';
import { IMAGEIO_VERSION } from './http-errors';
import { abstractSocketName, displaySocket, ImageioServer } from './imageio-server';

const FAULT_OPS: readonly FaultOp[] = ['read', 'write', 'zero', 'flush', 'extents', 'options'];

const OPTIONS: readonly OptionRow[] = [
  { name: 'image', type: 'string', arg: 'FILE', describe: 'Raw image file (required)' },
  { name: 'size', type: 'string', arg: 'SIZE', describe: 'Ticket size (bytes, or with K/M/G/T); creates a missing image' },
  { name: 'port', type: 'string', arg: 'PORT', describe: 'TCP port (default 0: an ephemeral one)' },
  { name: 'host', type: 'string', arg: 'ADDR', describe: 'TCP address to listen on (default 127.0.0.1)' },
  { name: 'unix', type: 'string', arg: 'PATH|@NAME', describe: 'Local service socket: a path, or @NAME for an abstract one (default: a new abstract name)' },
  { name: 'no-unix', type: 'flag', describe: 'No local service socket' },
  { name: 'ticket', type: 'string', arg: 'ID', describe: 'Ticket id (default: a random UUID)' },
  { name: 'tls-cert', type: 'string', arg: 'FILE', describe: 'PEM certificate: serve HTTPS (with --tls-key)' },
  { name: 'tls-key', type: 'string', arg: 'FILE', describe: 'PEM private key' },
  { name: 'backend', type: 'string', arg: 'file|nbd', describe: "Backend to emulate: nbd (default; 8 writers) or file (1 writer)" },
  { name: 'readonly', type: 'flag', describe: 'Read-only ticket (a download transfer)' },
  { name: 'idle-timeout', type: 'string', arg: 'S', describe: 'Close connections idle this many seconds (default 60)' },
  { name: 'latency', type: 'string', arg: 'MS', describe: 'Delay every data response by this many ms (default 0)' },
  { name: 'latency-ops', type: 'string', arg: 'OPS', describe: `Operations --latency delays, comma-separated (default ${DATA_OPS.join(',')})` },
  { name: 'control', type: 'string', arg: 'SOCKET', describe: 'Unix socket for the test control service' },
  { name: 'verbose', short: 'v', type: 'count', describe: 'More logging (-v: debug)' },
  { name: 'version', short: 'V', type: 'flag', describe: 'Print the version and exit' },
  { name: 'help', short: 'h', type: 'flag', describe: 'Print this help and exit' },
];

export function imageioServerHelp(): string {
  return formatHelp({
    usage: ['imageio-nbd imageio-server --image FILE [OPTIONS]'],
    description: `Serve a raw image file over the oVirt imageio HTTP API (imageio ${IMAGEIO_VERSION} behaviour) until SIGINT,
SIGTERM or SIGQUIT. Once listening, stdout has the transfer URL on its first line, then
unix_socket=SOCKET for the local service (unless --no-unix).`,
    sections: [{ title: 'options:', rows: OPTIONS.map((o) => [optionLabel(o), o.describe] as const) }],
    exitStatus: [
      ['0', 'stopped by a signal'],
      ['1', 'bad arguments, or the server could not start'],
    ],
  });
}

/** The local service socket from --unix/--no-unix: a path, "@NAME" for the abstract "\0NAME", or a fresh abstract name. */
export function localSocket(unix: string | undefined, noUnix: boolean): string | undefined {
  if (noUnix) return undefined;
  if (unix === undefined || unix === '') return abstractSocketName();
  return unix.startsWith('@') ? `\0${unix.slice(1)}` : unix;
}

function parseOps(text: string): FaultOp[] {
  const ops = text.split(',').map((s) => s.trim()).filter(Boolean);
  for (const op of ops) {
    if (!FAULT_OPS.includes(op as FaultOp)) throw new Error(`invalid --latency-ops '${op}': expected ${FAULT_OPS.join(', ')}`);
  }
  return ops as FaultOp[];
}

/** The command line, checked: everything the server needs, or an Error with one line. */
function parseCommandLine(argv: string[]) {
  const { values: a, positionals } = new OptionParser(OPTIONS).parse(argv);
  if (a.help || a.version) return { help: a.help === true, version: a.version === true } as const;
  if (positionals.length) throw new Error(`unexpected argument '${positionals[0]}' (see --help)`);
  const image = lastValue(a.image);
  if (!image) throw new Error('missing --image FILE (see --help)');
  const tlsCert = lastValue(a['tls-cert']);
  const tlsKey = lastValue(a['tls-key']);
  if (!!tlsCert !== !!tlsKey) throw new Error('--tls-cert and --tls-key go together');
  const unix = lastValue(a.unix);
  if (unix !== undefined && a['no-unix']) throw new Error('--unix and --no-unix contradict each other');
  const backend = lastValue(a.backend) ?? 'nbd';
  if (backend !== 'file' && backend !== 'nbd') throw new Error(`invalid --backend '${backend}': expected file or nbd`);
  const size = lastValue(a.size);
  return {
    image,
    size: size !== undefined ? parseSize(size, 'size') : undefined,
    port: wholeNumberOption(a.port, '--port', 0, 65535) ?? 0,
    host: lastValue(a.host) ?? '127.0.0.1',
    unix: localSocket(unix, a['no-unix'] === true),
    ticket: lastValue(a.ticket),
    tlsCert,
    tlsKey,
    backend,
    readonly: a.readonly === true,
    idleTimeoutMs: (numberOption(lastValue(a['idle-timeout']), 'idle-timeout', 0) ?? 60) * 1000,
    latency: numberOption(lastValue(a.latency), 'latency', 0) ?? 0,
    latencyOps: parseOps(allValues(a['latency-ops']).join(',') || DATA_OPS.join(',')),
    control: lastValue(a.control),
    verbose: (a.verbose as number | undefined) ?? 0,
  } as const;
}

export async function runImageioServerCommand(argv: string[], signals: StopSignals): Promise<number> {
  let args;
  try {
    args = parseCommandLine(argv);
  } catch (err) {
    process.stderr.write(`imageio-nbd imageio-server: ${(err as Error).message}\n`);
    return 1;
  }
  if ('help' in args) {
    announce(args.help ? `${imageioServerHelp()}\n` : `imageio-nbd imageio-server ${VERSION} (imageio ${IMAGEIO_VERSION} API)\n`);
    return 0;
  }
  const logger = createLogger({ verbose: args.verbose });
  const stop = stopSignal(signals);

  let server: ImageioServer | undefined;
  let control: ControlServer | undefined;
  try {
    await ensureImage(args.image, args.size);
    const tls = await readTlsFiles(args.tlsCert, args.tlsKey);
    server = new ImageioServer({
      image: args.image,
      size: args.size,
      ticket: args.ticket,
      tcp: { port: args.port, host: args.host },
      unix: args.unix,
      tls,
      backend: args.backend,
      readonly: args.readonly,
      idleTimeoutMs: args.idleTimeoutMs,
      logger,
    });
    server.faults.setLatency(args.latency, args.latencyOps);
    await server.start();
    if (args.control) {
      control = new ControlServer(server, args.control);
      await control.start();
    }
  } catch (err) {
    process.stderr.write(`imageio-nbd imageio-server: ${(err as Error).message}\n`);
    await control?.close().catch(() => undefined);
    await server?.close().catch(() => undefined);
    stop.cancel();
    return 1;
  }

  announce(`${server.url}\n${server.unixSocket !== undefined ? `unix_socket=${displaySocket(server.unixSocket)}\n` : ''}`);

  const signal = await stop.signal;
  logger.debug({ signal }, 'shutting down');
  await control?.close();
  await server.close();
  return 0;
}

/** A missing image is created (sparse) only when --size says how big. */
async function ensureImage(path: string, size: number | undefined): Promise<void> {
  try {
    await fsp.access(path);
    return;
  } catch {
    if (size === undefined) throw new Error(`image ${path} does not exist (give --size to create it)`);
  }
  const fh = await fsp.open(path, 'wx');
  try {
    await fh.truncate(size);
  } finally {
    await fh.close();
  }
}
