/**
 * Deterministic sparse raw images for copy tests: random-data regions of varied sizes separated
 * by holes, plus a few all-zero data regions (allocated zeroes), so copies exercise WRITE,
 * WRITE_ZEROES and hole detection.
 */
import { open } from 'node:fs/promises';
import { prng } from '../../sim/sparse-image';

export interface ImageRegion {
  offset: number;
  length: number;
  /** 'data': random bytes; 'zero': explicitly written zero bytes. */
  kind: 'data' | 'zero';
}

/** The seeded PRNG of the benchmark images: the same seed gives the same image everywhere. */
export { prng };

export function fillRandom(buf: Buffer, rand: () => number): void {
  let i = 0;
  for (; i + 4 <= buf.length; i += 4) buf.writeUInt32LE((rand() * 4294967296) >>> 0, i);
  for (; i < buf.length; i++) buf[i] = (rand() * 256) | 0;
}

/**
 * Create (or replace) `path` as a sparse file of `sizeBytes` with about `regions` regions
 * (default 24) of random data between 1 byte and 3 MiB, unaligned, some at the very start and end.
 */
export async function makeSparseImage(
  path: string,
  sizeBytes: number,
  seed: number,
  opts: { regions?: number; maxRegion?: number } = {},
): Promise<ImageRegion[]> {
  const rand = prng(seed);
  const count = opts.regions ?? 24;
  const maxRegion = Math.min(opts.maxRegion ?? 3 * 1024 * 1024, sizeBytes);
  const regions: ImageRegion[] = [];
  for (let i = 0; i < count; i++) {
    const length = Math.max(1, Math.floor(rand() * rand() * maxRegion));
    let offset: number;
    if (i === 0) offset = 0;
    else if (i === 1) offset = sizeBytes - length;
    else offset = Math.floor(rand() * (sizeBytes - length));
    regions.push({ offset, length, kind: i % 7 === 6 ? 'zero' : 'data' });
  }
  const fh = await open(path, 'w');
  try {
    await fh.truncate(sizeBytes);
    for (const r of regions) {
      const buf = r.kind === 'zero' ? Buffer.alloc(r.length) : Buffer.allocUnsafe(r.length);
      if (r.kind === 'data') fillRandom(buf, rand);
      await fh.write(buf, 0, buf.length, r.offset);
    }
  } finally {
    await fh.close();
  }
  return regions;
}
