/**
 * Deterministic sparse test images: random data in extents of 4 KiB to 64 MiB (log-uniform,
 * 4 KiB aligned) separated by holes, about `dataFraction` of the virtual size, plus a few
 * allocated all-zero extents (which copy tools detect and send as zero requests).
 * The same seed gives the same bytes, so benchmarks and demos are repeatable.
 *
 * CLI: node dist/sim/sparse-image.js PATH SIZE [DATA_FRACTION] [SEED]
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { parseSize } from '../src/core/size';

export interface SparseImageOptions {
  size: number;
  /** Fraction of the size that is random data (default 1/3). */
  dataFraction?: number;
  seed?: number;
  minExtent?: number;
  maxExtent?: number;
}

export interface SparseImageSummary {
  size: number;
  dataBytes: number;
  zeroBytes: number;
  extents: number;
}

const ALIGN = 4096;

/** A small seeded PRNG (mulberry32) for the layout; the data itself comes from AES-CTR. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The layout alone: [offset, length, kind] triples, deterministic for a seed. */
export function sparseLayout(opts: SparseImageOptions): Array<{ offset: number; length: number; kind: 'data' | 'zero' }> {
  const size = opts.size;
  const fraction = opts.dataFraction ?? 1 / 3;
  const minE = opts.minExtent ?? 4096;
  const maxE = opts.maxExtent ?? 64 * 2 ** 20;
  const rand = prng(opts.seed ?? 1);
  const out: Array<{ offset: number; length: number; kind: 'data' | 'zero' }> = [];
  let pos = 0;
  while (pos < size) {
    const logLen = Math.log(minE) + rand() * (Math.log(maxE) - Math.log(minE));
    let len = Math.max(ALIGN, Math.floor(Math.exp(logLen) / ALIGN) * ALIGN);
    // Gap sized so that data / (data + gap) is about `fraction` on average.
    let gap = Math.floor((len * (1 / fraction - 1) * (0.5 + rand())) / ALIGN) * ALIGN;
    if (pos === 0 && rand() < 0.5) gap = 0; // often start with data, like a boot sector
    pos += gap;
    if (pos >= size) break;
    len = Math.min(len, size - pos);
    out.push({ offset: pos, length: len, kind: rand() < 0.05 ? 'zero' : 'data' });
    pos += len;
  }
  return out;
}

/** Create (or replace) PATH as a sparse image. */
export function writeSparseImage(path: string, opts: SparseImageOptions): SparseImageSummary {
  const layout = sparseLayout(opts);
  const key = crypto.createHash('sha256').update(`imageio-nbd-${opts.seed ?? 1}`).digest().subarray(0, 16);
  const fd = fs.openSync(path, 'w');
  const chunk = 8 * 2 ** 20;
  const zeroes = Buffer.alloc(chunk);
  let dataBytes = 0;
  let zeroBytes = 0;
  try {
    fs.ftruncateSync(fd, opts.size);
    for (const e of layout) {
      // Keyed by offset so that any extent's bytes do not depend on the others.
      const iv = Buffer.alloc(16);
      iv.writeBigUInt64BE(BigInt(e.offset), 8);
      const cipher = crypto.createCipheriv('aes-128-ctr', key, iv);
      for (let done = 0; done < e.length; done += chunk) {
        const n = Math.min(chunk, e.length - done);
        const buf = e.kind === 'data' ? cipher.update(zeroes.subarray(0, n)) : zeroes.subarray(0, n);
        fs.writeSync(fd, buf, 0, n, e.offset + done);
      }
      if (e.kind === 'data') dataBytes += e.length;
      else zeroBytes += e.length;
    }
  } finally {
    fs.closeSync(fd);
  }
  return { size: opts.size, dataBytes, zeroBytes, extents: layout.length };
}

if (require.main === module) {
  const [path, size, fraction, seed] = process.argv.slice(2);
  if (!path || !size) {
    process.stderr.write('usage: sparse-image PATH SIZE [DATA_FRACTION] [SEED]\n');
    process.exit(2);
  }
  const s = writeSparseImage(path, {
    size: parseSize(size),
    dataFraction: fraction ? Number(fraction) : undefined,
    seed: seed ? Number(seed) : undefined,
  });
  process.stdout.write(JSON.stringify(s) + '\n');
}
