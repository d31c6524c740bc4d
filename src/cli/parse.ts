/**
 * The command line: nbdkit's options with nbdkit's meaning (and spellings), the key=value form
 * of virt-v2v's oVirt upload plugin (url=, size=, cafile=, insecure=, is_ovirt_host=), and our
 * own options. The options themselves are listed once, in cli-options.ts.
 * parseArgs() is pure (no I/O) so every rule here is unit-tested; src/cli/main.ts acts on the result.
 */
import * as net from 'node:net';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { ConfigError } from '../core/errors';
import { lastValue, OptionParser, wholeNumberOption } from '../core/command-line';
import { parseSize } from '../core/size';
import { NBD_DEFAULT_PORT } from '../nbd/codec/constants';
import { MIN_MAX_MEMORY } from '../nbd/receive-budget';
import { OPTIONS, UNSUPPORTED_NBDKIT_OPTIONS } from './option-table';
import { helpText } from './help';
import { engineConfigFrom, type EngineConfig } from './engine-options';
import { jobsConfigFrom, type JobsConfig } from './jobs/jobs-options';
import { VERSION } from '../core/version';
import { DEFAULTS } from '../core/defaults';

/** What the command does with the network side: where it listens. */
export type ListenConfig =
  | { unix: string }
  | { privateUnix: true }
  | { port: number; host: string }
  /** -s/--single: one client on stdin/stdout. */
  | { stdio: true };

/** Everything the command needs to serve, after defaults. Library users see ExportOptions instead. */
export interface RunConfig {
  /** memory:SIZE, file:///path, http(s)://host/images/TICKET (a plain path is turned into file://). */
  url: string;
  size?: number;
  cafile?: string;
  insecure: boolean;
  unixSocket: 'auto' | 'never';
  connections: number;
  /** 0 turns write coalescing off. */
  requestSize: number;
  /** 0 turns read-ahead off. */
  readahead: number;
  maxBuffer: number;
  /** Send a partly filled coalescing buffer after this many ms without new writes to it. */
  coalesceIdleMs: number;
  preferredBlockSize?: number;
  connectTimeoutMs: number;
  requestTimeoutMs: number;
  /** Slowest body rate tolerated, bytes per second. */
  minRate: number;
  /** Bound on all payload memory of the process, bytes. */
  maxMemory: number;
  retries: number;
  /** Send a keep-alive request on HTTP connections idle this long (imageio closes them at 60 s). */
  keepAliveMs: number;
  listen: ListenConfig;
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
  /** --jobs: many transfers through the engine (src/cli/jobs/); `url` is ''. */
  jobs?: JobsConfig;
}

/** nbdkit's informational modes, answered in nbdkit's format (see nbdkit-compat.ts). */
export type InfoKind = 'dump-config' | 'dump-plugin' | 'long-options' | 'short-options';

export type ParseResult =
  | { kind: 'run'; config: RunConfig }
  | { kind: 'help'; text: string }
  | { kind: 'version'; text: string }
  | { kind: 'info'; info: InfoKind; plugin?: string }
  | { kind: 'imageio-server'; argv: string[] }
  | { kind: 'engine-server'; argv: string[] };

/** The defaults of every option, in the units the command line uses (from src/core/defaults.ts). */
export const CLI_DEFAULTS = {
  connections: DEFAULTS.connections,
  requestSize: DEFAULTS.requestSize,
  readahead: DEFAULTS.readahead,
  maxBuffer: DEFAULTS.maxBuffer,
  coalesceIdleSeconds: DEFAULTS.coalesceIdleMs / 1000,
  connectTimeoutSeconds: DEFAULTS.connectTimeoutMs / 1000,
  requestTimeoutSeconds: DEFAULTS.requestTimeoutMs / 1000,
  minRate: DEFAULTS.minRate,
  maxMemory: DEFAULTS.maxMemory,
  retries: DEFAULTS.retries,
  keepAliveSeconds: DEFAULTS.keepAliveMs / 1000,
  threads: DEFAULTS.threads,
  progressSeconds: DEFAULTS.progressSeconds,
  port: NBD_DEFAULT_PORT,
  host: DEFAULTS.host,
} as const;

let optionParser: OptionParser | undefined;

/**
 * The main command's table in the parser, built once: each option under its short letter, else
 * its name (aliases folded in); nbdkit's options we refuse are parsed too, to say why.
 */
