/**
 * The job list of --jobs: what to move, parsed and checked as a whole before anything is asked
 * of the engine, so that a typo on line 40 does not leave 39 transfers behind.
 *
 * Two forms. Lines, one job each (blank lines and lines starting with # are skipped; words are
 * split as a shell does, with '...' and "..." quoting and backslash escapes):
 *   upload SRC [--storage-domain SD] [--size S] [--disk-format raw|cow] [--sparse] [--disk-name N] [--disk-id ID] [--group G]
 *   download DISK-ID DEST [--dest-format raw|qcow2] [--group G]
 * Or a JSON array (the text starts with "["), one object per job with the same words as keys
 * (dashes or underscores): {"upload": "a.qcow2", "storage-domain": "data", "group": "vm1"},
 * {"download": "DISK-ID", "dest": "b.raw"}.
 *
 * An upload goes into a new disk (its size defaults to the source's virtual size), or into an
 * existing one with --disk-id. Errors are one line naming the job's line (or array index).
 * Pure: no I/O (the sources are looked at by ./source-info.ts).
 */
import { ConfigError } from '../../core/errors';
import { parseSize } from '../../core/size';

export interface UploadJob {
  op: 'upload';
  /** Where the job was written: "line 3" or "item 2". */
  where: string;
  src: string;
  /** Existing disk to write; otherwise a new disk. */
  diskId?: string;
  storageDomain?: string;
  size?: number;
  diskFormat?: 'raw' | 'cow';
  sparse?: boolean;
  diskName?: string;
  group?: string;
}

export interface DownloadJob {
  op: 'download';
  where: string;
  diskId: string;
  dest: string;
  destFormat: 'raw' | 'qcow2';
  group?: string;
}

export type Job = UploadJob | DownloadJob;

/** Split a line into words as a POSIX shell does for quotes and backslashes (no expansion). */
export function splitWords(line: string): string[] {
  const words: string[] = [];
  let cur = '';
  let inWord = false;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i];
    if (ch === "'") {
      const end = line.indexOf("'", i + 1);
      if (end === -1) throw new Error("unterminated ' quote");
      cur += line.slice(i + 1, end);
      i = end;
      inWord = true;
    } else if (ch === '"') {
      i++;
      for (; i < line.length && line[i] !== '"'; i++) {
        if (line[i] === '\\' && i + 1 < line.length && '"\\$`'.includes(line[i + 1])) i++;
        cur += line[i];
      }
      if (i >= line.length) throw new Error('unterminated " quote');
      inWord = true;
    } else if (ch === '\\') {
      if (i + 1 < line.length) cur += line[++i];
      inWord = true;
    } else if (/\s/.test(ch)) {
      if (inWord) words.push(cur);
      cur = '';
      inWord = false;
    } else {
      cur += ch;
      inWord = true;
    }
  }
  if (inWord) words.push(cur);
  return words;
}

const UPLOAD_KEYS = new Set(['storage-domain', 'size', 'disk-format', 'sparse', 'disk-name', 'disk-id', 'group']);
const DOWNLOAD_KEYS = new Set(['dest-format', 'group']);
const FLAGS = new Set(['sparse']);

/** A job from its words: [op, positional..., --key value...]. */
function jobFromWords(words: string[], where: string): Job {
  const [op, ...rest] = words;
  const positional: string[] = [];
  const opts: Record<string, string | true> = {};
  const keys = op === 'upload' ? UPLOAD_KEYS : op === 'download' ? DOWNLOAD_KEYS : undefined;
  if (!keys) throw new ConfigError(`jobs ${where}: unknown job '${op}': expected upload or download`);
  for (let i = 0; i < rest.length; i++) {
    const w = rest[i];
    if (!w.startsWith('--')) {
      positional.push(w);
      continue;
    }
    let key = w.slice(2);
    let value: string | true | undefined;
    const eq = key.indexOf('=');
    if (eq !== -1) {
      value = key.slice(eq + 1);
      key = key.slice(0, eq);
    }
    if (!keys.has(key)) throw new ConfigError(`jobs ${where}: unknown option --${key} for ${op} (expected ${[...keys].map((k) => `--${k}`).join(', ')})`);
    if (key in opts) throw new ConfigError(`jobs ${where}: --${key} given twice`);
    if (FLAGS.has(key)) {
      if (value !== undefined) throw new ConfigError(`jobs ${where}: --${key} takes no value`);
      value = true;
    } else if (value === undefined) {
      if (i + 1 >= rest.length) throw new ConfigError(`jobs ${where}: --${key} needs a value`);
      value = rest[++i];
    }
    opts[key] = value;
  }
  return makeJob(op, positional, opts, where);
}

