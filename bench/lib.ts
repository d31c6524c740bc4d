/**
 * Shared pieces of the benchmarks: running commands with wall time and the child's own
 * rusage, a built-in imageio server per run, parsing imageio-nbd's --stats output, cleanup of
 * child processes and temporary directories (also on SIGINT/SIGTERM), and printing tables.
 */
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import type { ImageioServerStats } from '../sim/imageio-server/stats';

export const ROOT = path.resolve(__dirname, '..', '..');
export const CLI = path.join(ROOT, 'bin', 'imageio-nbd.js');

// ---------------------------------------------------------------------------------------------
// Cleanup: every child a benchmark starts is tracked, so that an interrupted run stops them all
// and removes its temporary directories.

const children = new Set<ChildProcess>();
const tempDirs = new Set<string>();

/** Spawn in a process group of its own (so the whole group can be stopped) and track it. */
export function spawnTracked(cmd: string, args: string[], opts: SpawnOptions = {}): ChildProcess {
  const child = spawn(cmd, args, { ...opts, detached: true });
  track(child);
  return child;
}

/** Stop `child` (and its group, when it has one of its own) if the benchmark is interrupted. */
export function track(child: ChildProcess): void {
  children.add(child);
  child.once('exit', () => children.delete(child));
  child.once('error', () => children.delete(child));
}

function signalChild(child: ChildProcess, sig: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    // Negative pid: the process group, for children spawned detached; fall back to the pid.
    process.kill(-child.pid, sig);
  } catch {
    try {
      child.kill(sig);
    } catch {
      /* already gone */
    }
  }
}

/** A temporary directory removed at the end, on failure and on interruption. */
export function makeTempDir(parent: string, prefix: string): string {
  const dir = fs.mkdtempSync(path.join(parent, prefix));
  tempDirs.add(dir);
  return dir;
}

export function removeTempDir(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
  tempDirs.delete(dir);
}

function killAllSync(): void {
  for (const c of children) signalChild(c, 'SIGKILL');
  for (const d of tempDirs) fs.rmSync(d, { recursive: true, force: true });
  tempDirs.clear();
}

let interrupted = false;

async function onSignal(sig: NodeJS.Signals): Promise<void> {
  if (interrupted) return;
  interrupted = true;
  process.stderr.write(`bench: ${sig}: stopping ${children.size} child process(es) and removing temporary files\n`);
  const waits = [...children].map((c) => new Promise<void>((r) => (c.exitCode !== null || c.signalCode !== null ? r() : c.once('exit', () => r()))));
  for (const c of children) signalChild(c, 'SIGTERM');
  await Promise.race([Promise.all(waits), new Promise((r) => setTimeout(r, 3000))]);
  killAllSync();
  process.exit(130);
}

// ---------------------------------------------------------------------------------------------
// Running commands

export interface Timed {
  status: number;
  seconds: number;
  stderr: string;
}

/** Run argv[0] with arguments, inheriting nothing but env; returns status and wall time. */
export function timed(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<Timed> {
  const start = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const child = spawnTracked(argv[0], argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'], env });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
      if (stderr.length > 100000) stderr = stderr.slice(-50000);
    });
    child.on('error', reject);
    child.on('close', (code) => {
      resolve({ status: code ?? 1, seconds: Number(process.hrtime.bigint() - start) / 1e9, stderr });
    });
  });
}