function table(): OptionParser {
  return (optionParser ??= new OptionParser(
    [
      ...OPTIONS,
      ...UNSUPPORTED_NBDKIT_OPTIONS.map((u) => ({ name: u.name, short: u.short, type: u.takesValue ? ('string' as const) : ('flag' as const), describe: u.why })),
    ],
    (row) => row.short ?? row.name,
  ));
}

/** Parses argv with the option table; positionals in `_`. */
function parseTable(args: string[]): Record<string, unknown> {
  try {
    const { values, positionals } = table().parse(args);
    return { ...values, _: positionals };
  } catch (err) {
    throw new ConfigError((err as Error).message);
  }
}

function truthy(v: string): boolean {
  return ['true', '1', 'yes', 'on'].includes(v.toLowerCase());
}

/** The value of a string option as typed (the last one when repeated). */
const text = lastValue;

/** Seconds typed on the command line (fractions allowed), or undefined when absent. */
function seconds(v: unknown, opt: string, min: number, max: number): number | undefined {
  const t = text(v);
  if (t === undefined) return undefined;
  const n = /^\s*(\d+(\.\d*)?|\.\d+)\s*$/.test(t) ? Number(t) : NaN;
  if (!(n >= min && n <= max)) {
    throw new ConfigError(`invalid ${opt} '${t}': expected seconds from ${min} to ${max} (fractions allowed, e.g. 0.5)`);
  }
  return n;
}

/**
 * Rewrites argv into what node:util's parser takes for what nbdkit users type. Returns the new
 * argv and --stats' candidate file.
 */
function normalizeArgv(argv: string[]): { args: string[]; statsCandidate?: string } {
  const parser = table();
  const known = (x: string) => parser.isOption(x);
  const args: string[] = [];
  let statsCandidate: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const x = argv[i];
    const next = argv[i + 1];
    if (x === '--') {
      args.push(...argv.slice(i));
      break;
    }
    if (x === '-4') args.push('--ipv4-only');
    else if (x === '-6') args.push('--ipv6-only');
    else if (x === '--progress') {
      // "--progress 5" takes the number; "--progress URL" does not swallow the URL.
      if (next !== undefined && /^(\d+(\.\d*)?|\.\d+)$/.test(next)) {
        args.push(`--progress=${next}`);
        i++;
      } else args.push('--progress=');
    } else if (x === '--stats') {
      // "--stats FILE URL" and "--stats URL": which one is the file is decided once the
      // positional arguments are known (see parseArgs).
      args.push('--stats=');
      if (next !== undefined && !next.startsWith('-') && !next.includes('=')) statsCandidate = next;
    } else if (
      // A value that starts with a dash (--size -5) is the value, as long as it is not an option:
      // node:util would refuse it as ambiguous, and the value's own check says what is wrong.
      x.startsWith('--') &&
      parser.specs.get(x.slice(2))?.kind === 'string' &&
      next !== undefined &&
      next.startsWith('-') &&
      next !== '-' &&
      !known(next)
    ) {
      args.push(`${x}=${next}`);
      i++;
    } else args.push(x);
  }
  return { args, statsCandidate };
}

/** The subcommands, for "did you mean" (main.ts dispatches them). */
const SUBCOMMANDS = ['imageio-server', 'engine-server', 'verify'] as const;

/** Edit distance of two short words (insertions, deletions, substitutions). */
function distance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) row[j] = Math.min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = row;
  }
  return prev[b.length];
}

/** A first argument like "help" or a mistyped subcommand: said before its options are parsed as the main command's. */
function checkNotASubcommand(word: string): void {
  if (/^help$/i.test(word)) throw new ConfigError(`'${word}' is not a subcommand: for help, run imageio-nbd --help`);
  if (/^[a-z][a-z-]*$/i.test(word)) {
    const near = SUBCOMMANDS.find((c) => distance(word.toLowerCase(), c) <= Math.max(1, Math.floor(c.length / 4)));
    if (near) throw new ConfigError(`unknown subcommand '${word}': did you mean '${near}'? (subcommands: ${SUBCOMMANDS.join(', ')})`);
  }
}

/**
 * A URL argument that is surely not a disk image path: a word like a subcommand or "help", or a
 * host:port without its scheme. Said now, instead of "file not found" from opening it.
 */
