/**
 * NBD server overhead against nbdkit (npm run bench:nbdkit): copy a generated sparse image
 * with nbdcopy and with qemu-img into `imageio-nbd file:///target` and into `nbdkit file
 * target`, and into `imageio-nbd memory:SIZE` and `nbdkit memory SIZE`, the same kind of
 * target in the same run, and print both wall times, both servers' CPU seconds, and the
 * ratios (target: within 1.3x of nbdkit). Each pair runs `--repeat` times (default 3), the
 * two servers alternating, and the median is reported.
 *
 * Every copy is byte-verified. File targets are compared with cmp after the timed run. A
 * memory target is gone when its server exits, so each (client, server) pair first makes one
 * untimed run that copies, reads the export back with nbdcopy and compares; the timed runs
 * then copy only, so the read-back costs neither wall time nor server CPU in the figures.
 *
 * CPU of a server = CPU of the server command with everything it waited for (/usr/bin/time
 * around it) minus the CPU of the client it ran with --run (/usr/bin/time around that too), so
 * both servers are measured the same way, start-up and shutdown included. imageio-nbd's own
 * peak RSS comes from its --stats output.
 *
 *   node dist/bench/nbdkit-compare.js [--size 1G] [--repeat 3] [--data 0.33]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { writeSparseImage } from '../sim/sparse-image';
import { parseSize } from '../src/core/size';
import { arg, CLI, emptyTarget, parseStats, sameBytes, table, timed, runBench } from './lib';

const TIME = '/usr/bin/time';

/** User + system seconds that `/usr/bin/time -f '%U %S' -o FILE` wrote, or NaN. */
function cpuFrom(file: string): number {
  try {
    const lines = fs.readFileSync(file, 'utf8').trim().split('\n');
    const [u, sys] = lines[lines.length - 1].split(/\s+/).map(Number);
    return u + sys;
  } catch {
    return NaN;
  }
}

const CLIENTS = [
  { name: 'nbdcopy', cmd: 'nbdcopy "$SRC" "$uri"' },
  { name: 'nbdcopy 4M x16 --flush', cmd: 'nbdcopy --request-size=4194304 --requests=16 --flush "$SRC" "$uri"' },
  { name: 'qemu-img convert -n', cmd: 'qemu-img convert -n -f raw -O raw "$SRC" "$uri"' },
  { name: 'qemu-img convert -n -W', cmd: 'qemu-img convert -n -W -f raw -O raw "$SRC" "$uri"' },
];

/** The two kinds of target: where the copy goes for each server, and how it is checked. */
const BACKENDS = ['file', 'memory'] as const;
type Backend = (typeof BACKENDS)[number];

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const fmt = (x: number, digits = 2) => (Number.isFinite(x) ? x.toFixed(digits) : 'n/a');

async function main(): Promise<number> {
  const size = parseSize(arg('size', '1G'));
  const repeat = Number(arg('repeat', '3'));
  const dataFraction = Number(arg('data', '0.33'));
  const withCpu = fs.existsSync(TIME);
  if (!withCpu) process.stderr.write(`bench: ${TIME} is missing (Debian package "time"): no CPU figures\n`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'imageio-nbd-vs-nbdkit-'));
  const src = path.join(dir, 'source.raw');
  const dst = path.join(dir, 'target.raw');
  const check = path.join(dir, 'read-back.raw');
  const serverTime = path.join(dir, 'server.time');
  const clientTime = path.join(dir, 'client.time');
  const statsFile = path.join(dir, 'stats.txt');
  let failures = 0;
  try {
    const layout = writeSparseImage(src, { size, seed: 7, dataFraction });
    process.stderr.write(`bench: ${size} bytes virtual, ${layout.dataBytes} bytes data, ${layout.extents} extents\n`);
    const env = { ...process.env, SRC: src, CHECK: check };
    const rows: string[][] = [];
    const serverArgv = (server: 'nbdkit' | 'imageio-nbd', backend: Backend, run: string): string[] => {
      if (server === 'nbdkit') return ['nbdkit', '-U', '-', ...(backend === 'file' ? ['file', dst] : ['memory', String(size)]), '--run', run];
      return [process.execPath, CLI, '-U', '-', `--stats=${statsFile}`, backend === 'file' ? `file://${dst}` : `memory:${size}`, '--run', run];
    };
    for (const backend of BACKENDS) {
      for (const c of CLIENTS) {
        const label = `${backend} | ${c.name}`;
        if (backend === 'memory') {
          // The untimed check: copy, read the export back, compare, in one server's life.
          for (const server of ['nbdkit', 'imageio-nbd'] as const) {
            emptyTarget(check, 0);
            const r = await timed(serverArgv(server, backend, `${c.cmd} && nbdcopy "$uri" "$CHECK"`), env);
            if (r.status !== 0 || !sameBytes(src, check)) {
              failures++;
              process.stderr.write(`bench: ${server} ${label}: read-back check failed (exit ${r.status})\n${r.stderr.slice(-2000)}\n`);
            }
          }
          fs.rmSync(check, { force: true });
        }
        const wall = { nbdkit: [] as number[], ours: [] as number[] };
        const cpu = { nbdkit: [] as number[], ours: [] as number[] };
        const rss: number[] = [];
        const run = withCpu ? `${TIME} -f '%U %S' -o "${clientTime}" ${c.cmd}` : c.cmd;
        for (let i = 0; i < repeat; i++) {
          // Alternate which server goes first, so a change of load hits both alike.
          const order = i % 2 === 0 ? (['nbdkit', 'imageio-nbd'] as const) : (['imageio-nbd', 'nbdkit'] as const);
          for (const server of order) {
            if (backend === 'file') emptyTarget(dst, size);
            const argv = serverArgv(server, backend, run);
            const r = await timed(withCpu ? [TIME, '-f', '%U %S', '-o', serverTime, ...argv] : argv, env);
            if (r.status !== 0 || (backend === 'file' && !sameBytes(src, dst))) {
              failures++;
              process.stderr.write(`bench: ${server} ${label} failed (exit ${r.status})\n${r.stderr.slice(-2000)}\n`);
            }
            const key = server === 'nbdkit' ? 'nbdkit' : 'ours';
            wall[key].push(r.seconds);
            cpu[key].push(cpuFrom(serverTime) - cpuFrom(clientTime));
            if (server === 'imageio-nbd') {
              const st = fs.existsSync(statsFile) ? parseStats(fs.readFileSync(statsFile, 'utf8')) : undefined;
              rss.push(st?.peakRssMiB ?? NaN);
            }
          }
        }
        const [wt, wo, ct, co] = [median(wall.nbdkit), median(wall.ours), median(cpu.nbdkit), median(cpu.ours)];
        rows.push([backend, c.name, fmt(wt), fmt(wo), fmt(wo / wt), fmt(ct), fmt(co), fmt(co / ct), fmt(median(rss), 0)]);
        process.stderr.write(
          `bench: ${label}: nbdkit ${fmt(wt)} s wall ${fmt(ct)} s CPU, imageio-nbd ${fmt(wo)} s wall ${fmt(co)} s CPU\n`,
        );
      }
    }
    const headers = ['target', 'client', 'nbdkit wall s', 'ours wall s', 'wall ratio', 'nbdkit CPU s', 'ours CPU s', 'CPU ratio', 'ours peak RSS MiB'];
    process.stdout.write(table(headers, rows) + '\n');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return failures === 0 ? 0 : 1;
}

runBench(main);
