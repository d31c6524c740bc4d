/**
 * The command-line options of engine mode: imageio-nbd asks the oVirt engine for the image
 * transfer itself instead of being given a transfer URL. They are rows of the option table
 * (src/cli/option-table.ts, group 'engine'); engineConfigFrom() checks them and
 * returns what engine mode needs, or undefined when --engine is absent. Pure: no I/O (the
 * password file is read when the run starts).
 *
 * Shared with the rest of the command line: --cafile / --insecure verify the engine as well as
 * the hosts (give a PEM bundle when the engine's certificate is not signed by the oVirt CA),
 * --size is the size of a new disk, -r/--readonly means --direction download, and the timeouts
 * (--connect-timeout, --request-timeout) apply to engine requests too.
 */
import { ConfigError } from '../core/errors';
import { parseSize } from '../core/size';
import type { LifecycleSettings, NewDisk, TimeoutPolicy } from '../engine/transfer-lifecycle';

/** What every transfer through the engine needs, checked (engine mode and --jobs). */
export interface EngineSettings extends LifecycleSettings {
  /** The API URL, e.g. https://engine.example.com/ovirt-engine/api (no trailing slash). */
  apiUrl: string;
  username: string;
  /** Read when the run starts: its first line is the password. */
  passwordFile: string;
  /** Run the transfer on this host (by name) instead of choosing one. */
  host?: string;
  /** The transfer's inactivity_timeout, seconds; 0 turns the engine's check off. */
  inactivityTimeoutS: number;
  /**
   * --timeout-policy: what the engine does with a transfer whose client went idle (a killed
   * run). Undefined: engine mode picks (cancel, except pause for an upload into an existing disk).
   */
  timeoutPolicy?: TimeoutPolicy;
  /** Bound on each wait for the engine before finalize (disk ready, transfer ready, cancel), seconds. */
  timeoutS: number;
  /** Bound on the wait for the engine's verdict once finalize was sent, seconds. */
  finalizeTimeoutS: number;
}

/** What engine mode (one transfer) needs, checked. */
export interface EngineConfig extends EngineSettings {
  disk: { id: string } | { create: NewDisk };
  direction: 'upload' | 'download';
}

export type { NewDisk, TimeoutPolicy } from '../engine/transfer-lifecycle';

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
  'preallocated',
  'direction',
  'host',
  'inactivity-timeout',
  'timeout-policy',
  'engine-timeout',
  'finalize-timeout',
  'jobs',
  'copy-with',
  'per-host',
  'job-retries',
] as const;
const NEW_DISK_OPTIONS = ['storage-domain', 'disk-name', 'disk-format', 'sparse', 'preallocated'] as const;

export const DEFAULT_INACTIVITY_TIMEOUT_S = 120;
export const DEFAULT_ENGINE_TIMEOUT_S = 300;
/** Verifying and tearing down a big upload can take long; giving up early would say nothing useful. */
export const DEFAULT_FINALIZE_TIMEOUT_S = 1800;

