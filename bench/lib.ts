/**
 * Shared pieces of the benchmarks: running commands with wall time, a built-in imageio server
 * per run, parsing imageio-nbd's --stats output, and printing tables.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

export const ROOT = path.resolve(__dirname, '..', '..');
export const CLI = path.join(ROOT, 'bin', 'imageio-nbd.js');

export interface Timed {
  status: number;
  seconds: number;
  stderr: string;
}

/** Run argv[0] with arguments, inheriting nothing but env; returns status and wall time. */
export function timed(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<Timed> {
  const start = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'], env });
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

export interface ImageioServerProcess {
  url: string;
  child: ChildProcess;
  stop(): Promise<void>;
}

/** Start the built-in imageio server on TCP port 0 (and a unix socket if given). */
export async function startImageioServer(image: string, unix?: string, extra: string[] = []): Promise<ImageioServerProcess> {
  const args = [CLI, 'imageio-server', '--image', image, '--port', '0', ...(unix ? ['--unix', unix] : []), ...extra];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
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
    child.once('exit', (code) => reject(new Error(`imageio server exited with ${code} before listening`)));
  });
  return {
    url,
    child,
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      }),
  };
}

export interface ParsedStats {
  cpuSeconds?: number;
  peakRssMiB?: number;
  /** "PUT" -> {count, meanBytes} etc. */
  http: Record<string, { count: number; bytes: number }>;
}

const UNIT: Record<string, number> = { bytes: 1, KiB: 2 ** 10, MiB: 2 ** 20, GiB: 2 ** 30, TiB: 2 ** 40 };

/** Read what imageio-nbd --stats=FILE wrote. */
export function parseStats(text: string): ParsedStats {
  const out: ParsedStats = { http: {} };
  const proc = /process: ([\d.]+) s user, ([\d.]+) s sys, peak RSS ([\d.]+) MiB/.exec(text);
  if (proc) {
    out.cpuSeconds = Number(proc[1]) + Number(proc[2]);
    out.peakRssMiB = Number(proc[3]);
  }
  for (const m of text.matchAll(/^http ([A-Z]+(?: [a-z]+)?): (\d+) requests(?:, ([\d.]+) (bytes|KiB|MiB|GiB|TiB))?/gm)) {
    out.http[m[1]] = { count: Number(m[2]), bytes: m[3] ? Number(m[3]) * UNIT[m[4]] : 0 };
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

/** Run a benchmark's main and exit with its status; an exception is printed and exits 1. */
export function runBench(main: () => Promise<number>): void {
  main().then(
    (code) => process.exit(code),
    (err) => {
      process.stderr.write(`bench: ${err instanceof Error ? err.stack : String(err)}\n`);
      process.exit(1);
    },
  );
}
