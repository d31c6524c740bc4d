/**
 * The command-line options of engine mode: imageio-nbd asks the oVirt engine for the image
 * transfer itself instead of being given a transfer URL. addEngineOptions() registers them on
 * the main parser (so --help lists them in their own group); engineConfigFrom() checks them and
 * returns what engine mode needs, or undefined when --engine is absent. Pure: no I/O (the
 * password file is read when the run starts).
 *
 * Shared with the rest of the command line: --cafile / --insecure verify the engine as well as
 * the hosts (give a PEM bundle when the engine's certificate is not signed by the oVirt CA),
 * --size is the size of a new disk, -r/--readonly means --direction download, and the timeouts
 * (--connect-timeout, --request-timeout) apply to engine requests too.
 */
import type { Argv } from 'yargs';
import { ConfigError } from '../errors';
import { parseSize } from '../size';

/** What engine mode needs, checked. */
export interface EngineConfig {
  /** The API URL, e.g. https://engine.example.com/ovirt-engine/api (no trailing slash). */
  apiUrl: string;
  username: string;
  /** Read when the run starts: its first line is the password. */
  passwordFile: string;
  disk: { id: string } | { create: NewDisk };
  direction: 'upload' | 'download';
  /** Run the transfer on this host (by name) instead of choosing one. */
  host?: string;
  /** The transfer's inactivity_timeout, seconds; 0 turns the engine's check off. */
  inactivityTimeoutS: number;
  /** Bound on each wait for the engine (disk ready, transfer ready, finalize, cancel), seconds. */
  timeoutS: number;
}

export interface NewDisk {
  storageDomain: string;
  /** provisioned_size, bytes. */
  size: number;
  /** oVirt disk formats: raw, or cow (qcow2). */
  format: 'raw' | 'cow';
  sparse: boolean;
  name?: string;
}

const GROUP = 'oVirt engine options (instead of a URL; need --run):';

/** Every option of this group, for "needs --engine" checks. */
const ENGINE_OPTIONS = [
  'username',
  'password-file',
  'disk-id',
  'create-disk',
  'storage-domain',
  'disk-name',
  'disk-format',
  'sparse',
  'direction',
  'host',
  'inactivity-timeout',
  'engine-timeout',
] as const;
const NEW_DISK_OPTIONS = ['storage-domain', 'disk-name', 'disk-format', 'sparse'] as const;

export const DEFAULT_INACTIVITY_TIMEOUT_S = 120;
export const DEFAULT_ENGINE_TIMEOUT_S = 300;

/** Register the engine options on the main parser, in their own --help group. */
export function addEngineOptions<T>(y: Argv<T>): Argv<T> {
  return y
    .option('engine', { type: 'string', describe: 'oVirt engine API URL, e.g. https://engine.example.com/ovirt-engine/api: create the image transfer there (--cafile and --insecure apply to the engine too)', group: GROUP })
    .option('username', { type: 'string', describe: 'Engine user, e.g. admin@internal', group: GROUP })
    .option('password-file', { type: 'string', describe: "File whose first line is the user's password", group: GROUP })
    .option('disk-id', { type: 'string', describe: 'Transfer to or from this existing disk', group: GROUP })
    .option('create-disk', { type: 'boolean', describe: 'Upload into a new disk (with --storage-domain and --size); it is removed again if the upload fails', group: GROUP })
    .option('storage-domain', { type: 'string', describe: 'Storage domain of the new disk (by name)', group: GROUP })
    .option('disk-name', { type: 'string', describe: 'Name of the new disk (default imageio-nbd-upload)', group: GROUP })
    .option('disk-format', { type: 'string', choices: ['raw', 'cow', 'qcow2'], describe: 'Format of the new disk (default raw; the transfer itself is always raw data)', group: GROUP })
    .option('sparse', { type: 'boolean', describe: 'Make the new disk thin-provisioned', group: GROUP })
    .option('direction', { type: 'string', choices: ['upload', 'download'], describe: 'upload (default) writes the disk, download reads it (read-only export)', group: GROUP })
    .option('host', { type: 'string', describe: 'Run the transfer on this host instead of choosing one', group: GROUP })
    .option('inactivity-timeout', { type: 'number', describe: `Seconds without client activity before the engine pauses the transfer (default ${DEFAULT_INACTIVITY_TIMEOUT_S}; keep-alives are sent well within it)`, group: GROUP })
    .option('engine-timeout', { type: 'number', describe: `Seconds to wait for each engine step: disk ready, transfer ready, finalize (default ${DEFAULT_ENGINE_TIMEOUT_S})`, group: GROUP }) as unknown as Argv<T>;
}

