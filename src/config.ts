/**
 * The command line: nbdkit's options with nbdkit's meaning, the key=value form of virt-v2v's
 * oVirt upload plugin (url=, size=, cafile=, insecure=, is_ovirt_host=), and our own options.
 * parseArgs() is pure (no I/O) so every rule here is unit-tested; src/cli.ts acts on the result.
 */
import yargs from 'yargs/yargs';
import { ConfigError } from './errors';
import { parseSize } from './size';
import { NBD_DEFAULT_PORT } from '../protocol/constants';
import { addEngineOptions, engineConfigFrom, type EngineConfig } from './engine/options';

export const VERSION = '0.1.0';

export interface RunConfig {
  /** memory:SIZE, file:///path, http(s)://host/images/TICKET */
  url: string;
  size?: number;
  cafile?: string;
  insecure: boolean;
  unixSocket: 'auto' | 'never';
  connections: number;
  /** 0 turns write coalescing off. */
  requestSize: number;
  maxBuffer: number;
  /** Send a partly filled coalescing buffer after this many ms without new writes to it. */
  coalesceIdleMs: number;
  preferredBlockSize?: number;
  connectTimeoutMs: number;
  requestTimeoutMs: number;
  retries: number;
  /** Send a keep-alive request on HTTP connections idle this long (imageio closes them at 60 s). */
  keepAliveMs: number;
  listen: { unix: string } | { privateUnix: true } | { port: number; host: string };
  readonly: boolean;
  exportName: string;
  foreground: boolean;
  run?: string;
  exitWithParent: boolean;
  pidfile?: string;
  threads: number;
  verbose: number;
  logFormat: 'pretty' | 'json';
  /** undefined: no stats; '': stderr; else a file path. */
  stats?: string;
  /** Seconds between progress lines; undefined: none. */
  progress?: number;
  /** Options accepted for nbdkit compatibility that do nothing here, for a debug line. */
  ignored: string[];
  /** Engine mode (--engine): the transfer URL is obtained from the oVirt engine; `url` is '' until then. */
  engine?: EngineConfig;
}

export type ParseResult =
  | { kind: 'run'; config: RunConfig }
  | { kind: 'help'; text: string }
  | { kind: 'version'; text: string }
  | { kind: 'imageio-server'; argv: string[] }
  | { kind: 'engine-server'; argv: string[] };

const USAGE = `imageio-nbd [OPTIONS] URL | imageio-nbd [OPTIONS] url=URL size=N [cafile=F] [insecure=true] [is_ovirt_host=true]
imageio-nbd --engine API-URL --username U --password-file F (--disk-id ID | --create-disk --storage-domain SD --size N) --run CMD
imageio-nbd imageio-server --image FILE [...]   (a built-in imageio-compatible server; --help for its options)
imageio-nbd engine-server [--hosts N] [...]      (a fake oVirt engine for tests and demos; --help for its options)

Serve URL as an NBD export. URL is an imageio transfer URL (https://HOST:54322/images/TICKET or
http://...), file:///path/disk.raw, or memory:SIZE (e.g. memory:1G).`;