function makeJob(op: string, positional: string[], opts: Record<string, string | true>, where: string): Job {
  const str = (k: string): string | undefined => {
    const v = opts[k];
    if (v === undefined) return undefined;
    if (v === true || v === '') throw new ConfigError(`jobs ${where}: --${k} needs a value`);
    return v;
  };
  const group = str('group');
  if (op === 'upload') {
    if (positional.length !== 1) throw new ConfigError(`jobs ${where}: upload takes one source image: upload SRC [--storage-domain SD] ...`);
    const diskId = str('disk-id');
    const fmt = str('disk-format');
    if (fmt !== undefined && fmt !== 'raw' && fmt !== 'cow' && fmt !== 'qcow2') throw new ConfigError(`jobs ${where}: invalid --disk-format '${fmt}': expected raw or cow`);
    const sizeText = str('size');
    let size: number | undefined;
    if (sizeText !== undefined) {
      try {
        size = parseSize(sizeText, 'size');
      } catch (err) {
        throw new ConfigError(`jobs ${where}: ${(err as Error).message}`);
      }
      if (size === 0) throw new ConfigError(`jobs ${where}: invalid --size 0: the new disk would be empty`);
    }
    if (diskId !== undefined) {
      const stray = ['storage-domain', 'size', 'disk-format', 'sparse', 'disk-name'].find((k) => opts[k] !== undefined);
      if (stray) throw new ConfigError(`jobs ${where}: --${stray} describes a new disk: it does not go with --disk-id`);
    }
    if (fmt === 'cow' || fmt === 'qcow2') {
      // Always thin: the engine refuses COW preallocated disks (see engine-options.ts).
      opts.sparse = true;
    }
    return {
      op: 'upload',
      where,
      src: positional[0],
      diskId,
      storageDomain: str('storage-domain'),
      size,
      diskFormat: fmt === undefined ? undefined : fmt === 'raw' ? 'raw' : 'cow',
      sparse: opts.sparse === true ? true : undefined,
      diskName: str('disk-name'),
      group,
    };
  }
  if (positional.length !== 2) throw new ConfigError(`jobs ${where}: download takes a disk id and a destination: download DISK-ID DEST`);
  const destFormat = str('dest-format') ?? 'raw';
  if (destFormat !== 'raw' && destFormat !== 'qcow2') throw new ConfigError(`jobs ${where}: invalid --dest-format '${destFormat}': expected raw or qcow2`);
  return { op: 'download', where, diskId: positional[0], dest: positional[1], destFormat, group };
}

/** A job of the JSON form: {"upload": SRC, ...} or {"download": ID, "dest": FILE, ...}. */
function jobFromJson(item: unknown, where: string): Job {
  if (!item || typeof item !== 'object' || Array.isArray(item)) throw new ConfigError(`jobs ${where}: expected an object like {"upload": "disk.qcow2", "storage-domain": "data"}`);
  const o = item as Record<string, unknown>;
  const ops = ['upload', 'download'].filter((k) => k in o);
  if (ops.length !== 1) throw new ConfigError(`jobs ${where}: give exactly one of "upload": SRC or "download": DISK-ID`);
  const op = ops[0];
  const positional = [String(o[op])];
  const opts: Record<string, string | true> = {};
  const keys = op === 'upload' ? UPLOAD_KEYS : DOWNLOAD_KEYS;
  for (const [rawKey, v] of Object.entries(o)) {
    const key = rawKey.replace(/_/g, '-');
    if (key === op) continue;
    if (op === 'download' && key === 'dest') {
      positional.push(String(v));
      continue;
    }
    if (!keys.has(key)) throw new ConfigError(`jobs ${where}: unknown key "${rawKey}" for ${op}`);
    if (FLAGS.has(key)) {
      if (typeof v !== 'boolean') throw new ConfigError(`jobs ${where}: "${rawKey}" must be true or false`);
      if (v) opts[key] = true;
    } else if (typeof v === 'string' || typeof v === 'number') {
      opts[key] = String(v);
    } else {
      throw new ConfigError(`jobs ${where}: "${rawKey}" must be a string`);
    }
  }
  return makeJob(op, positional, opts, where);
}

/** Parse and check a whole job list; throws ConfigError naming the line or item. */
export function parseJobList(text: string, source: string): Job[] {
  let jobs: Job[];
  if (text.trimStart().startsWith('[')) {
    let items: unknown;
    try {
      items = JSON.parse(text);
    } catch (err) {
      throw new ConfigError(`jobs ${source}: not valid JSON: ${(err as Error).message}`);
    }
    if (!Array.isArray(items)) throw new ConfigError(`jobs ${source}: expected a JSON array of jobs`);
    jobs = items.map((item, i) => jobFromJson(item, `item ${i + 1}`));
  } else {
    jobs = [];
    text.split('\n').forEach((raw, i) => {
      const line = raw.replace(/\r$/, '');
      if (/^\s*(#|$)/.test(line)) return;
      let words: string[];
      try {
        words = splitWords(line);
      } catch (err) {
        throw new ConfigError(`jobs line ${i + 1}: ${(err as Error).message}`);
      }
      jobs.push(jobFromWords(words, `line ${i + 1}`));
    });
  }
  if (jobs.length === 0) throw new ConfigError(`jobs ${source}: no jobs (one per line: upload SRC ... or download DISK-ID DEST)`);
  checkConflicts(jobs);
  return jobs;
}

/** Jobs that would fight over one disk or one file. */
function checkConflicts(jobs: Job[]): void {
  const disks = new Map<string, string>();
  const dests = new Map<string, string>();
  const names = new Map<string, string>();
  for (const j of jobs) {
    if (j.diskId !== undefined) {
      const other = disks.get(j.diskId);
      if (other) throw new ConfigError(`jobs ${j.where}: disk ${j.diskId} is also used by ${other}: a disk can be in one transfer at a time`);
      disks.set(j.diskId, j.where);
    }
    if (j.op === 'download') {
      const other = dests.get(j.dest);
      if (other) throw new ConfigError(`jobs ${j.where}: ${j.dest} is also the destination of ${other}`);
      dests.set(j.dest, j.where);
    } else if (j.diskName !== undefined) {
      const other = names.get(j.diskName);
      if (other) throw new ConfigError(`jobs ${j.where}: disk name ${j.diskName} is also used by ${other}`);
      names.set(j.diskName, j.where);
    }
  }
}
