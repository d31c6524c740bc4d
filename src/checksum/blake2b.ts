/**
 * BLAKE2b (RFC 7693) with a chosen digest length, unkeyed. imageio's default checksum is
 * blake2b with digest_size=32, which is not a truncated blake2b-512 (the length is part of the
 * parameter block), and Node's crypto only offers blake2b512: so here it is in TypeScript.
 *
 * 64-bit words are kept as (low, high) pairs of 32-bit integers.
 */

const IV = new Uint32Array([
  0xf3bcc908, 0x6a09e667, 0x84caa73b, 0xbb67ae85, 0xfe94f82b, 0x3c6ef372, 0x5f1d36f1, 0xa54ff53a,
  0xade682d1, 0x510e527f, 0x2b3e6c1f, 0x9b05688c, 0xfb41bd6b, 0x1f83d9ab, 0x137e2179, 0x5be0cd19,
]);

/** Message word schedule; rounds 10 and 11 reuse rows 0 and 1. Stored as uint32 indexes (2x). */
const SIGMA = [
  [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
  [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
  [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
  [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
  [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
  [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
  [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
  [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
  [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
  [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
].map((row) => Uint8Array.from(row, (i) => i * 2));

const BLOCK = 128;
/** Input copied at once into the aligned message buffer: 64 KiB. */
const SCRATCH_BLOCKS = 512;
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

export class Blake2b {
  private readonly h = new Uint32Array(16);
  /** Message words: an aligned copy of up to SCRATCH_BLOCKS blocks of input. */
  private readonly m = new Uint32Array((SCRATCH_BLOCKS * BLOCK) / 4);
  private readonly m8 = new Uint8Array(this.m.buffer);
  /** Bytes of the pending block (never compressed before we know whether it is the last). */
  private readonly buf = new Uint8Array(BLOCK);
  private buffered = 0;
  /** Bytes compressed so far. */
  private counter = 0;
  private done = false;

  constructor(readonly digestLength = 64) {
    if (!Number.isInteger(digestLength) || digestLength < 1 || digestLength > 64) {
      throw new RangeError(`blake2b digest length must be 1..64, not ${digestLength}`);
    }
    this.h.set(IV);
    // Parameter block word 0: digest length, key length 0, fanout 1, depth 1.
    this.h[0] ^= 0x01010000 ^ digestLength;
  }

  update(data: Uint8Array): this {
    if (this.done) throw new Error('blake2b: update after digest');
    let pos = 0;
    const n = data.length;
    // Fill the pending block; compress it only when more input follows.
    if (this.buffered > 0 || n <= BLOCK) {
      const take = Math.min(BLOCK - this.buffered, n);
      this.buf.set(data.subarray(0, take), this.buffered);
      this.buffered += take;
      pos = take;
      if (pos === n) return this;
      this.compress(this.buf, 0, BLOCK, false);
      this.buffered = 0;
    }
    // Whole blocks from the input, keeping the last one (even if full) pending.
    while (n - pos > BLOCK) {
      const blocks = Math.min(SCRATCH_BLOCKS, Math.floor((n - pos - 1) / BLOCK));
      this.compress(data, pos, blocks * BLOCK, false);
      pos += blocks * BLOCK;
    }
    this.buf.set(data.subarray(pos, n), 0);
    this.buffered = n - pos;
    return this;
  }

  digest(): Buffer {
    if (this.done) throw new Error('blake2b: digest called twice');
    this.done = true;
    this.buf.fill(0, this.buffered);
    this.compress(this.buf, 0, BLOCK, true, this.buffered);
    const out = Buffer.allocUnsafe(64);
    for (let i = 0; i < 16; i++) out.writeUInt32LE(this.h[i], i * 4);
    return out.subarray(0, this.digestLength);
  }

  /**
   * Compress `length` bytes (whole blocks) of `data` from `offset`, through an aligned scratch
   * copy. `last` marks the final block, of which `lastBytes` count.
   */
  private compress(data: Uint8Array, offset: number, length: number, last: boolean, lastBytes = BLOCK): void {
    const m = this.m;
    if (LITTLE_ENDIAN) {
      this.m8.set(data.subarray(offset, offset + length));
    } else {
      const dv = new DataView(data.buffer, data.byteOffset + offset, length);
      for (let i = 0; i < length / 4; i++) m[i] = dv.getUint32(i * 4, true);
    }
    for (let base = 0; base < length / 4; base += BLOCK / 4) {
      const final = last && base + BLOCK / 4 >= length / 4;
      this.counter += final ? lastBytes : BLOCK;
      // Counter: low 64 bits (our inputs stay below 2^53); word 14 inverted for the last block.
      COMPRESS(this.h, m, base, this.counter >>> 0, Math.floor(this.counter / 0x100000000) >>> 0, final);
    }
  }
}

type CompressFn = (h: Uint32Array, m: Uint32Array, base: number, tLo: number, tHi: number, last: boolean) => void;

/**
 * The compression function, unrolled into straight-line code over local variables (12 rounds
 * of 8 G steps on (low, high) pairs): several times faster in V8 than loops over arrays.
 * Generated once, at load.
 */
function buildCompress(): CompressFn {
  const L: string[] = [];
  const v = (i: number) => `v${i}`;
  for (let i = 0; i < 16; i++) L.push(`let v${i} = h[${i}] | 0;`);
  for (let i = 0; i < 16; i++) L.push(`let v${16 + i} = ${IV[i] | 0};`);
  L.push('v24 ^= tLo; v25 ^= tHi;');
  L.push('if (last) { v28 = ~v28; v29 = ~v29; }');
  for (let i = 0; i < 32; i++) L.push(`const m${i} = m[base + ${i}] | 0;`);
  L.push('let lo = 0, hi = 0;');
  // a += b + m[x] and c += d, with the carry from the low halves.
  const add3 = (a: number, b: number, x: number) =>
    `lo = (${v(a)} >>> 0) + (${v(b)} >>> 0) + (m${x} >>> 0); ` +
    `${v(a + 1)} = (${v(a + 1)} + ${v(b + 1)} + m${x + 1} + ((lo / 4294967296) | 0)) | 0; ${v(a)} = lo | 0;`;
  const add2 = (a: number, b: number) =>
    `lo = (${v(a)} >>> 0) + (${v(b)} >>> 0); ` +
    `${v(a + 1)} = (${v(a + 1)} + ${v(b + 1)} + ((lo / 4294967296) | 0)) | 0; ${v(a)} = lo | 0;`;
  const xor = (d: number, a: number) => `lo = ${v(d)} ^ ${v(a)}; hi = ${v(d + 1)} ^ ${v(a + 1)};`;
  const rotr = (d: number, n: number) =>
    n === 32
      ? `${v(d)} = hi; ${v(d + 1)} = lo;`
      : n < 32
        ? `${v(d)} = (lo >>> ${n}) | (hi << ${32 - n}); ${v(d + 1)} = (hi >>> ${n}) | (lo << ${32 - n});`
        : `${v(d)} = (hi >>> ${n - 32}) | (lo << ${64 - n}); ${v(d + 1)} = (lo >>> ${n - 32}) | (hi << ${64 - n});`;
  const G = (a: number, b: number, c: number, d: number, x: number, y: number) => {
    L.push(add3(a, b, x), xor(d, a), rotr(d, 32));
    L.push(add2(c, d), xor(b, c), rotr(b, 24));
    L.push(add3(a, b, y), xor(d, a), rotr(d, 16));
    L.push(add2(c, d), xor(b, c), rotr(b, 63));
  };
  for (let r = 0; r < 12; r++) {
    const s = SIGMA[r % 10];
    G(0, 8, 16, 24, s[0], s[1]);
    G(2, 10, 18, 26, s[2], s[3]);
    G(4, 12, 20, 28, s[4], s[5]);
    G(6, 14, 22, 30, s[6], s[7]);
    G(0, 10, 20, 30, s[8], s[9]);
    G(2, 12, 22, 24, s[10], s[11]);
    G(4, 14, 16, 26, s[12], s[13]);
    G(6, 8, 18, 28, s[14], s[15]);
  }
  for (let i = 0; i < 16; i++) L.push(`h[${i}] ^= v${i} ^ v${i + 16};`);
  return new Function('h', 'm', 'base', 'tLo', 'tHi', 'last', L.join('\n')) as CompressFn;
}

const COMPRESS = buildCompress();

/** One-shot BLAKE2b of `data` with a `digestLength`-byte digest. */
export function blake2b(data: Uint8Array, digestLength = 64): Buffer {
  return new Blake2b(digestLength).update(data).digest();
}