/**
 * The engine options of a parsed command line, checked; undefined without --engine.
 * `a` is the parser's result (option names as written, e.g. a['disk-id']).
 */
export function engineConfigFrom(a: Record<string, unknown>): EngineConfig | undefined {
  const given = (k: string) => a[k] !== undefined && a[k] !== false;
  if (a.engine === undefined) {
    const stray = ENGINE_OPTIONS.find(given);
    if (stray) throw new ConfigError(`--${stray} needs --engine`);
    return undefined;
  }
  const apiUrl = engineApiUrl(String(a.engine));
  const username = nonEmpty(a.username, '--username');
  const passwordFile = nonEmpty(a['password-file'], '--password-file');
  if (a.run === undefined) {
    throw new ConfigError('--engine needs --run: the transfer is finalized when the command succeeds, and cancelled when it fails');
  }

  const readonly = Boolean(a.r);
  const directionOpt = a.direction as 'upload' | 'download' | undefined;
  if (readonly && directionOpt === 'upload') throw new ConfigError('-r/--readonly and --direction upload contradict each other');
  const direction = directionOpt ?? (readonly ? 'download' : 'upload');

  let disk: EngineConfig['disk'];
  if (given('create-disk')) {
    if (a['disk-id'] !== undefined) throw new ConfigError('use either --disk-id or --create-disk, not both');
    if (direction === 'download') throw new ConfigError('--create-disk makes a disk to upload into; it cannot be downloaded');
    const storageDomain = nonEmpty(a['storage-domain'], '--storage-domain (with --create-disk)');
    if (a.size === undefined) throw new ConfigError('--create-disk needs --size: the size of the new disk');
    const size = parseSize(a.size as string, 'size');
    if (size === 0) throw new ConfigError('invalid size 0: the new disk would be empty');
    const fmt = (a['disk-format'] as string | undefined) ?? 'raw';
    const name = a['disk-name'] as string | undefined;
    if (name === '') throw new ConfigError('--disk-name needs a name');
    disk = { create: { storageDomain, size, format: fmt === 'raw' ? 'raw' : 'cow', sparse: given('sparse'), name } };
  } else {
    const id = a['disk-id'];
    if (id === undefined) throw new ConfigError('--engine needs --disk-id ID, or --create-disk to upload into a new disk');
    const stray = NEW_DISK_OPTIONS.find(given);
    if (stray) throw new ConfigError(`--${stray} describes a new disk: it goes with --create-disk`);
    if (a.size !== undefined) throw new ConfigError('--size with --engine is the size of a new disk: it goes with --create-disk');
    disk = { id: nonEmpty(id, '--disk-id') };
  }

  const host = a.host as string | undefined;
  if (host === '') throw new ConfigError('--host needs a host name');
  return {
    apiUrl,
    username,
    passwordFile,
    disk,
    direction,
    host,
    inactivityTimeoutS: seconds(a['inactivity-timeout'], '--inactivity-timeout', DEFAULT_INACTIVITY_TIMEOUT_S, 0),
    timeoutS: seconds(a['engine-timeout'], '--engine-timeout', DEFAULT_ENGINE_TIMEOUT_S, 1),
  };
}

/**
 * Normalize what users type for --engine: the API URL (…/ovirt-engine/api), the engine's
 * base URL (…/ovirt-engine), or just https://HOST.
 */
export function engineApiUrl(text: string): string {
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    throw new ConfigError(`invalid --engine URL '${text}': expected https://ENGINE/ovirt-engine/api`);
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') {
    throw new ConfigError(`--engine must be an https:// (or http://) URL, not '${text}'`);
  }
  let p = u.pathname.replace(/\/+$/, '');
  if (p === '') p = '/ovirt-engine/api';
  else if (p === '/ovirt-engine') p += '/api';
  if (!p.endsWith('/api')) {
    throw new ConfigError(`--engine '${text}' is not the API URL: expected https://ENGINE/ovirt-engine/api`);
  }
  return u.origin + p;
}

function nonEmpty(v: unknown, what: string): string {
  if (typeof v !== 'string' || v === '') throw new ConfigError(`--engine needs ${what}`);
  return v;
}

function seconds(v: unknown, what: string, def: number, min: number): number {
  if (v === undefined) return def;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > 7 * 86400) {
    throw new ConfigError(`invalid ${what} ${String(v)}: whole seconds from ${min}`);
  }
  return v;
}