function buildParser(argv: string[]) {
  return addEngineOptions(yargs(argv)
    .scriptName('imageio-nbd')
    .usage(USAGE)
    .parserConfiguration({ 'camel-case-expansion': false, 'strip-aliased': true })
    .option('U', { alias: 'unix', type: 'string', describe: 'Listen on this unix socket; "-" makes a private socket in a temporary directory', group: 'nbdkit options:' })
    .option('p', { alias: 'port', type: 'number', describe: `Listen on this TCP port (default ${NBD_DEFAULT_PORT} when no -U)`, group: 'nbdkit options:' })
    .option('i', { alias: 'ipaddr', type: 'string', describe: 'Listen on this address (default 127.0.0.1)', group: 'nbdkit options:' })
    .option('f', { alias: 'foreground', type: 'boolean', describe: 'Stay in the foreground (otherwise detach once listening)', group: 'nbdkit options:' })
    .option('r', { alias: 'readonly', type: 'boolean', describe: 'Serve the export read-only', group: 'nbdkit options:' })
    .option('e', { alias: 'exportname', type: 'string', describe: 'Export name (default "")', group: 'nbdkit options:' })
    .option('run', { type: 'string', describe: 'Captive mode: run CMD with $uri, $nbd, $unixsocket, $port, $exportname set; flush, then exit with its status', group: 'nbdkit options:' })
    .option('exit-with-parent', { type: 'boolean', describe: 'Exit when the parent process exits', group: 'nbdkit options:' })
    .option('P', { alias: 'pidfile', type: 'string', describe: 'Write the process id here once the socket listens', group: 'nbdkit options:' })
    .option('t', { alias: 'threads', type: 'number', describe: 'Requests served at once per NBD connection (default 16)', group: 'nbdkit options:' })
    .option('v', { alias: 'verbose', type: 'count', describe: 'Debug logging, one line per request (-vv: trace)', group: 'nbdkit options:' })
    .option('V', { type: 'boolean', describe: 'Print the version and exit (also --version)', group: 'nbdkit options:' })
    .option('D', { alias: 'debug', type: 'string', describe: 'nbdkit debug flag: accepted and ignored', group: 'nbdkit options:' })
    .option('selinux-label', { type: 'string', describe: 'Accepted and ignored', group: 'nbdkit options:' })
    .option('cafile', { type: 'string', describe: 'CA certificate(s) to verify the imageio server (default: system CAs)', group: 'imageio options:' })
    .option('insecure', { type: 'boolean', describe: 'Do not verify the imageio server certificate', group: 'imageio options:' })
    .option('unix-socket', { type: 'string', choices: ['auto', 'never'], describe: "Use imageio's local unix socket when it offers one and it is reachable (default auto)", group: 'imageio options:' })
    .option('connections', { type: 'number', describe: 'HTTP connections in the pool (default 4; fewer if the server says so)', group: 'imageio options:' })
    .option('request-size', { type: 'string', describe: 'Coalesce writes into HTTP requests of this size (default 8M; 0 turns coalescing off)', group: 'imageio options:' })
    .option('max-buffer', { type: 'string', describe: 'Bound on write data buffered or in flight (default 64M)', group: 'imageio options:' })
    .option('coalesce-idle', { type: 'number', describe: 'Send a partly filled request after this many seconds without new writes to it (default 0.01)', group: 'imageio options:' })
    .option('size', { type: 'string', describe: 'Export size (default: discovered from the server)', group: 'imageio options:' })
    .option('block-size', { type: 'string', describe: 'Preferred block size advertised to NBD clients (default: 8M for imageio, 4M otherwise)', group: 'imageio options:' })
    .option('connect-timeout', { type: 'number', describe: 'Seconds to wait for an HTTP connection (default 10)', group: 'imageio options:' })
    .option('request-timeout', { type: 'number', describe: 'Seconds to wait for an HTTP response (default 60)', group: 'imageio options:' })
    .option('retries', { type: 'number', describe: 'Retries of an idempotent HTTP request after a connection error or 5xx (default 3)', group: 'imageio options:' })
    .option('keepalive', { type: 'number', describe: 'Seconds an HTTP connection may stay idle before a keep-alive request (default 30; imageio closes idle connections after 60)', group: 'imageio options:' })
    .option('stats', { type: 'string', describe: 'At exit, print NBD and HTTP statistics to stderr, or to FILE with --stats=FILE', group: 'output options:' })
    .option('progress', { type: 'string', describe: 'Print a progress line every N seconds (default 5)', group: 'output options:' })
    .option('log-format', { type: 'string', choices: ['pretty', 'json'], describe: 'Log format (default pretty)', group: 'output options:' }))
    .help(false)
    .version(false)
    .option('h', { alias: 'help', type: 'boolean', describe: 'Show this help' })
    .strictOptions(true)
    .wrap(Math.min(110, process.stdout.columns || 100))
    .exitProcess(false)
    .fail((msg, err) => {
      throw new ConfigError(err ? err.message : msg);
    });
}

/** The help text, as --help prints it. */
export async function helpText(): Promise<string> {
  return buildParser([]).getHelp();
}

function truthy(v: string): boolean {
  return ['true', '1', 'yes', 'on'].includes(v.toLowerCase());
}