export function sh(cmd: string): string {
  const r = spawnSync('/bin/sh', ['-c', cmd], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd}: ${r.stderr}`);
  return r.stdout;
}

/** Byte-compare two files with cmp(1). */
export function sameBytes(a: string, b: string): boolean {
  return spawnSync('cmp', ['-s', a, b]).status === 0;
}

/** Create an empty (all-hole) file of `size` bytes, replacing any old one. */
export function emptyTarget(file: string, size: number): void {
  fs.rmSync(file, { force: true });
  fs.writeFileSync(file, '');
  fs.truncateSync(file, size);
}

export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
};

// ---------------------------------------------------------------------------------------------
// Resource usage of a child, measured outside the child: GNU time (Debian package `time`)
// reports what the kernel's wait4() returns. Without it, a wrapper runs the command's script
// in its own Node process and writes process.resourceUsage() at exit.

// BENCH_NO_TIME=1 forces the wrapper (to test it on a machine that has GNU time).
export const GNU_TIME = fs.existsSync('/usr/bin/time') && !process.env.BENCH_NO_TIME ? '/usr/bin/time' : undefined;
const WRAPPER = path.join(__dirname, 'rusage-wrapper.js');

export interface Rusage {
  wallSeconds: number;
  userSeconds: number;
  sysSeconds: number;
  cpuSeconds: number;
  peakRssMiB: number;
  /** Who measured: GNU time (wait4 of the process) or the in-process wrapper. */
  source: 'time' | 'wrapper';
}

/**
 * argv (a Node script: [node, script, ...args]) prefixed so that its rusage lands in `out`.
 * Note: wait4() counts the descendants the process waited for, so only measure a process that
 * does not run the client itself (i.e. not imageio-nbd --run).
 */
export function withRusage(argv: string[], out: string): string[] {
  if (GNU_TIME) return [GNU_TIME, '-f', '%e %U %S %M', '-o', out, ...argv];
  if (argv[0] !== process.execPath) throw new Error('without /usr/bin/time only Node scripts can be measured');
  return [process.execPath, WRAPPER, out, ...argv.slice(1)];
}

export function readRusage(out: string): Rusage | undefined {
  let text: string;
  try {
    text = fs.readFileSync(out, 'utf8');
  } catch {
    return undefined;
  }
  // GNU time writes "Command exited with non-zero status N" / "Command terminated by signal N" first.
  const m = /^([\d.]+) ([\d.]+) ([\d.]+) (\d+)\s*$/m.exec(text);
  if (!m) return undefined;
  const user = Number(m[2]);
  const sys = Number(m[3]);
  const round = (x: number) => Math.round(x * 1000) / 1000;
  return {
    wallSeconds: Number(m[1]),
    userSeconds: user,
    sysSeconds: sys,
    cpuSeconds: round(user + sys),
    peakRssMiB: Number(m[4]) / 1024,
    source: GNU_TIME ? 'time' : 'wrapper',
  };
}

// ---------------------------------------------------------------------------------------------
// The built-in imageio server

export interface ImageioServerProcess {
  url: string;
  child: ChildProcess;
  /** The control socket, when started with one. */
  control?: string;
  /** The server's own counters (GET /stats on the control socket), exact bytes. */
  stats(): Promise<ImageioServerCounters | undefined>;
  /** Send a request to the control socket (e.g. POST /faults). */
  controlRequest(method: string, urlPath: string, body?: unknown): Promise<unknown>;
  stop(): Promise<void>;
}

/** The counters of the server's GET /stats that the benchmarks read. */
export type ImageioServerCounters = Pick<ImageioServerStats, 'ops' | 'methods' | 'bytesRead' | 'bytesWritten' | 'bytesZeroed' | 'flushes'>;

export class ServerStartError extends Error {
  constructor(
    message: string,
    readonly stderr: string,
  ) {
    super(message);
  }
}

/**
 * Start the built-in imageio server on TCP port 0 (and a unix socket if given). `extra` are
 * more imageio-server options; with `control` it also serves its control socket there. The
 * server's stderr is copied to ours unless `echoStderr` is false (its text is in
 * ServerStartError either way).
 */
export async function startImageioServer(
  image: string,
  unix?: string,
  extra: string[] = [],
  control?: string,
  echoStderr = true,
): Promise<ImageioServerProcess> {
  const args = [CLI, 'imageio-server', '--image', image, '--port', '0', ...(unix ? ['--unix', unix] : []), ...(control ? ['--control', control] : []), ...extra];
  const child = spawnTracked(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr += d.toString();
    if (stderr.length > 20000) stderr = stderr.slice(-10000);
    if (echoStderr) process.stderr.write(d); // server warnings stay visible
  });
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    const onData = (d: Buffer) => {
      out += d.toString();
      const nl = out.indexOf('\n');
      if (nl >= 0) {
        child.stdout!.off('data', onData);
        child.stdout!.resume();
        resolve(out.slice(0, nl).trim());
      }
    };
    child.stdout!.on('data', onData);
    child.once('error', (err) => reject(err));
    child.once('close', (code) => reject(new ServerStartError(`imageio server exited with ${code} before listening: ${stderr.trim()}`, stderr)));
  });
  const controlRequest = (method: string, urlPath: string, body?: unknown): Promise<unknown> =>
    new Promise((resolve, reject) => {
      if (!control) return reject(new Error('no control socket'));
      const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
      const req = http.request({ socketPath: control, method, path: urlPath, headers: data ? { 'content-length': data.length } : {} }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          if (res.statusCode !== 200) return reject(new Error(`control ${method} ${urlPath}: ${res.statusCode} ${text}`));
          try {
            resolve(JSON.parse(text));
          } catch (err) {
            reject(err as Error);
          }
        });
      });
      req.on('error', reject);
      req.end(data);
    });
  return {
    url,
    child,
    control,
    controlRequest,
    stats: async () => {
      if (!control) return undefined;
      try {
        return (await controlRequest('GET', '/stats')) as ImageioServerCounters;
      } catch {
        return undefined;
      }
    },
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      }),
  };
}

// ---------------------------------------------------------------------------------------------
// imageio-nbd --stats

export interface ParsedStats {
  cpuSeconds?: number;
  peakRssMiB?: number;
  /** "PUT" -> {count, bytes} etc. */
  http: Record<string, { count: number; bytes: number }>;
  /** NBD operations from the nbdkit-style lines: "write" -> {count, bytes} etc. */
  nbd: Record<string, { count: number; bytes: number }>;
}

const UNIT: Record<string, number> = { bytes: 1, KiB: 2 ** 10, MiB: 2 ** 20, GiB: 2 ** 30, TiB: 2 ** 40 };

/** Read what imageio-nbd --stats=FILE wrote. */
export function parseStats(text: string): ParsedStats {
  const out: ParsedStats = { http: {}, nbd: {} };
  const proc = /process: ([\d.]+) s user, ([\d.]+) s sys, peak RSS ([\d.]+) MiB/.exec(text);
  if (proc) {
    out.cpuSeconds = Math.round((Number(proc[1]) + Number(proc[2])) * 1000) / 1000;
    out.peakRssMiB = Number(proc[3]);
  }
  for (const m of text.matchAll(/^http ([A-Z]+(?: [a-z]+)?): (\d+) requests(?:, ([\d.]+) (bytes|KiB|MiB|GiB|TiB))?/gm)) {
    out.http[m[1]] = { count: Number(m[2]), bytes: m[3] ? Number(m[3]) * UNIT[m[4]] : 0 };
  }
  for (const m of text.matchAll(/^([a-z_]+): (\d+) ops, [\d.]+ s, ([\d.]+) (bytes|KiB|MiB|GiB|TiB)/gm)) {
    if (m[1] !== 'total') out.nbd[m[1]] = { count: Number(m[2]), bytes: Number(m[3]) * UNIT[m[4]] };
  }
  return out;
}

export function formatMiB(bytes: number): string {
  return (bytes / 2 ** 20).toFixed(bytes < 10 * 2 ** 20 ? 2 : 0);
}

/** Print rows as an aligned Markdown table. */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => '| ' + cells.map((c, i) => c.padEnd(widths[i])).join(' | ') + ' |';
  return [line(headers), '|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|', ...rows.map(line)].join('\n');
}

/** The value after --NAME on the command line, or `def`. */
export function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1] : def;
}

/**
 * Run a benchmark's main and exit with its status; an exception is printed and exits 1.
 * SIGINT, SIGTERM and SIGHUP stop the tracked children and remove the temporary directories.
 */
export function runBench(main: () => Promise<number>): void {
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, () => void onSignal(sig));
  process.on('exit', killAllSync);
  main().then(
    (code) => process.exit(code),
    (err) => {
      process.stderr.write(`bench: ${err instanceof Error ? err.stack : String(err)}\n`);
      process.exit(1);
    },
  );
}
