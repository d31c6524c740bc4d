/**
 * `imageio-nbd imageio-server`: serve a raw image over the imageio /images API until SIGINT or
 * SIGTERM. Prints the transfer URL as the first line of stdout once listening, then
 * `unix_socket=PATH` when --unix is given.
 */
import { promises as fsp } from 'node:fs';
import yargs from 'yargs';
import { createLogger } from '../log';
import { ControlServer } from './control';
import { ImageioServer } from './imageio-server';

const UNITS: Record<string, number> = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 };

/** Parse "1073741824", "512M", "6G", "1.5GiB" into bytes. */
export function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$/i.exec(text.trim());
  if (!m) throw new Error(`invalid size '${text}'`);
  const n = Math.round(Number(m[1]) * UNITS[m[2].toLowerCase()]);
  if (!Number.isSafeInteger(n)) throw new Error(`invalid size '${text}'`);
  return n;
}

export async function runImageioServerCommand(argv: string[]): Promise<number> {
  let args;
  try {
    args = await yargs(argv)
      .scriptName('imageio-nbd imageio-server')
      .usage('$0 --image FILE [options]\n\nServe a raw image file over the oVirt imageio HTTP API.')
      .option('image', { type: 'string', demandOption: true, describe: 'raw image file' })
      .option('size', { type: 'string', describe: 'ticket size (bytes, or with K/M/G/T); creates a missing image' })
      .option('port', { type: 'number', default: 0, describe: 'TCP port (0: ephemeral)' })
      .option('host', { type: 'string', default: '127.0.0.1', describe: 'TCP address to listen on' })
      .option('unix', { type: 'string', describe: 'also serve the local service on this unix socket' })
      .option('ticket', { type: 'string', describe: 'ticket id (default: a random UUID)' })
      .option('tls-cert', { type: 'string', describe: 'PEM certificate: serve HTTPS' })
      .option('tls-key', { type: 'string', describe: 'PEM private key' })
      .option('backend', { choices: ['file', 'nbd'] as const, default: 'nbd' as const, describe: 'backend to emulate' })
      .option('readonly', { type: 'boolean', default: false, describe: 'read-only ticket' })
      .option('idle-timeout', { type: 'number', default: 60, describe: 'close idle connections after SECONDS' })
      .option('control', { type: 'string', describe: 'unix socket for the test control service' })
      .option('v', { type: 'count', describe: 'more logging (-v debug)' })
      .check((a) => {
        if (!!a['tls-cert'] !== !!a['tls-key']) throw new Error('--tls-cert and --tls-key go together');
        return true;
      })
      .strict()
      .help()
      .exitProcess(false)
      .fail((msg, err) => {
        throw err ?? new Error(msg);
      })
      .parseAsync();
  } catch (err) {
    process.stderr.write(`imageio-nbd imageio-server: ${(err as Error).message}\n`);
    return 1;
  }
  if (args.help) return 0;
  const logger = createLogger({ verbose: args.v });

  let server: ImageioServer | undefined;
  let control: ControlServer | undefined;
  try {
    const size = args.size !== undefined ? parseSize(args.size) : undefined;
    await ensureImage(args.image, size);
    const tls =
      args['tls-cert'] && args['tls-key']
        ? { cert: await fsp.readFile(args['tls-cert']), key: await fsp.readFile(args['tls-key']) }
        : undefined;
    server = new ImageioServer({
      image: args.image,
      size,
      ticket: args.ticket,
      tcp: { port: args.port, host: args.host },
      unix: args.unix,
      tls,
      backend: args.backend,
      readonly: args.readonly,
      idleTimeoutMs: args['idle-timeout'] * 1000,
      logger,
    });
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
  if (args.unix) process.stdout.write(`unix_socket=${args.unix}\n`);

  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    const onSignal = (sig: NodeJS.Signals) => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      resolve(sig);
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
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
