/**
 * NBD server overhead against nbdkit (npm run bench:nbdkit): copy a generated sparse image
 * with nbdcopy and with qemu-img into `imageio-nbd file:///target` and into `nbdkit file
 * target`, the same kind of target, in the same run, and print both wall times, both servers'
 * CPU seconds, and the ratios (targets: wall within 1.3x of nbdkit, CPU within 1.5x).
 * Each pair runs `--repeat` times (default 3) and the median is reported.
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
  const serverTime = path.join(dir, 'server.time');
  const clientTime = path.join(dir, 'client.time');
  const statsFile = path.join(dir, 'stats.txt');
  let failures = 0;
  try {
    const layout = writeSparseImage(src, { size, seed: 7, dataFraction });
    process.stderr.write(`bench: ${size} bytes virtual, ${layout.dataBytes} bytes data, ${layout.extents} extents\n`);
    const env = { ...process.env, SRC: src };
    const rows: string[][] = [];
    for (const c of CLIENTS) {
      const wall = { nbdkit: [] as number[], ours: [] as number[] };
      const cpu = { nbdkit: [] as number[], ours: [] as number[] };
      const rss: number[] = [];
      const run = withCpu ? `${TIME} -f '%U %S' -o "${clientTime}" ${c.cmd}` : c.cmd;
      for (let i = 0; i < repeat; i++) {
        for (const server of ['nbdkit', 'imageio-nbd'] as const) {
          emptyTarget(dst, size);
          const serverArgv =
            server === 'nbdkit'
              ? ['nbdkit', '-U', '-', 'file', dst, '--run', run]
              : [process.execPath, CLI, '-U', '-', `--stats=${statsFile}`, `file://${dst}`, '--run', run];
          const argv = withCpu ? [TIME, '-f', '%U %S', '-o', serverTime, ...serverArgv] : serverArgv;
          const r = await timed(argv, env);
          if (r.status !== 0 || !sameBytes(src, dst)) {
            failures++;
            process.stderr.write(`bench: ${server} ${c.name} failed (exit ${r.status})\n${r.stderr.slice(-2000)}\n`);
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
      rows.push([c.name, fmt(wt), fmt(wo), fmt(wo / wt), fmt(ct), fmt(co), fmt(co / ct), fmt(median(rss), 0)]);
      process.stderr.write(
        `bench: ${c.name}: nbdkit ${fmt(wt)} s wall ${fmt(ct)} s CPU, imageio-nbd ${fmt(wo)} s wall ${fmt(co)} s CPU\n`,
      );
    }
    const headers = ['client', 'nbdkit wall s', 'ours wall s', 'wall ratio', 'nbdkit CPU s', 'ours CPU s', 'CPU ratio', 'ours peak RSS MiB'];
    process.stdout.write(table(headers, rows) + '\n');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return failures === 0 ? 0 : 1;
}

runBench(main);
