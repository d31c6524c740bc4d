/**
 * Upload benchmark (npm run bench): a deterministic sparse image is uploaded through
 * imageio-nbd into the built-in imageio server with four real client configurations, with
 * write coalescing on and off, over 1 and 4 HTTP connections. Each row: wall time, MiB/s of
 * data, imageio-nbd's CPU seconds and peak RSS, HTTP requests by kind with mean size, and a
 * byte-compare verdict. Prints a Markdown table.
 *
 *   node dist/bench/upload-bench.js [--size 4G] [--fraction 0.33] [--block-size 4K] [--dir /tmp] [--only REGEX]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { writeSparseImage } from '../src/tools/sparse-image';
import { parseSize } from '../src/size';
import { arg, CLI, emptyTarget, formatMiB, parseStats, sameBytes, startImageioServer, table, timed, runBench } from './lib';

interface Client {
  name: string;
  cmd: string;
}

const CLIENTS: Client[] = [
  { name: 'qemu-img convert -n', cmd: 'qemu-img convert -n -f raw -O raw "$SRC" "$uri"' },
  { name: 'qemu-img convert -n -W -m 16', cmd: 'qemu-img convert -n -W -m 16 -f raw -O raw "$SRC" "$uri"' },
  { name: 'nbdcopy', cmd: 'nbdcopy "$SRC" "$uri"' },
  { name: 'nbdcopy 4M x16 --flush', cmd: 'nbdcopy --request-size=4194304 --requests=16 --flush "$SRC" "$uri"' },
];

async function main(): Promise<number> {
  const size = parseSize(arg('size', '4G'));
  const fraction = Number(arg('fraction', String(1 / 3)));
  const only = new RegExp(arg('only', '.'));
  // The preferred block size imageio-nbd advertises (default: its own, 8M for imageio). A
  // small one (4K) makes clients keep their own request sizes, as with virt-v2v's nbdkit
  // python plugin: qemu-img 2 MiB, nbdcopy 256 KiB.
  const blockSize = process.argv.includes('--block-size') ? arg('block-size', '') : undefined;
  const dir = fs.mkdtempSync(path.join(arg('dir', os.tmpdir()), 'imageio-nbd-bench-'));
  const src = path.join(dir, 'source.raw');
  const dst = path.join(dir, 'target.raw');
  const sock = path.join(dir, 'imageio.sock');
  let failures = 0;
  try {
    const layout = writeSparseImage(src, { size, dataFraction: fraction, seed: 42 });
    const dataBytes = layout.dataBytes;
    process.stderr.write(
      `bench: image ${formatMiB(size)} MiB virtual, ${formatMiB(dataBytes)} MiB random data, ` +
        `${formatMiB(layout.zeroBytes)} MiB written zeroes, ${layout.extents} extents; ${os.cpus().length} cores; ` +
        `advertised block size ${blockSize ?? 'default'}\n`,
    );
    const rows: string[][] = [];
    for (const client of CLIENTS) {
      for (const coalesce of [true, false]) {
        for (const connections of [4, 1]) {
          const label = `${client.name} | ${coalesce ? 'on' : 'off'} | ${connections}`;
          if (!only.test(label)) continue;
          emptyTarget(dst, size);
          const server = await startImageioServer(dst, sock);
          const statsFile = path.join(dir, 'stats.txt');
          fs.rmSync(statsFile, { force: true });
          const r = await timed(
            [
              process.execPath, CLI, '--run', client.cmd, `--stats=${statsFile}`,
              '--connections', String(connections), '--request-size', coalesce ? '8M' : '0',
              ...(blockSize ? ['--block-size', blockSize] : []), server.url,
            ],
            { ...process.env, SRC: src },
          );
          await server.stop();
          const ok = r.status === 0 && sameBytes(src, dst);
          if (!ok) {
            failures++;
            process.stderr.write(`bench: ${label}: exit ${r.status}\n${r.stderr.slice(-2000)}\n`);
          }
          const st = parseStats(fs.existsSync(statsFile) ? fs.readFileSync(statsFile, 'utf8') : '');
          const http = Object.entries(st.http)
            .map(([k, v]) => (v.bytes ? `${k} ${v.count}x${formatMiB(v.bytes / v.count)}M` : `${k} ${v.count}`))
            .join(', ');
          rows.push([
            client.name, coalesce ? 'on' : 'off', String(connections), r.seconds.toFixed(2),
            (dataBytes / 2 ** 20 / r.seconds).toFixed(0),
            st.cpuSeconds !== undefined ? st.cpuSeconds.toFixed(2) : '?',
            st.cpuSeconds !== undefined ? (st.cpuSeconds / (dataBytes / 2 ** 30)).toFixed(2) : '?',
            st.peakRssMiB !== undefined ? st.peakRssMiB.toFixed(0) : '?',
            http, ok ? 'same' : 'DIFFERENT/FAILED',
          ]);
          process.stderr.write(`bench: ${label}: ${r.seconds.toFixed(2)} s\n`);
        }
      }
    }
    process.stdout.write(
      table(
        ['client', 'coalesce', 'conns', 'wall s', 'data MiB/s', 'cpu s', 'cpu s/GiB', 'peak RSS MiB', 'HTTP requests (count x mean MiB)', 'bytes'],
        rows,
      ) + '\n',
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return failures === 0 ? 0 : 1;
}

runBench(main);
