/**
 * imageio's block-based image checksum ("blkhash"), as its checksum API computes it:
 *
 *   checksum = H( H(block 1) || H(block 2) || ... || H(block N) )
 *
 * over the image split into block_size blocks (the last one may be shorter), where H is the
 * chosen algorithm; blake2b and blake2s use a 32-byte digest. A block of zeros hashes like any
 * other block (imageio only precomputes that digest), so the result does not depend on how
 * zeros are detected, and a checksum of a local raw file equals the server's for the same bytes.
 * Defaults: blake2b, 4 MiB blocks; the server accepts block sizes from 1 to 16 MiB in 4 KiB steps.
 */
import { createHash } from 'node:crypto';
import { Blake2b } from './blake2b';

export const DEFAULT_ALGORITHM = 'blake2b';
export const DEFAULT_BLOCK_SIZE = 4 << 20;
export const MIN_BLOCK_SIZE = DEFAULT_BLOCK_SIZE / 4;
export const MAX_BLOCK_SIZE = DEFAULT_BLOCK_SIZE * 4;
export const BLOCK_ALIGNMENT = 4096;
/** imageio's digest size for the blake2 family. */
const BLAKE2_DIGEST_SIZE = 32;

/** Python hashlib names (what imageio lists and accepts) -> Node crypto names; blake2b is ours. */
const NODE_NAMES: Record<string, string> = {
  blake2s: 'blake2s256', // blake2s with digest_size=32 is its default
  md5: 'md5',
  'md5-sha1': 'md5-sha1',
  ripemd160: 'ripemd160',
  sha1: 'sha1',
  sha224: 'sha224',
  sha256: 'sha256',
  sha384: 'sha384',
  sha512: 'sha512',
  sha512_224: 'sha512-224',
  sha512_256: 'sha512-256',
  sha3_224: 'sha3-224',
  sha3_256: 'sha3-256',
  sha3_384: 'sha3-384',
  sha3_512: 'sha3-512',
  sm3: 'sm3',
};

/**
 * The algorithms this implementation computes, sorted as imageio lists them. (imageio lists all
 * of Python's hashlib; the shake_* ones fail there, as their digest needs a length.)
 */
export const ALGORITHMS: readonly string[] = ['blake2b', ...Object.keys(NODE_NAMES)].sort();

interface Digest {
  update(data: Uint8Array): Digest;
  digest(): Buffer;
}

function newDigest(algorithm: string): Digest {
  if (algorithm === 'blake2b') return new Blake2b(BLAKE2_DIGEST_SIZE);
  const name = NODE_NAMES[algorithm];
  if (!name) throw new RangeError(`unsupported checksum algorithm '${algorithm}' (one of ${ALGORITHMS.join(', ')})`);
  return createHash(name);
}

const ZEROS = new Uint8Array(1 << 20);

/** True when every byte is zero (compared natively against a buffer of zeros). */
export function isZero(buf: Uint8Array): boolean {
  for (let pos = 0; pos < buf.length; pos += ZEROS.length) {
    const n = Math.min(ZEROS.length, buf.length - pos);
    if (Buffer.compare(buf.subarray(pos, pos + n), ZEROS.subarray(0, n)) !== 0) return false;
  }
  return true;
}

/** The result, with imageio's keys in imageio's order. */
export interface ChecksumResult {
  algorithm: string;
  block_size: number;
  checksum: string;
}

/** Feed blocks in order: update() for data, zero() for a block known to read as zeros. */
export class BlockHash {
  private readonly outer: Digest;
  private zeroDigest?: Buffer;
  private zeroScratch?: Buffer;

  constructor(
    readonly algorithm = DEFAULT_ALGORITHM,
    readonly blockSize = DEFAULT_BLOCK_SIZE,
  ) {
    this.outer = newDigest(algorithm);
  }

  /** Hash one block of data (block_size bytes; only the last block may be shorter). */
  update(block: Uint8Array): void {
    if (isZero(block)) this.zero(block.length);
    else this.outer.update(newDigest(this.algorithm).update(block).digest());
  }

  /** Hash one block of `length` zeros. */
  zero(length: number): void {
    if (length === this.blockSize) {
      this.zeroDigest ??= this.digestZeros(length);
      this.outer.update(this.zeroDigest);
    } else {
      this.outer.update(this.digestZeros(length));
    }
  }

  private digestZeros(length: number): Buffer {
    this.zeroScratch ??= Buffer.alloc(this.blockSize);
    return newDigest(this.algorithm).update(this.zeroScratch.subarray(0, length)).digest();
  }

  result(): ChecksumResult {
    return { algorithm: this.algorithm, block_size: this.blockSize, checksum: this.outer.digest().toString('hex') };
  }
}

/** Why a checksum request's parameters are refused: imageio's own texts. */
export function checkBlockSize(blockSize: number): string | undefined {
  if (!(blockSize >= MIN_BLOCK_SIZE && blockSize <= MAX_BLOCK_SIZE)) {
    return `Block size out of allowed range: ${MIN_BLOCK_SIZE}-${MAX_BLOCK_SIZE}`;
  }
  if (blockSize % BLOCK_ALIGNMENT) return `Block size is not aligned to ${BLOCK_ALIGNMENT}`;
  return undefined;
}
