/**
 * Every command-line option in one table: the parser (parse.ts), --help, nbdkit's
 * --long-options/--short-options and the README's options tables are all made from it, so
 * they cannot drift apart. To add an option, add a row here and read it in parse.ts.
 */
import { optionLabel, type OptionRow } from '../core/command-line';
import { DEFAULTS } from '../core/defaults';
import { formatSizeOption } from '../core/size';
import { NBD_DEFAULT_PORT } from '../nbd/codec/constants';
import { DEFAULT_ENGINE_TIMEOUT_S, DEFAULT_FINALIZE_TIMEOUT_S, DEFAULT_INACTIVITY_TIMEOUT_S } from './engine-options';
import { DEFAULT_JOB_RETRIES, DEFAULT_PER_HOST } from './jobs/jobs-options';

/** Defaults in --help come from the one table (src/core/defaults.ts), written as a user types them. */
const size = formatSizeOption;
const secs = (ms: number): number => ms / 1000;

export type OptionGroup = 'nbdkit' | 'imageio' | 'engine' | 'output';

/** A row of the main command's table: the shared row shape, in a group of --help. */
export interface OptionSpec extends OptionRow {
  group: OptionGroup;
}

export const OPTIONS: readonly OptionSpec[] = [
  // nbdkit's options, with nbdkit's meaning and spellings.
  { name: 'unix', short: 'U', type: 'string', arg: 'SOCKET', group: 'nbdkit', describe: 'Listen on a unix socket ("-": a private one in a temporary directory, implied by --run)' },
  { name: 'port', short: 'p', type: 'string', arg: 'PORT', group: 'nbdkit', describe: `Listen on this TCP port (default ${NBD_DEFAULT_PORT} when there is no -U)` },
  { name: 'ipaddr', short: 'i', aliases: ['ip-addr'], type: 'string', arg: 'ADDR', group: 'nbdkit', describe: `Listen on this address (default ${DEFAULTS.host}; ::1 with -6)` },
  { name: 'ipv4-only', short: '4', type: 'flag', group: 'nbdkit', describe: 'Listen on IPv4 only' },
  { name: 'ipv6-only', short: '6', type: 'flag', group: 'nbdkit', describe: 'Listen on IPv6 only' },
  { name: 'single', short: 's', aliases: ['stdin'], type: 'flag', group: 'nbdkit', describe: 'Serve one client on stdin/stdout, then exit (implies --foreground)' },
  { name: 'foreground', short: 'f', aliases: ['no-fork'], type: 'flag', group: 'nbdkit', describe: 'Stay in the foreground; without it the command detaches once listening' },
  { name: 'run', type: 'string', arg: 'CMD', group: 'nbdkit', describe: 'Captive mode: run CMD with $uri $nbd $unixsocket $port $exportname set; flush, exit with its status' },
  { name: 'exit-with-parent', type: 'flag', group: 'nbdkit', describe: 'Exit (flushing first) when the parent process exits; implies --foreground' },
  { name: 'pidfile', short: 'P', aliases: ['pid-file'], type: 'string', arg: 'FILE', group: 'nbdkit', describe: 'Write the process id to FILE once the socket listens' },
  { name: 'readonly', short: 'r', aliases: ['read-only'], type: 'flag', group: 'nbdkit', describe: 'Serve the export read-only' },
  { name: 'exportname', short: 'e', aliases: ['export-name', 'export'], type: 'string', arg: 'NAME', group: 'nbdkit', describe: 'Export name (default "")' },
  { name: 'threads', short: 't', type: 'string', arg: 'N', group: 'nbdkit', describe: `Requests served at once per NBD connection (default ${DEFAULTS.threads})` },
  { name: 'newstyle', short: 'n', aliases: ['new-style'], type: 'flag', group: 'nbdkit', describe: 'Fixed newstyle protocol: always on' },
  { name: 'verbose', short: 'v', type: 'count', group: 'nbdkit', describe: 'Debug: one line per NBD and HTTP request, the cause chain of failures (-vv: trace)' },
  { name: 'version', short: 'V', type: 'flag', group: 'nbdkit', describe: 'Print the version and exit' },
  { name: 'help', short: 'h', type: 'flag', group: 'nbdkit', describe: 'Print this help and exit' },
  { name: 'dump-config', type: 'flag', group: 'nbdkit', describe: 'Print nbdkit-style key=value facts (version= is the nbdkit release emulated) and exit' },
  { name: 'dump-plugin', type: 'flag', group: 'nbdkit', describe: 'Print nbdkit-style plugin facts and exit' },
  { name: 'long-options', type: 'flag', group: 'nbdkit', describe: 'List the long options, one a line, and exit' },
  { name: 'short-options', type: 'flag', group: 'nbdkit', describe: 'List the short options, one a line, and exit' },
  { name: 'debug', short: 'D', type: 'string', arg: 'FLAG', group: 'nbdkit', describe: 'nbdkit debug flag: accepted and ignored' },
  { name: 'selinux-label', type: 'string', arg: 'LABEL', group: 'nbdkit', describe: 'Accepted and ignored (the socket keeps the label of its directory)' },

  // Talking to imageio.
  { name: 'cafile', type: 'string', arg: 'FILE', group: 'imageio', describe: "Verify imageio's certificate with the CA(s) in FILE (default: the system CAs)" },
  { name: 'insecure', type: 'flag', group: 'imageio', describe: "Do not verify imageio's certificate" },
  { name: 'unix-socket', type: 'string', arg: 'auto|never', group: 'imageio', describe: `Use imageio's local unix socket when it offers one and it answers (default ${DEFAULTS.unixSocket})` },
  { name: 'connections', type: 'string', arg: 'N', group: 'imageio', describe: `HTTP connections in the pool (default ${DEFAULTS.connections}, capped by imageio's max_readers/max_writers)` },
  { name: 'request-size', type: 'string', arg: 'SIZE', group: 'imageio', describe: `Merge writes into HTTP requests of this size (default ${size(DEFAULTS.requestSize)}; 0: off)` },
  { name: 'readahead', type: 'string', arg: 'SIZE', group: 'imageio', describe: `Read sequential reads ahead in HTTP requests of this size, within data extents (default ${size(DEFAULTS.readahead)}; 0: off)` },
  { name: 'max-buffer', type: 'string', arg: 'SIZE', group: 'imageio', describe: `Bound on write data buffered or in flight to imageio (default ${size(DEFAULTS.maxBuffer)})` },
  { name: 'coalesce-idle', type: 'string', arg: 'S', group: 'imageio', describe: `Send a partly filled request after S seconds without new writes to it (default ${secs(DEFAULTS.coalesceIdleMs)})` },
  { name: 'size', type: 'string', arg: 'SIZE', group: 'imageio', describe: 'Export size, at most the transfer size (default: the size imageio reports)' },
  { name: 'block-size', type: 'string', arg: 'SIZE', group: 'imageio', describe: 'Preferred block size advertised to NBD clients, or none (default 4K for imageio: clients keep their own request sizes and zero detection; 4M otherwise)' },
  { name: 'connect-timeout', type: 'string', arg: 'S', group: 'imageio', describe: `Seconds to wait for an HTTP connection (default ${secs(DEFAULTS.connectTimeoutMs)})` },
  { name: 'request-timeout', type: 'string', arg: 'S', group: 'imageio', describe: `Deadline of one HTTP request, headers and body, in seconds; data requests get more for their bytes at --min-rate (default ${secs(DEFAULTS.requestTimeoutMs)})` },
  { name: 'min-rate', type: 'string', arg: 'SIZE', group: 'imageio', describe: `Slowest rate per second tolerated for request and response bodies: a request may take --request-timeout plus its size at this rate (default ${size(DEFAULTS.minRate)})` },
  { name: 'max-memory', type: 'string', arg: 'SIZE', group: 'imageio', describe: `Bound on all data held in memory: NBD writes being received or waiting, buffered and in-flight writes, read replies, read-ahead (default ${size(DEFAULTS.maxMemory)})` },
  { name: 'retries', type: 'string', arg: 'N', group: 'imageio', describe: `Retries of an HTTP request that can safely be repeated: reads always, writes only when provably not done (default ${DEFAULTS.retries})` },
  { name: 'keepalive', type: 'string', arg: 'S', group: 'imageio', describe: `Keep-alive request on HTTP connections idle S seconds (default ${secs(DEFAULTS.keepAliveMs)}; imageio closes them at 60)` },

  // Engine mode: the transfer is created on the oVirt engine instead of being given (src/engine/).
  { name: 'engine', type: 'string', arg: 'URL', group: 'engine', describe: 'oVirt engine API URL (https://ENGINE/ovirt-engine/api) instead of a transfer URL: create the transfer there (needs --run; --cafile/--insecure apply to it)' },
  { name: 'username', type: 'string', arg: 'USER', group: 'engine', describe: 'Engine user, e.g. admin@internal' },
  { name: 'password-file', type: 'string', arg: 'FILE', group: 'engine', describe: "File whose first line is the user's password" },
  { name: 'disk-id', type: 'string', arg: 'ID', group: 'engine', describe: 'Transfer to or from this existing disk' },
  { name: 'create-disk', type: 'flag', group: 'engine', describe: 'Upload into a new disk (with --storage-domain and --size); removed again if the upload fails; its id is printed (disk-id=ID)' },
  { name: 'storage-domain', type: 'string', arg: 'NAME', group: 'engine', describe: 'Storage domain of the new disk (with --jobs: of every new disk whose job names none)' },
  { name: 'disk-name', type: 'string', arg: 'NAME', group: 'engine', describe: 'Name of the new disk (default imageio-nbd-DATE-TIME-RANDOM, unique)' },
  { name: 'disk-format', type: 'string', arg: 'raw|cow', group: 'engine', describe: 'Format of the new disk (default raw; cow is always thin; the transfer itself is always raw data)' },
  { name: 'sparse', type: 'flag', group: 'engine', describe: 'Make a new raw disk thin-provisioned (not on block storage)' },
  { name: 'preallocated', type: 'flag', group: 'engine', describe: 'Make a new raw disk preallocated (the default for raw; refused for cow)' },
  { name: 'direction', type: 'string', arg: 'upload|download', group: 'engine', describe: 'upload writes the disk, download reads it (a read-only export); required with --disk-id' },
  { name: 'host', type: 'string', arg: 'NAME', group: 'engine', describe: 'Run the transfer on this host instead of choosing one (default: this machine if it can, else the least busy, else the engine chooses)' },
  { name: 'inactivity-timeout', type: 'string', arg: 'S', group: 'engine', describe: `Seconds without client activity before the engine applies --timeout-policy (default ${DEFAULT_INACTIVITY_TIMEOUT_S}; keep-alives go well within it)` },
  { name: 'timeout-policy', type: 'string', arg: 'legacy|pause|cancel', group: 'engine', describe: 'What the engine does with an idle transfer, e.g. of a killed run (default cancel; pause for an upload into an existing disk, which cancel would delete)' },
  { name: 'engine-timeout', type: 'string', arg: 'S', group: 'engine', describe: `Seconds to wait for each engine step before finalize: disk ready, transfer ready, cancel (default ${DEFAULT_ENGINE_TIMEOUT_S})` },
  { name: 'finalize-timeout', type: 'string', arg: 'S', group: 'engine', describe: `Seconds to wait for the engine's verdict once finalize was sent; nothing is deleted when it runs out (default ${DEFAULT_FINALIZE_TIMEOUT_S})` },
  { name: 'jobs', type: 'string', arg: 'FILE|-', group: 'engine', describe: 'Many transfers: one job a line (upload SRC [--storage-domain SD] [--group G]..., download DISK-ID DEST) or a JSON array; spread over the hosts, copied by qemu-img or nbdcopy (see "Many disks")' },
  { name: 'copy-with', type: 'string', arg: 'qemu-img|nbdcopy', group: 'engine', describe: 'With --jobs: the copying program (default qemu-img for qcow2, nbdcopy for raw)' },
  { name: 'per-host', type: 'string', arg: 'N', group: 'engine', describe: `With --jobs: at most N transfers per host at a time, counting the engine's other transfers when visible (default ${DEFAULT_PER_HOST})` },
  { name: 'job-retries', type: 'string', arg: 'N', group: 'engine', describe: `With --jobs: start a failed upload into a new disk again on another host, up to N times (default ${DEFAULT_JOB_RETRIES})` },

  // What the command prints.
  { name: 'stats', type: 'string', arg: 'FILE', optionalValue: true, group: 'output', describe: 'At exit: nbdkit stats-filter lines, http and process lines, on stderr or in FILE (--stats FILE works too)' },
  { name: 'progress', type: 'string', arg: 'N', optionalValue: true, group: 'output', describe: `Progress every N seconds (default ${DEFAULTS.progressSeconds}) on stderr: done, rate, ETA, and a final line` },
  { name: 'log-format', type: 'string', arg: 'pretty|json', group: 'output', describe: 'Log lines on stderr; json also makes progress and stats JSON lines (default pretty)' },
];

