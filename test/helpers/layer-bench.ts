/**
 * Benchmarks of the layers alone, without sockets or HTTP (run with tsx, not jest):
 *
 *   npx tsx test/helpers/layer-bench.ts micro [GiB] [writeKiB]
 *     GiB of writeKiB writes (default 4 GiB of 256 KiB, 64 in flight on each of 4 streams)
 *     through CoalesceLayer over an inner backend that releases every buffer at once: the
 *     layer's own CPU seconds per GiB (the "direct" line is the same loop without the layer).
 *
 *   npx tsx test/helpers/layer-bench.ts backpressure [MiB per stream] [idleMs]
 *     4 streams writing their own regions, 64 x 256 KiB in flight each, through CoalesceLayer
 *     (8 MiB requests, 64 MiB bound, 4 in flight) over an inner backend that takes 50 ms per
 *     request: throughput, request count and mean request size.
 *
 *   npx tsx test/helpers/layer-bench.ts readahead [GiB] [readKiB]
 *     4 sequential streams of readKiB reads (64 in flight each) through ReadaheadLayer over
 *     an inner backend that answers at once with pooled buffers: the layer's CPU seconds per
 *     GiB ("direct": the same reads without the layer), inner requests and bytes fetched.
 *
 *   npx tsx test/helpers/layer-bench.ts download [MiB per stream] [readKiB] [streams]
 *     the same streams against a server model: 4 requests at a time (imageio's pool), each
 *     taking 2 ms plus 1 ms per MiB: throughput with and without ReadaheadLayer.
 */
import { CoalesceLayer } from '../../src/layers/coalesce/coalesce-layer';
import { ReadaheadLayer } from '../../src/layers/readahead-layer';
import { PayloadPool, releaseBuffer } from '../../src/core/payload-pool';
import type { Backend } from '../../src/core/backend';
import { NullBackend } from './null-backend';

const CALLER_RELEASES = process.env.BENCH_CALLER_RELEASES === '1';
const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** Write `total` bytes on `streams` streams of sequential writes, `depth` in flight each. */
async function stream(
  target: Backend,
  pool: PayloadPool,
  total: number,
  writeSize: number,
  streams: number,
  depth: number,
): Promise<void> {
  const perStream = Math.floor(total / streams / writeSize) * writeSize;
  const one = async (s: number) => {
    const base = s * perStream;
    const inflight: Promise<void>[] = [];
    let head = 0;
    for (let off = 0; off < perStream; off += writeSize) {
      const buf = pool.tryAllocate(writeSize) ?? (await pool.allocate(writeSize));
      const p = target.pwrite(buf, base + off);
      // The old contract (before payload ownership moved down the stack): the caller reuses its
      // buffer once pwrite resolves. Only for measuring the code from before that change.
      inflight.push(CALLER_RELEASES && target instanceof CoalesceLayer ? p.then(() => releaseBuffer(buf)) : p);
      if (inflight.length - head >= depth) await inflight[head++];
    }
    await Promise.all(inflight.slice(head));
  };
  await Promise.all(Array.from({ length: streams }, (_, s) => one(s)));
}

function cpuSeconds(start: NodeJS.CpuUsage): number {
  const u = process.cpuUsage(start);
  return (u.user + u.system) / 1e6;
}

async function micro(gib: number, writeKiB: number): Promise<void> {
  const total = gib * GiB;
  const writeSize = writeKiB * KiB;
  for (const mode of ['direct', 'coalesce', 'direct', 'coalesce']) {
    const pool = new PayloadPool({ maxLiveBytes: 512 * MiB, maxFreeBytes: 128 * MiB });
    const inner = new NullBackend(total, 0, pool);
    const target: Backend = mode === 'coalesce' ? new CoalesceLayer(inner, { idleMs: 10, pool }) : inner;
    const t0 = process.hrtime.bigint();
    const c0 = process.cpuUsage();
    await stream(target, pool, total, writeSize, 4, 64);
    await target.flush();
    const cpu = cpuSeconds(c0);
    const wall = Number(process.hrtime.bigint() - t0) / 1e9;
    console.log(
      `${mode}: ${gib} GiB of ${writeKiB} KiB writes: ${(cpu / gib).toFixed(4)} CPU s/GiB, ` +
        `${wall.toFixed(2)} s wall, ${inner.requests} inner requests, pool live ${pool.liveBytes}`,
    );
    await target.close();
  }
}