function positiveInt(v: unknown, what: string, min = 1): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) {
    throw new ConfigError(`invalid ${what} ${String(v)}: expected a whole number >= ${min}`);
  }
  return v;
}

function keepAliveSeconds(v: unknown): number {
  if (v === undefined) return 30;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0.1 || v > 86400) {
    throw new ConfigError(`invalid --keepalive ${String(v)}: seconds from 0.1 to 86400`);
  }
  return v;
}

/** Parse argv (without node and script). Throws ConfigError with one clear line on bad input. */
export async function parseArgs(argv: string[]): Promise<ParseResult> {
  if (argv[0] === 'imageio-server') return { kind: 'imageio-server', argv: argv.slice(1) };
  if (argv[0] === 'engine-server') return { kind: 'engine-server', argv: argv.slice(1) };
  // --stats and --progress take an optional value only in the --opt=VALUE form, so that
  // "--stats URL" does not swallow the URL.
  // "--progress 5" still works: a number is never a URL.
  const parser = buildParser(
    argv.map((x, i) =>
      x === '--stats' || (x === '--progress' && !/^\d+(\.\d+)?$/.test(argv[i + 1] ?? '')) ? `${x}=` : x === '--version' ? '-V' : x,
    ),
  );
  const a = (await parser.parseAsync()) as Record<string, unknown>;
  if (a.h) return { kind: 'help', text: await parser.getHelp() };
  if (a.V) return { kind: 'version', text: `imageio-nbd ${VERSION}` };

  const ignored: string[] = [];
  let url: string | undefined;
  const kv: Record<string, string> = {};
  for (const raw of (a._ as unknown[]).map(String)) {
    const eq = raw.indexOf('=');
    const colon = raw.indexOf(':');
    const key = eq > 0 && (colon === -1 || eq < colon) ? raw.slice(0, eq) : '';
    if (/^[a-z_]+$/.test(key)) {
      kv[key] = raw.slice(eq + 1);
    } else if (raw === 'python' || raw.endsWith('.py')) {
      // virt-v2v names its python plugin and script; we are the plugin.
      ignored.push(`plugin ${raw}`);
    } else if (url === undefined) {
      url = raw;
    } else {
      throw new ConfigError(`unexpected argument '${raw}': only one URL may be given`);
    }
  }
  let isOvirtHost: boolean | undefined;
  for (const [key, value] of Object.entries(kv)) {
    switch (key) {
      case 'url':
        if (url !== undefined) throw new ConfigError('the URL was given twice (url= and a plain URL)');
        url = value;
        break;
      case 'size':
      case 'cafile':
        break;
      case 'insecure':
      case 'is_ovirt_host':
        if (key === 'is_ovirt_host') isOvirtHost = truthy(value);
        break;
      default:
        throw new ConfigError(`unknown parameter '${key}=': expected url=, size=, cafile=, insecure=, is_ovirt_host=`);
    }
  }
  const engine = engineConfigFrom(a);
  if (engine && url !== undefined) throw new ConfigError('give either a transfer URL or --engine, not both');
  if (engine) url = '';
  else if (url === undefined || url === '') {
    throw new ConfigError('missing URL: give an imageio transfer URL, file:///path or memory:SIZE (see --help)');
  } else if (!/^(https?:\/\/|file:\/\/|memory:)/.test(url)) {
    throw new ConfigError(`unsupported URL '${url}': expected https://, http://, file:// or memory:`);
  }

  const sizeText = (a.size as string | undefined) ?? kv.size;
  const size = sizeText !== undefined ? parseSize(sizeText, 'size') : undefined;
  if (size === 0) throw new ConfigError('invalid size 0: the export would be empty');

  if (a.D !== undefined) ignored.push(`-D ${([] as unknown[]).concat(a.D).join(' -D ')}`);
  if (a['selinux-label'] !== undefined) ignored.push(`--selinux-label ${String(a['selinux-label'])}`);

  const unixOpt = a.U as string | undefined;
  const portOpt = a.p as number | undefined;
  if (unixOpt !== undefined && portOpt !== undefined) throw new ConfigError('use either -U/--unix or -p/--port, not both');
  if (unixOpt === '') throw new ConfigError('-U/--unix needs a socket path, or - for a private one');
  let listen: RunConfig['listen'];
  if (unixOpt === '-') listen = { privateUnix: true };
  else if (unixOpt !== undefined) listen = { unix: unixOpt };
  else if (portOpt === undefined && a.run !== undefined) listen = { privateUnix: true }; // nbdkit: --run implies -U -
  else listen = { port: positiveInt(portOpt ?? NBD_DEFAULT_PORT, 'port', 0), host: (a.i as string | undefined) ?? '127.0.0.1' };
  if ('port' in listen && listen.port > 65535) throw new ConfigError(`invalid port ${listen.port}`);

  const requestSize = parseSize((a['request-size'] as string | undefined) ?? '8M', 'request size');
  if (requestSize > 64 * 2 ** 20) throw new ConfigError('invalid request size: at most 64M');
  const maxBuffer = parseSize((a['max-buffer'] as string | undefined) ?? '64M', 'max buffer');
  const coalesceIdle = (a['coalesce-idle'] as number | undefined) ?? 0.01;
  if (!(coalesceIdle >= 0.001 && coalesceIdle <= 3600)) {
    throw new ConfigError(`invalid --coalesce-idle ${String(a['coalesce-idle'])}: seconds from 0.001 to 3600`);
  }
  if (requestSize > 0 && maxBuffer < requestSize) {
    throw new ConfigError(`--max-buffer (${maxBuffer}) must be at least --request-size (${requestSize})`);
  }
  const blockSizeText = a['block-size'] as string | undefined;
  const preferredBlockSize = blockSizeText !== undefined ? parseSize(blockSizeText, 'block size') : undefined;
  if (preferredBlockSize !== undefined && (preferredBlockSize < 512 || preferredBlockSize > 32 * 2 ** 20 || (preferredBlockSize & (preferredBlockSize - 1)) !== 0)) {
    throw new ConfigError('invalid block size: a power of two from 512 to 32M');
  }

  let progress: number | undefined;
  if (a.progress !== undefined) {
    progress = a.progress === '' ? 5 : Number(a.progress);
    if (!(progress > 0)) throw new ConfigError(`invalid --progress '${String(a.progress)}': seconds between lines`);
  }

  const insecure = (a.insecure as boolean | undefined) ?? (kv.insecure !== undefined ? truthy(kv.insecure) : false);
  const cafile = (a.cafile as string | undefined) ?? kv.cafile;
  if (insecure && cafile !== undefined) throw new ConfigError('--cafile and --insecure contradict each other');
  const unixSocketOpt = a['unix-socket'] as 'auto' | 'never' | undefined;
  // virt-v2v's plugin uses imageio's unix socket only when told it runs on the oVirt host.
  const unixSocket = unixSocketOpt ?? (isOvirtHost === false ? 'never' : 'auto');

  const config: RunConfig = {
    url,
    size,
    cafile,
    insecure,
    unixSocket,
    connections: positiveInt(a.connections ?? 4, 'connections'),
    requestSize,
    maxBuffer,
    coalesceIdleMs: Math.round(coalesceIdle * 1000),
    preferredBlockSize,
    connectTimeoutMs: positiveInt(a['connect-timeout'] ?? 10, 'connect timeout') * 1000,
    requestTimeoutMs: positiveInt(a['request-timeout'] ?? 60, 'request timeout') * 1000,
    retries: positiveInt(a.retries ?? 3, 'retries', 0),
    keepAliveMs: Math.round(keepAliveSeconds(a.keepalive) * 1000),
    listen,
    readonly: Boolean(a.r) || engine?.direction === 'download',
    exportName: (a.e as string | undefined) ?? '',
    foreground: Boolean(a.f) || a.run !== undefined,
    run: a.run as string | undefined,
    exitWithParent: Boolean(a['exit-with-parent']),
    pidfile: a.P as string | undefined,
    threads: positiveInt(a.t ?? 16, 'threads'),
    verbose: (a.v as number | undefined) ?? 0,
    logFormat: (a['log-format'] as 'pretty' | 'json' | undefined) ?? 'pretty',
    stats: a.stats as string | undefined,
    progress,
    ignored,
    engine,
  };
  return { kind: 'run', config };
}