function checkLooksLikeUrl(url: string): void {
  checkNotASubcommand(url);
  // host:port[/path] (a name or an IPv4 address): imageio's URL without https://.
  const m = /^((?:[a-z0-9-]+\.)*[a-z0-9-]+|\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})(\/.*)?$/i.exec(url);
  if (m) {
    throw new ConfigError(
      `'${url}' looks like a URL without its scheme: write https://${url} (imageio's transfer URL), or http://${url} for a plain-HTTP server`,
    );
  }
}

/** Turns the URL argument into the URL served; a plain path is a file, as with nbdkit's file plugin. */
function normalizeUrl(url: string): string {
  if (/^memory:/.test(url) || /^https?:\/\//i.test(url)) return url;
  if (/^file:/i.test(url)) {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      throw new ConfigError(`invalid file URL '${url}': use file:///absolute/path, or the path itself`);
    }
    if (!/^file:\/\/(localhost)?\//i.test(url)) {
      throw new ConfigError(
        `invalid file URL '${url}': a file URL needs an absolute path, file:///absolute/path (three slashes); ` +
          `or give the path itself (${url.replace(/^file:\/*/i, '')})`,
      );
    }
    if (u.pathname === '/' || u.pathname === '') throw new ConfigError(`invalid file URL '${url}': no file named`);
    return url;
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(url)) {
    throw new ConfigError(`unsupported URL '${url}': expected https://, http://, file:///path, a file path or memory:SIZE`);
  }
  checkLooksLikeUrl(url);
  return pathToFileURL(path.resolve(url)).href;
}

