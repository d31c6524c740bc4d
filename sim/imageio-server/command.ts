/**
 * `imageio-nbd imageio-server`: serve a raw image over the imageio /images API until SIGINT or
 * SIGTERM. Prints the transfer URL as the first line of stdout once listening, then
 * `unix_socket=SOCKET` for the local service: by default a fresh abstract socket (shown as
 * `@/org/ovirt/imageio/PID-N`), as the real daemon listens on the abstract
 * "\0/org/ovirt/imageio"; `--unix PATH` for a file system socket, `--no-unix` for none.
 */
import { promises as fsp } from 'node:fs';
import yargs from 'yargs';
import { VERSION } from '../../src/core/version';
import { createLogger } from '../../src/core/log';
import { readTlsFiles, untilStopSignal, type StopSignals } from '../subcommand';
import { ControlServer } from './control';
import { DATA_OPS, type FaultOp } from './faults';
import { IMAGEIO_VERSION } from './http-errors';
import { abstractSocketName, displaySocket, ImageioServer } from './imageio-server';

const UNITS: Record<string, number> = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 };
const FAULT_OPS: readonly FaultOp[] = ['read', 'write', 'zero', 'flush', 'extents', 'options'];

/** Parse "1073741824", "512M", "6G", "1.5GiB" into bytes. */
export function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$/i.exec(text.trim());
  if (!m) throw new Error(`invalid size '${text}'`);
  const n = Math.round(Number(m[1]) * UNITS[m[2].toLowerCase()]);
  if (!Number.isSafeInteger(n)) throw new Error(`invalid size '${text}'`);
  return n;
}

/** The local service socket from --unix: a path, "@NAME" for the abstract "\0NAME", or a fresh abstract name. */
export function localSocket(unix: string | boolean | undefined): string | undefined {
  if (unix === false) return undefined;
  if (unix === undefined || unix === true || unix === '') return abstractSocketName();
  return unix.startsWith('@') ? `\0${unix.slice(1)}` : unix;
}

function parseOps(text: string): FaultOp[] {
  const ops = text.split(',').map((s) => s.trim()).filter(Boolean);
  for (const op of ops) {
    if (!FAULT_OPS.includes(op as FaultOp)) throw new Error(`invalid --latency-ops '${op}': expected ${FAULT_OPS.join(', ')}`);
  }
  return ops as FaultOp[];
}

function buildParser(argv: string[]) {
  return yargs(argv)
    .scriptName('imageio-nbd imageio-server')
    .usage('$0 --image FILE [options]\n\nServe a raw image file over the oVirt imageio HTTP API (imageio 2.5.3 behaviour).')
    .help(false)
    .version(false)
    .option('image', { type: 'string', describe: 'Raw image file (required)' })
    .option('size', { type: 'string', describe: 'Ticket size (bytes, or with K/M/G/T); creates a missing image' })
    .option('port', { type: 'number', default: 0, describe: 'TCP port (0: ephemeral)' })
    .option('host', { type: 'string', default: '127.0.0.1', describe: 'TCP address to listen on' })
    .option('unix', {
      type: 'string',
      describe: 'Local service socket: a path, or @NAME for an abstract one (default: a new abstract name; --no-unix: none)',
    })
    .option('ticket', { type: 'string', describe: 'Ticket id (default: a random UUID)' })
    .option('tls-cert', { type: 'string', describe: 'PEM certificate: serve HTTPS' })
    .option('tls-key', { type: 'string', describe: 'PEM private key' })
    .option('backend', { choices: ['file', 'nbd'] as const, default: 'nbd' as const, describe: 'Backend to emulate' })
    .option('readonly', { type: 'boolean', default: false, describe: 'Read-only ticket' })
    .option('idle-timeout', { type: 'number', default: 60, describe: 'Close connections idle this many seconds' })
    .option('latency', { type: 'number', default: 0, describe: 'Delay every data response by this many ms' })
    .option('latency-ops', { type: 'string', default: DATA_OPS.join(','), describe: 'Operations --latency delays' })
    .option('control', { type: 'string', describe: 'Unix socket for the test control service' })
    .option('v', { type: 'count', describe: 'More logging (-v: debug)' })
    .option('h', { alias: 'help', type: 'boolean', describe: 'Show this help' })
    .option('V', { alias: 'version', type: 'boolean', describe: 'Print the version and exit' })
    .check((a) => {
      if (!!a['tls-cert'] !== !!a['tls-key']) throw new Error('--tls-cert and --tls-key go together');
      return true;
    })
    .strict()
    // No wrapping: a long description never runs into its [type] tags.
    .wrap(null)
    .exitProcess(false)
    .fail((msg, err) => {
      throw err ?? new Error(msg);
    });
}

export async function runImageioServerCommand(argv: string[], signals: StopSignals): Promise<number> {
  const parser = buildParser(argv);
  let args;
  try {
    args = await parser.parseAsync();
    if (args.h) {
      process.stdout.write(`${await parser.getHelp()}\n`);
      return 0;
    }
    if (args.V) {
      process.stdout.write(`imageio-nbd imageio-server ${VERSION} (imageio ${IMAGEIO_VERSION} API)\n`);
      return 0;
    }
    if (!args.image) throw new Error('missing --image FILE (see --help)');
    if (!(Number.isFinite(args.latency) && args.latency >= 0)) throw new Error(`invalid --latency ${args.latency}`);
  } catch (err) {
    process.stderr.write(`imageio-nbd imageio-server: ${(err as Error).message}\n`);
    return 1;
  }
  const logger = createLogger({ verbose: args.v });
  const image = args.image;

  let server: ImageioServer | undefined;
  let control: ControlServer | undefined;
  try {
    const latencyOps = parseOps(args['latency-ops']);
    const size = args.size !== undefined ? parseSize(args.size) : undefined;
    await ensureImage(image, size);
    const tls = await readTlsFiles(args['tls-cert'], args['tls-key']);
    server = new ImageioServer({
      image,
      size,
      ticket: args.ticket,
      tcp: { port: args.port, host: args.host },
      unix: localSocket(args.unix as string | boolean | undefined),
      tls,
      backend: args.backend,
      readonly: args.readonly,
      idleTimeoutMs: args['idle-timeout'] * 1000,
      logger,
    });
    server.faults.setLatency(args.latency, latencyOps);
    await server.start();
    if (args.control) {
      control = new ControlServer(server, args.control);
      await control.start();
    }
  } catch (err) {
    process.stderr.write(`imageio-nbd imageio-server: ${(err as Error).message}\n`);
    await control?.close().catch(() => undefined);
    await server?.close().catch(() => undefined);
    return 1;
  }

  process.stdout.write(`${server.url}\n`);
  if (server.unixSocket !== undefined) process.stdout.write(`unix_socket=${displaySocket(server.unixSocket)}\n`);

  const signal = await untilStopSignal(signals);
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
