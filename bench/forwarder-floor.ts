/**
 * The CPU floor of moving bytes through a Node process on this machine: a forwarder that reads
 * a unix socket with `onread` into preallocated buffers and writes each chunk to another unix
 * socket, and does nothing else (no NBD, no HTTP, no copies in JavaScript). imageio-nbd moves
 * every byte the same way (one socket read into the buffer it is sent from, one socket write),
 * so its CPU per GiB cannot go below this figure; the difference is what the protocols and the
 * layers cost.
 *
 *   node dist/bench/forwarder-floor.js [--size 2G] [--chunk 1M] [--repeat 3]
 *
 * The source and the sink run in this (the parent) process; the forwarder is a child process,
 * measured by its own process.resourceUsage() when it is done (start-up included).
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseSize } from '../src/core/size';
import { arg } from './lib';

interface Usage {
  user: number;
  system: number;
  maxRssKiB: number;
}

/** The forwarder (child): read `inPath` into a ring of buffers, write each chunk to `outPath`. */
function forward(inPath: string, outPath: string, chunk: number): void {
  const RING = 16;
  const ring = Array.from({ length: RING }, () => Buffer.allocUnsafe(chunk));
  let next = 0;
  const out = net.connect(outPath);
  const src = net.connect({
    path: inPath,
    onread: {
      buffer: () => {
        const b = ring[next];
        next = (next + 1) % RING;
        return b;
      },
      callback: (n: number, buf: Uint8Array) => {
        // The ring has 16 buffers; pausing while a write waits keeps at most one in use.
        if (!out.write(buf.subarray(0, n))) {
          src.pause();
          out.once('drain', () => src.resume());
        }
        return true;
      },
    },
  } as net.NetConnectOpts);
  src.on('end', () => {
    out.end(() => {
      const r = process.resourceUsage();
      const u: Usage = { user: r.userCPUTime / 1e6, system: r.systemCPUTime / 1e6, maxRssKiB: r.maxRSS };
      process.stdout.write(JSON.stringify(u) + '\n');
      process.exit(0);
    });
  });
}

/** One run: source -> forwarder (child) -> sink, `size` bytes. */
async function runOnce(dir: string, size: number, chunk: number): Promise<Usage & { seconds: number }> {
  const inPath = path.join(dir, 'in.sock');
  const outPath = path.join(dir, 'out.sock');
  for (const p of [inPath, outPath]) fs.rmSync(p, { force: true });
  const block = Buffer.alloc(1 << 20, 0x5a);
  let received = 0;
  const sinkDone = new Promise<void>((resolve) => {
    const sink = net.createServer((c) => {
      c.on('data', (d: Buffer) => (received += d.length));
      c.on('end', () => {
        sink.close();
        resolve();
      });
    });
    sink.listen(outPath);
  });
  const source = net.createServer((c) => {
    let sent = 0;
    const pump = (): void => {
      while (sent < size) {
        const n = Math.min(block.length, size - sent);
        sent += n;
        if (!c.write(n === block.length ? block : block.subarray(0, n))) {
          c.once('drain', pump);
          return;
        }
      }
      c.end();
      source.close();
    };
    pump();
  });
  await new Promise<void>((r) => source.listen(inPath, r));
  const t0 = process.hrtime.bigint();
  const child = spawn(process.execPath, [__filename, '--forward', inPath, outPath, String(chunk)], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const status = await new Promise<number | null>((r) => child.on('exit', r));
  await sinkDone;
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  if (status !== 0 || received !== size) throw new Error(`forwarder exited ${status}, sink got ${received} of ${size} bytes`);
  return { ...(JSON.parse(out) as Usage), seconds };
}

async function main(): Promise<void> {
  const size = parseSize(arg('size', '2G'));
  const chunk = parseSize(arg('chunk', '1M'));
  const repeat = Number(arg('repeat', '3'));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'imageio-nbd-floor-'));
  try {
    const gib = size / 2 ** 30;
    console.log(`forwarder floor: ${gib} GiB through one Node process (onread into ${chunk} byte buffers, unix socket to unix socket), Node ${process.version}`);
    console.log('| run | wall s | user s/GiB | sys s/GiB | cpu s/GiB | peak RSS MiB |');
    console.log('|---|---|---|---|---|---|');
    for (let i = 1; i <= repeat; i++) {
      const u = await runOnce(dir, size, chunk);
      const row = [i, u.seconds.toFixed(2), (u.user / gib).toFixed(2), (u.system / gib).toFixed(2), ((u.user + u.system) / gib).toFixed(2), (u.maxRssKiB / 1024).toFixed(0)];
      console.log(`| ${row.join(' | ')} |`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[2] === '--forward') {
  forward(process.argv[3], process.argv[4], Number(process.argv[5]));
} else {
  main().catch((err: unknown) => {
    console.error(`forwarder-floor: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  });
}
