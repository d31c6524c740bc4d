/**
 * The command-line options of --jobs (rows of the option table, group 'engine'): many
 * transfers in one run, each job of the list saying what to move (./job-list.ts). Pure: the
 * list itself is read when the run starts, and checked as a whole before any engine call.
 *
 * --job-retries, not --retries: --retries already counts the retries of one HTTP request to
 * imageio, which stay as they are inside every job; a job retry starts the whole transfer
 * again, on another host.
 */
import { ConfigError } from '../../core/errors';
import { engineSettingsFrom, type EngineSettings } from '../engine-options';

export interface JobsConfig {
  settings: EngineSettings;
  /** The job list: a file, or '-' for stdin. */
  file: string;
  /** Undefined: qemu-img for qcow2 (and qcow2 downloads), nbdcopy for raw. */
  copyWith?: 'qemu-img' | 'nbdcopy';
  /** Our transfers per host at a time, counting the engine's other busy transfers when visible. */
  perHost: number;
  /** Times a failed upload into a new disk is started again on another host. */
  jobRetries: number;
  /** Default storage domain of new disks (--storage-domain). */
  storageDomain?: string;
}

export const DEFAULT_PER_HOST = 3;
export const DEFAULT_JOB_RETRIES = 1;

/** Options of one transfer: with --jobs, each job gives its own. */
const PER_JOB = ['run', 'disk-id', 'create-disk', 'direction', 'size', 'disk-name', 'disk-format', 'sparse', 'preallocated'] as const;

/** The --jobs options of a parsed command line, checked; undefined without --jobs. */
export function jobsConfigFrom(a: Record<string, unknown>): JobsConfig | undefined {
  if (a.jobs === undefined) {
    const stray = (['copy-with', 'per-host', 'job-retries'] as const).find((k) => a[k] !== undefined);
    if (stray) throw new ConfigError(`--${stray} goes with --jobs`);
    return undefined;
  }
  const file = String(a.jobs);
  if (file === '') throw new ConfigError('--jobs needs a file of jobs, or - for stdin');
  const stray = PER_JOB.find((k) => a[k] !== undefined && a[k] !== false);
  if (stray) throw new ConfigError(`--${stray} describes one transfer: with --jobs, give it on the job's line`);
  if (a.r) throw new ConfigError('-r/--readonly does not go with --jobs: a download job is read-only');
  const copyWith = a['copy-with'] as string | undefined;
  if (copyWith !== undefined && copyWith !== 'qemu-img' && copyWith !== 'nbdcopy') {
    throw new ConfigError(`invalid --copy-with '${copyWith}': expected qemu-img or nbdcopy`);
  }
  const storageDomain = a['storage-domain'] as string | undefined;
  if (storageDomain === '') throw new ConfigError('--storage-domain needs a name');
  return {
    settings: engineSettingsFrom(a),
    file,
    copyWith,
    perHost: count(a['per-host'], '--per-host', DEFAULT_PER_HOST, 1),
    jobRetries: count(a['job-retries'], '--job-retries', DEFAULT_JOB_RETRIES, 0),
    storageDomain,
  };
}

function count(v: unknown, what: string, def: number, min: number): number {
  if (v === undefined) return def;
  const n = typeof v === 'string' && /^\s*\d+\s*$/.test(v) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > 1000) throw new ConfigError(`invalid ${what} '${String(v)}': a whole number from ${min} to 1000`);
  return n;
}