/** Register the engine options on the main parser, in their own --help group. */
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
  // --jobs: each job says what to move (src/cli/jobs/jobs-options.ts).
  if (a.jobs !== undefined) return undefined;
  const settings = engineSettingsFrom(a);
  if (a.run === undefined) {
    throw new ConfigError('--engine needs --run: the transfer is finalized when the command succeeds, and cancelled when it fails');
  }

  const readonly = Boolean(a.r);
  const directionOpt = a.direction as string | undefined;
  if (directionOpt !== undefined && directionOpt !== 'upload' && directionOpt !== 'download') {
    throw new ConfigError(`invalid --direction '${directionOpt}': expected upload or download`);
  }
  if (readonly && directionOpt === 'upload') throw new ConfigError('-r/--readonly and --direction upload contradict each other');
  const direction = directionOpt ?? (readonly ? 'download' : given('create-disk') ? 'upload' : undefined);

  let disk: EngineConfig['disk'];
  if (given('create-disk')) {
    if (a['disk-id'] !== undefined) throw new ConfigError('use either --disk-id or --create-disk, not both');
    if (direction === 'download') throw new ConfigError('--create-disk makes a disk to upload into; it cannot be downloaded');
    const storageDomain = nonEmpty(a['storage-domain'], '--storage-domain (with --create-disk)');
    if (a.size === undefined) throw new ConfigError('--create-disk needs --size: the size of the new disk');
    const size = parseSize(a.size as string, 'size');
    if (size === 0) throw new ConfigError('invalid size 0: the new disk would be empty');
    const fmt = (a['disk-format'] as string | undefined) ?? 'raw';
    if (fmt !== 'raw' && fmt !== 'cow' && fmt !== 'qcow2') throw new ConfigError(`invalid --disk-format '${fmt}': expected raw or cow`);
    const format = fmt === 'raw' ? 'raw' : 'cow';
    if (given('sparse') && given('preallocated')) throw new ConfigError('--sparse and --preallocated contradict each other');
    // The engine refuses a COW preallocated disk unless it is for incremental backup
    // (ovirt-engine ImagesHandler.checkImageConfiguration, run by AddDiskCommand.validate): a
    // cow disk is thin. A raw disk is preallocated unless --sparse (raw sparse is refused on
    // block storage, which is checked once the storage domain is known).
    if (format === 'cow' && given('preallocated')) {
      throw new ConfigError('--disk-format cow cannot be --preallocated: the engine refuses COW preallocated disks; drop --preallocated, or use --disk-format raw');
    }
    const sparse = format === 'cow' ? true : given('sparse');
    const name = a['disk-name'] as string | undefined;
    if (name === '') throw new ConfigError('--disk-name needs a name');
    disk = { create: { storageDomain, size, format, sparse, name } };
  } else {
    const id = a['disk-id'];
    if (id === undefined) throw new ConfigError('--engine needs --disk-id ID, or --create-disk to upload into a new disk');
    const stray = NEW_DISK_OPTIONS.find(given);
    if (stray) throw new ConfigError(`--${stray} describes a new disk: it goes with --create-disk`);
    if (a.size !== undefined) throw new ConfigError('--size with --engine is the size of a new disk: it goes with --create-disk');
    disk = { id: nonEmpty(id, '--disk-id') };
  }
  // No default direction for an existing disk: an upload that fails leaves it partly
  // overwritten, so a backup script that forgot --direction download must not write it.
  if (direction === undefined) {
    throw new ConfigError('--disk-id needs --direction upload or --direction download (-r): an upload overwrites the disk, a download only reads it');
  }

  return { ...settings, disk, direction };
}

/** The options every transfer through the engine shares, checked (--engine is given). */
export function engineSettingsFrom(a: Record<string, unknown>): EngineSettings {
  const apiUrl = engineApiUrl(String(a.engine));
  const username = nonEmpty(a.username, '--username');
  const passwordFile = nonEmpty(a['password-file'], '--password-file');
  const host = a.host as string | undefined;
  if (host === '') throw new ConfigError('--host needs a host name');
  const policy = a['timeout-policy'] as string | undefined;
  if (policy !== undefined && policy !== 'legacy' && policy !== 'pause' && policy !== 'cancel') {
    throw new ConfigError(`invalid --timeout-policy '${policy}': expected legacy, pause or cancel`);
  }
  return {
    apiUrl,
    username,
    passwordFile,
    host,
    inactivityTimeoutS: seconds(a['inactivity-timeout'], '--inactivity-timeout', DEFAULT_INACTIVITY_TIMEOUT_S, 0),
    timeoutPolicy: policy,
    timeoutS: seconds(a['engine-timeout'], '--engine-timeout', DEFAULT_ENGINE_TIMEOUT_S, 1),
    finalizeTimeoutS: seconds(a['finalize-timeout'], '--finalize-timeout', DEFAULT_FINALIZE_TIMEOUT_S, 1),
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
  if (typeof v === 'string' && /^\s*\d+\s*$/.test(v)) v = Number(v);
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > 7 * 86400) {
    throw new ConfigError(`invalid ${what} ${String(v)}: whole seconds from ${min}`);
  }
  return v;
}