/**
 * nbdkit options imageio-nbd does not implement: accepted by the parser only to say so in one
 * clear line, instead of "unknown argument".
 */
export const UNSUPPORTED_NBDKIT_OPTIONS: ReadonlyArray<{ name: string; short?: string; takesValue: boolean; why: string }> = [
  { name: 'filter', takesValue: true, why: 'imageio-nbd has its own layers (coalescing, stats) and loads no nbdkit filters' },
  { name: 'tls', takesValue: true, why: 'NBD over TLS is not implemented: serve on a unix socket (-U) or on 127.0.0.1' },
  { name: 'tls-certificates', takesValue: true, why: 'NBD over TLS is not implemented' },
  { name: 'tls-psk', takesValue: true, why: 'NBD over TLS is not implemented' },
  { name: 'tls-verify-peer', takesValue: false, why: 'NBD over TLS is not implemented' },
  { name: 'oldstyle', short: 'o', takesValue: false, why: 'only the fixed newstyle protocol is served' },
  { name: 'old-style', takesValue: false, why: 'only the fixed newstyle protocol is served' },
  { name: 'no-sr', takesValue: false, why: 'structured replies cannot be turned off' },
  { name: 'mask-handshake', takesValue: true, why: 'the handshake flags are fixed' },
  { name: 'vsock', takesValue: false, why: 'AF_VSOCK is not available to Node.js' },
  { name: 'swap', takesValue: false, why: 'swap mode is not implemented' },
  { name: 'user', short: 'u', takesValue: true, why: 'run it as that user instead (e.g. with runuser)' },
  { name: 'group', short: 'g', takesValue: true, why: 'run it as that group instead (e.g. with runuser -g)' },
  { name: 'log', takesValue: true, why: 'logs always go to stderr (see --log-format)' },
];