/** Parse argv (without node and script). Throws ConfigError with one clear line on bad input. */
export async function parseArgs(argv: string[]): Promise<ParseResult> {
  if (argv[0] === 'imageio-server') return { kind: 'imageio-server', argv: argv.slice(1) };
  if (argv[0] === 'engine-server') return { kind: 'engine-server', argv: argv.slice(1) };
  if (argv[0] !== undefined && !argv[0].startsWith('-')) checkNotASubcommand(argv[0]);
  const { args, statsCandidate } = normalizeArgv(argv);
  const a = parseTable(args);
  if (a.h) return { kind: 'help', text: helpText() };

  for (const u of UNSUPPORTED_NBDKIT_OPTIONS) {
    if (a[u.short ?? u.name] !== undefined && a[u.short ?? u.name] !== false) {
      throw new ConfigError(`nbdkit's --${u.name} is not supported by imageio-nbd: ${u.why}`);
    }
  }

  const ignored: string[] = [];
  const positionals: string[] = [];
  const kv: Record<string, string> = {};
  let plugin: string | undefined;
  for (const raw of (a._ as unknown[]).map(String)) {
    const eq = raw.indexOf('=');
    const colon = raw.indexOf(':');
    const key = eq > 0 && (colon === -1 || eq < colon) ? raw.slice(0, eq) : '';
    if (/^[a-z_]+$/.test(key)) {
      kv[key] = raw.slice(eq + 1);
    } else if (raw === 'python' || raw.endsWith('.py')) {
      // virt-v2v names its python plugin and script; we are the plugin.
      if (raw === 'python') plugin = raw;
      ignored.push(`plugin ${raw}`);
    } else {
      positionals.push(raw);
    }
  }
  if (kv.script !== undefined) {
    // virt-v2v 2.x passes the plugin script as script=FILE.py.
    ignored.push(`script=${kv.script}`);
    delete kv.script;
  }

  // nbdkit's informational modes: answered before a URL is required, as nbdkit does.
  if (a.V) return { kind: 'version', text: `imageio-nbd ${VERSION}` };
  if (a['dump-config']) return { kind: 'info', info: 'dump-config' };
  if (a['dump-plugin']) return { kind: 'info', info: 'dump-plugin', plugin };
  if (a['long-options']) return { kind: 'info', info: 'long-options' };
  if (a['short-options']) return { kind: 'info', info: 'short-options' };

  let stats = text(a.stats);
  if (stats === '' && statsCandidate !== undefined) {
    // "--stats FILE URL": two URL candidates and the first follows --stats, so it is the file.
    const urlCount = positionals.length + (kv.url !== undefined ? 1 : 0);
    const i = positionals.indexOf(statsCandidate);
    if (urlCount >= 2 && i !== -1) {
      stats = statsCandidate;
      positionals.splice(i, 1);
    }
  }

  let url: string | undefined;
  if (positionals.length > 1) {
    throw new ConfigError(`unexpected argument '${positionals[1]}': only one URL may be given`);
  }
  url = positionals[0];
  let isOvirtHost: boolean | undefined;
  for (const [key, value] of Object.entries(kv)) {
    switch (key) {
      case 'url':
        if (url !== undefined) throw new ConfigError(`the URL was given twice (url= and '${url}')`);
        url = value;
        break;
      case 'size':
      case 'cafile':
      case 'insecure':
        break;
      case 'is_ovirt_host':
        isOvirtHost = truthy(value);
        break;
      default:
        throw new ConfigError(`unknown parameter '${key}=': expected url=, size=, cafile=, insecure=, is_ovirt_host=`);
    }
  }
  const engine = engineConfigFrom(a);
  const jobs = jobsConfigFrom(a);
  if ((engine || jobs) && url !== undefined) throw new ConfigError('give either a transfer URL or --engine, not both');
  if (engine || jobs) url = '';
  else if (url === undefined || url === '') {
    throw new ConfigError('missing URL: give an imageio transfer URL, a disk image path or memory:SIZE (see --help)');
  } else url = normalizeUrl(url);

  const sizeText = text(a.size) ?? kv.size;
  const size = sizeText !== undefined ? parseSize(sizeText, 'size') : undefined;
  if (size === 0) throw new ConfigError('invalid size 0: the export would be empty');

  if (a.D !== undefined) ignored.push(`-D ${([] as unknown[]).concat(a.D).join(' -D ')}`);
  if (a['selinux-label'] !== undefined) ignored.push(`--selinux-label ${text(a['selinux-label'])}`);
  if (a.n) ignored.push('--newstyle (always)');

  const unixOpt = text(a.U);
  const portOpt = wholeNumberOption(a.p, '--port', 0, 65535);
  const hostOpt = text(a.i);
  const single = Boolean(a.s);
  const v4 = Boolean(a['4']);
  const v6 = Boolean(a['6']);
  const run = text(a.run);
  if (v4 && v6) throw new ConfigError('-4 and -6 contradict each other');
  if (unixOpt !== undefined && portOpt !== undefined) throw new ConfigError('use either -U/--unix or -p/--port, not both');
  if (unixOpt === '') throw new ConfigError('-U/--unix needs a socket path, or - for a private one');
  if (single && (unixOpt !== undefined || portOpt !== undefined || hostOpt !== undefined || run !== undefined)) {
    throw new ConfigError('-s/--single serves one client on stdin/stdout: it cannot be combined with -U, -p, -i or --run');
  }
  if (hostOpt !== undefined && ((v4 && net.isIP(hostOpt) === 6) || (v6 && net.isIP(hostOpt) === 4))) {
    throw new ConfigError(`-i ${hostOpt} is not an IPv${v4 ? 4 : 6} address, but ${v4 ? '-4' : '-6'} was given`);
  }
  let listen: ListenConfig;
  if (single) listen = { stdio: true };
  else if (unixOpt === '-') listen = { privateUnix: true };
  else if (unixOpt !== undefined) listen = { unix: unixOpt };
  else if (portOpt === undefined && hostOpt === undefined && run !== undefined) listen = { privateUnix: true }; // nbdkit: --run implies -U -
  else listen = { port: portOpt ?? CLI_DEFAULTS.port, host: hostOpt ?? (v6 ? '::1' : CLI_DEFAULTS.host) };

  const requestSize = parseSize(text(a['request-size']) ?? String(CLI_DEFAULTS.requestSize), 'request size');
  if (requestSize > 64 * 2 ** 20) throw new ConfigError('invalid request size: at most 64M');
  const maxBuffer = parseSize(text(a['max-buffer']) ?? String(CLI_DEFAULTS.maxBuffer), 'max buffer');
  const readahead = parseSize(text(a.readahead) ?? String(CLI_DEFAULTS.readahead), 'read-ahead size');
  if (readahead > 64 * 2 ** 20) throw new ConfigError(`invalid --readahead '${text(a.readahead)}': at most 64M`);
  const minRate = parseSize(text(a['min-rate']) ?? String(CLI_DEFAULTS.minRate), 'min rate');
  if (minRate < 1) throw new ConfigError(`invalid --min-rate '${text(a['min-rate'])}': at least 1 byte per second, e.g. 1M`);
  const maxMemory = parseSize(text(a['max-memory']) ?? String(CLI_DEFAULTS.maxMemory), 'max memory');
  if (maxMemory < MIN_MAX_MEMORY) {
    throw new ConfigError(`invalid --max-memory '${text(a['max-memory'])}': at least ${MIN_MAX_MEMORY / 2 ** 20}M`);
  }
  const coalesceIdle = seconds(a['coalesce-idle'], '--coalesce-idle', 0.001, 3600) ?? CLI_DEFAULTS.coalesceIdleSeconds;
  if (requestSize > 0 && maxBuffer < requestSize) {
    throw new ConfigError(`--max-buffer (${maxBuffer}) must be at least --request-size (${requestSize})`);
  }
  const blockSizeText = text(a['block-size']);
  const preferredBlockSize =
    blockSizeText === undefined ? undefined : blockSizeText === 'none' ? 0 : parseSize(blockSizeText, 'block size');
  if (preferredBlockSize !== undefined && preferredBlockSize !== 0 && (preferredBlockSize < 512 || preferredBlockSize > 32 * 2 ** 20 || (preferredBlockSize & (preferredBlockSize - 1)) !== 0)) {
    throw new ConfigError(`invalid block size '${blockSizeText}': a power of two from 512 to 32M, or none (advertise no block size)`);
  }

  let progress: number | undefined;
  const progressText = text(a.progress);
  if (progressText !== undefined) {
    progress = progressText === '' ? CLI_DEFAULTS.progressSeconds : seconds(progressText, '--progress', 0.1, 86400);
  }

  const insecure = Boolean(a.insecure) || (kv.insecure !== undefined ? truthy(kv.insecure) : false);
  const cafile = text(a.cafile) ?? kv.cafile;
  if (insecure && cafile !== undefined) throw new ConfigError('--cafile and --insecure contradict each other');
  const unixSocketOpt = text(a['unix-socket']);
  if (unixSocketOpt !== undefined && unixSocketOpt !== 'auto' && unixSocketOpt !== 'never') {
    throw new ConfigError(`invalid --unix-socket '${unixSocketOpt}': expected auto or never`);
  }
  // virt-v2v's plugin uses imageio's unix socket only when told it runs on the oVirt host.
  const unixSocket = unixSocketOpt ?? (isOvirtHost === false ? 'never' : 'auto');
  const logFormat = text(a['log-format']) ?? 'pretty';
  if (logFormat !== 'pretty' && logFormat !== 'json') {
    throw new ConfigError(`invalid --log-format '${logFormat}': expected pretty or json`);
  }

  const config: RunConfig = {
    url,
    size,
    cafile,
    insecure,
    unixSocket,
    connections: wholeNumberOption(a.connections, '--connections', 1) ?? CLI_DEFAULTS.connections,
    requestSize,
    readahead,
    maxBuffer,
    coalesceIdleMs: Math.round(coalesceIdle * 1000),
    preferredBlockSize,
    connectTimeoutMs: Math.round((seconds(a['connect-timeout'], '--connect-timeout', 0.001, 86400) ?? CLI_DEFAULTS.connectTimeoutSeconds) * 1000),
    requestTimeoutMs: Math.round((seconds(a['request-timeout'], '--request-timeout', 0.001, 86400) ?? CLI_DEFAULTS.requestTimeoutSeconds) * 1000),
    minRate,
    maxMemory,
    retries: wholeNumberOption(a.retries, '--retries', 0, 100) ?? CLI_DEFAULTS.retries,
    keepAliveMs: Math.round((seconds(a.keepalive, '--keepalive', 0.1, 86400) ?? CLI_DEFAULTS.keepAliveSeconds) * 1000),
    listen,
    readonly: Boolean(a.r) || engine?.direction === 'download',
    exportName: text(a.e) ?? '',
    // nbdkit: --run, --exit-with-parent and -s all imply --foreground (and so does --jobs: it reports at the end).
    foreground: Boolean(a.f) || run !== undefined || Boolean(a['exit-with-parent']) || single || jobs !== undefined,
    run,
    exitWithParent: Boolean(a['exit-with-parent']),
    pidfile: text(a.P),
    threads: wholeNumberOption(a.t, '--threads', 1, 1024) ?? CLI_DEFAULTS.threads,
    verbose: (a.v as number | undefined) ?? 0,
    logFormat,
    stats,
    progress,
    ignored,
    engine,
    jobs,
  };
  return { kind: 'run', config };
}
