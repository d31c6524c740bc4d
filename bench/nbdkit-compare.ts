/**
 * NBD server overhead against nbdkit (npm run bench:nbdkit): copy a generated sparse image
 * with nbdcopy and with qemu-img into `imageio-nbd file:///target` and into `nbdkit file
 * target`, the same kind of target, in the same run, and print both wall times and the ratio.
 * Each pair runs `--repeat` times (default 3) and the median is reported.
 *
 *   node dist/bench/nbdkit-compare.js [--size 1G] [--repeat 3]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { writeSparseImage } from '../src/tools/sparse-image';
import { parseSize } from '../src/size';
import { arg, CLI, emptyTarget, sameBytes, table, timed, runBench } from './lib';

const CLIENTS = [
  { name: 'nbdcopy', cmd: 'nbdcopy "$SRC" "$uri"' },
  { name: 'nbdcopy 4M x16 --flush', cmd: 'nbdcopy --request-size=4194304 --requests=16 --flush "$SRC" "$uri"' },
  { name: 'qemu-img convert -n', cmd: 'qemu-img convert -n -f raw -O raw "$SRC" "$uri"' },
  { name: 'qemu-img convert -n -W', cmd: 'qemu-img convert -n -W -f raw -O raw "$SRC" "$uri"' },
];

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main(): Promise<number> {
  const size = parseSize(arg('size', '1G'));
  const repeat = Number(arg('repeat', '3'));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'imageio-nbd-vs-nbdkit-'));
  const src = path.join(dir, 'source.raw');
  const dst = path.join(dir, 'target.raw');
  let failures = 0;
  try {
    const layout = writeSparseImage(src, { size, seed: 7 });
    process.stderr.write(`bench: ${size} bytes virtual, ${layout.dataBytes} bytes data, ${layout.extents} extents\n`);
    const env = { ...process.env, SRC: src };
    const rows: string[][] = [];
    for (const c of CLIENTS) {
      const ours: number[] = [];
      const theirs: number[] = [];
      for (let i = 0; i < repeat; i++) {
        for (const server of ['nbdkit', 'imageio-nbd'] as const) {
          emptyTarget(dst, size);
          const argv =
            server === 'nbdkit'
              ? ['nbdkit', '-U', '-', 'file', dst, '--run', c.cmd]
              : [process.execPath, CLI, '-U', '-', `file://${dst}`, '--run', c.cmd];
          const r = await timed(argv, env);
          if (r.status !== 0 || !sameBytes(src, dst)) {
            failures++;
            process.stderr.write(`bench: ${server} ${c.name} failed (exit ${r.status})\n${r.stderr.slice(-2000)}\n`);
          }
          (server === 'nbdkit' ? theirs : ours).push(r.seconds);
        }
      }
      const o = median(ours);
      const t = median(theirs);
      rows.push([c.name, t.toFixed(2), o.toFixed(2), (o / t).toFixed(2)]);
      process.stderr.write(`bench: ${c.name}: nbdkit ${t.toFixed(2)} s, imageio-nbd ${o.toFixed(2)} s\n`);
    }
    process.stdout.write(table(['client', 'nbdkit file s', 'imageio-nbd file s', 'ratio'], rows) + '\n');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return failures === 0 ? 0 : 1;
}

runBench(main);