export const GROUP_TITLES: Record<OptionGroup, string> = {
  nbdkit: "nbdkit's options (nbdkit's meaning):",
  imageio: 'imageio options:',
  engine: 'oVirt engine options (instead of a URL; need --run, or --jobs):',
  output: 'output options:',
};

export { optionLabel };

/** The virt-v2v plugin parameters, as --help and the README list them. */
export const PLUGIN_PARAMETERS: ReadonlyArray<{ label: string; describe: string }> = [
  { label: 'url=URL', describe: 'The transfer URL (the same as giving URL)' },
  { label: 'size=SIZE', describe: 'Export size (as --size)' },
  { label: 'cafile=FILE', describe: 'As --cafile' },
  { label: 'insecure=true', describe: 'As --insecure' },
  { label: 'is_ovirt_host=true|false', describe: "false: never use imageio's unix socket (as --unix-socket never)" },
  { label: 'script=FILE.py, python, FILE.py', describe: "virt-v2v's plugin name and script: accepted and ignored" },
];

/** All long options the parser accepts, in table order (nbdkit's --long-options). */
export function longOptionNames(): string[] {
  return OPTIONS.flatMap((o) => [o.name, ...(o.aliases ?? [])]);
}

/** All short options the parser accepts (nbdkit's --short-options). */
export function shortOptionNames(): string[] {
  return OPTIONS.filter((o) => o.short).map((o) => o.short!);
}