async function backpressure(mibPerStream: number, idleMs: number): Promise<void> {
  const streams = 4;
  const total = streams * mibPerStream * MiB;
  const pool = new PayloadPool({ maxLiveBytes: 1024 * MiB });
  const inner = new NullBackend(total, 50, pool);
  const layer = new CoalesceLayer(inner, { requestSize: 8 * MiB, maxBufferedBytes: 64 * MiB, maxInFlight: 4, idleMs, pool });
  const t0 = process.hrtime.bigint();
  await stream(layer, pool, total, 256 * KiB, streams, 64);
  await layer.flush();
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  const st = layer.stats() as unknown as Record<string, number>;
  console.log(
    `backpressure idle ${idleMs} ms: ${(total / MiB / wall).toFixed(1)} MiB/s, ${inner.requests} requests, ` +
      `mean ${(inner.bytes / inner.requests / MiB).toFixed(2)} MiB, sentIdle ${st.sentIdle}, sentFull ${st.sentFull}, ` +
      `sentEvicted ${st.sentEvicted}, peak buffered ${(st.maxBufferedBytes / MiB).toFixed(1)} MiB`,
  );
  await layer.close();
}

/** Read `total` bytes on `streams` sequential streams, `depth` reads in flight each; releases results. */
async function readStreams(target: Backend, total: number, readSize: number, streams: number, depth: number): Promise<void> {
  const perStream = Math.floor(total / streams / readSize) * readSize;
  const one = async (s: number) => {
    const inflight: Promise<void>[] = [];
    let head = 0;
    for (let off = 0; off < perStream; off += readSize) {
      inflight.push(target.pread(s * perStream + off, readSize).then(releaseBuffer));
      if (inflight.length - head >= depth) await inflight[head++];
    }
    await Promise.all(inflight.slice(head));
  };
  await Promise.all(Array.from({ length: streams }, (_, s) => one(s)));
}

async function readahead(gib: number, readKiB: number): Promise<void> {
  const total = gib * GiB;
  for (const mode of ['direct', 'readahead', 'direct', 'readahead']) {
    const pool = new PayloadPool({ maxLiveBytes: 512 * MiB, maxFreeBytes: 128 * MiB });
    const inner = new NullBackend(total, 0, pool);
    const target: Backend = mode === 'readahead' ? new ReadaheadLayer(inner, { pool }) : inner;
    const c0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    await readStreams(target, total, readKiB * KiB, 4, 64);
    const cpu = cpuSeconds(c0);
    const wall = Number(process.hrtime.bigint() - t0) / 1e9;
    console.log(
      `${mode}: ${gib} GiB of ${readKiB} KiB reads: ${(cpu / gib).toFixed(4)} CPU s/GiB, ${wall.toFixed(2)} s wall, ` +
        `${inner.reads} inner reads, fetched/read ${(inner.readBytes / total).toFixed(4)}, pool live ${pool.liveBytes}`,
    );
    await target.close();
  }
}

/** A server model: `slots` requests at a time, each 2 ms + 1 ms per MiB. */
class ModelServer extends NullBackend {
  private busy = 0;
  private readonly queue: Array<() => void> = [];
  constructor(size: number, pool: PayloadPool, private readonly slots = 4) {
    super(size, 0, pool);
  }
  override async pread(offset: number, length: number): Promise<Buffer> {
    if (this.busy >= this.slots) await new Promise<void>((r) => this.queue.push(r));
    else this.busy++;
    try {
      await new Promise((r) => setTimeout(r, 2 + length / MiB));
      return await super.pread(offset, length);
    } finally {
      const next = this.queue.shift();
      if (next) next();
      else this.busy--;
    }
  }
}

async function download(mibPerStream: number, readKiB: number, streams: number): Promise<void> {
  const total = streams * mibPerStream * MiB;
  for (const mode of ['direct', 'readahead']) {
    const pool = new PayloadPool({ maxLiveBytes: 512 * MiB });
    const inner = new ModelServer(total, pool);
    const layer = mode === 'readahead' ? new ReadaheadLayer(inner, { pool }) : undefined;
    const t0 = process.hrtime.bigint();
    await readStreams(layer ?? inner, total, readKiB * KiB, streams, readKiB >= 1024 ? 1 : 64);
    const wall = Number(process.hrtime.bigint() - t0) / 1e9;
    const st = layer?.stats();
    console.log(
      `download ${mode}: ${streams} x ${mibPerStream} MiB in ${readKiB} KiB reads: ${(total / MiB / wall).toFixed(1)} MiB/s, ` +
        `${inner.reads} requests, fetched/read ${(inner.readBytes / total).toFixed(4)}` +
        (st ? `, passthrough ${st.passthroughReads}, peak held ${(st.peakHeldBytes / MiB).toFixed(0)} MiB` : ''),
    );
    await (layer ?? inner).close();
  }
}

async function main(): Promise<void> {
  const [mode, a, b] = process.argv.slice(2);
  if (mode === 'micro') await micro(Number(a ?? 4), Number(b ?? 256));
  else if (mode === 'backpressure') await backpressure(Number(a ?? 64), Number(b ?? 10));
  else if (mode === 'readahead') await readahead(Number(a ?? 4), Number(b ?? 256));
  else if (mode === 'download') await download(Number(a ?? 256), Number(b ?? 256), Number(process.argv[5] ?? 4));
  else throw new Error('usage: layer-bench.ts micro|backpressure|readahead|download [args]');
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
