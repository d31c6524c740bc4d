/**
 * Prove an upload without reading it back: compute imageio's block checksum (blkhash, see
 * src/checksum/blkhash.ts) of a local raw file, ask imageio for the checksum of the
 * transfer's image (`GET /images/TICKET/checksum`, computed on the imageio host), and compare.
 * Only a few hundred bytes cross the network whatever the image size.
 */
import { open } from 'node:fs/promises';
import { Client } from 'undici';
import { tlsVerifyMessage } from '../backends/imageio/negotiate';
import { TLS_VERIFY_CODES } from '../backends/imageio/request-runner';
import {
  ALGORITHMS,
  BlockHash,
  checkBlockSize,
  DEFAULT_ALGORITHM,
  DEFAULT_BLOCK_SIZE,
  type ChecksumResult,
} from '../checksum/blkhash';

export { ALGORITHMS as LOCAL_ALGORITHMS, DEFAULT_ALGORITHM, DEFAULT_BLOCK_SIZE };
export type { ChecksumResult };

/** JSON answers from imageio are small; anything bigger is not read. */
const MAX_JSON_BODY = 1 << 20;

export class VerifyError extends Error {
  override name = 'VerifyError';
}

export interface ChecksumOptions {
  algorithm?: string;
  blockSize?: number;
}

/**
 * The checksum of the raw file `path` as imageio would compute it for an image holding its
 * bytes; with `size` larger than the file, as if the file were extended with zeros to `size`.
 */
export async function fileChecksum(
  path: string,
  opts: ChecksumOptions & { size?: number; signal?: AbortSignal } = {},
): Promise<ChecksumResult & { size: number }> {
  const algorithm = opts.algorithm ?? DEFAULT_ALGORITHM;
  const blockSize = opts.blockSize ?? DEFAULT_BLOCK_SIZE;
  if (!ALGORITHMS.includes(algorithm)) throw new VerifyError(`unsupported algorithm '${algorithm}': one of ${ALGORITHMS.join(', ')}`);
  const bad = checkBlockSize(blockSize);
  if (bad) throw new VerifyError(`invalid block size ${blockSize}: ${bad}`);
  const fh = await open(path, 'r');
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new VerifyError(`${path} is not a regular file`);
    const fileSize = st.size;
    const size = Math.max(fileSize, opts.size ?? 0);
    const hash = new BlockHash(algorithm, blockSize);
    const buf = Buffer.allocUnsafe(blockSize);
    for (let pos = 0; pos < size; pos += blockSize) {
      if (opts.signal?.aborted) throw opts.signal.reason;
      const n = Math.min(blockSize, size - pos);
      if (pos >= fileSize) {
        hash.zero(n);
        continue;
      }
      let got = 0;
      while (got < n && pos + got < fileSize) {
        const { bytesRead } = await fh.read(buf, got, n - got, pos + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      buf.fill(0, got, n);
      hash.update(buf.subarray(0, n));
    }
    return { ...hash.result(), size };
  } finally {
    await fh.close();
  }
}

export interface ImageioTarget {
  /** Transfer URL: https://HOST:54322/images/TICKET */
  url: string;
  cafile?: Buffer;
  insecure?: boolean;
  /** For the checksum request, which reads the whole image on the server. Default 1 hour. */
  timeoutMs?: number;
}

/** A small client for imageio's JSON resources. */
export class ImageioChecksumClient {
  private readonly client: Client;
  private readonly path: string;
  private readonly origin: string;

  constructor(private readonly target: ImageioTarget) {
    let url: URL;
    try {
      url = new URL(target.url);
    } catch {
      throw new VerifyError(`invalid URL '${target.url}'`);
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new VerifyError(`URL must be http:// or https://: ${target.url}`);
    if (!/^\/images\/[^/]+$/.test(url.pathname)) throw new VerifyError(`URL path must be /images/TICKET-ID, not '${url.pathname}'`);
    this.path = url.pathname;
    this.origin = url.origin;
    const tls = url.protocol === 'https:' ? (target.insecure ? { rejectUnauthorized: false } : target.cafile ? { ca: target.cafile } : {}) : {};
    this.client = new Client(url.origin, { connect: { timeout: 10_000, ...tls } });
  }

  /** Algorithms the server computes. */
  async algorithms(): Promise<string[]> {
    const { status, body } = await this.get(`${this.path}/checksum/algorithms`, {}, 60_000);
    if (status === 404 || status === 405) throw new VerifyError(`the imageio server has no checksum API (HTTP ${status})`);
    if (status !== 200) throw httpFailure('GET checksum/algorithms', status, body);
    const json = parseJson(body, 'checksum/algorithms') as { algorithms?: unknown };
    if (!Array.isArray(json.algorithms) || !json.algorithms.every((a) => typeof a === 'string')) {
      throw new VerifyError(`bad answer from checksum/algorithms: ${body.slice(0, 200)}`);
    }
    return json.algorithms as string[];
  }

  /** The image size, from the Content-Range total of a one-byte read. */
  async size(): Promise<number> {
    const { status, headers, body } = await this.get(this.path, { range: 'bytes=0-0' }, 60_000);
    if (status !== 206) throw httpFailure('GET bytes=0-0', status, body);
    const m = /^bytes 0-0\/(\d{1,16})$/.exec(String(headers['content-range'] ?? ''));
    const size = m ? Number(m[1]) : NaN;
    if (!Number.isSafeInteger(size) || size < 1) {
      throw new VerifyError(`cannot read the image size: Content-Range ${JSON.stringify(headers['content-range'] ?? null)}`);
    }
    return size;
  }

  async checksum(opts: ChecksumOptions = {}): Promise<ChecksumResult> {
    const q = new URLSearchParams({
      algorithm: opts.algorithm ?? DEFAULT_ALGORITHM,
      block_size: String(opts.blockSize ?? DEFAULT_BLOCK_SIZE),
    });
    const { status, body } = await this.get(`${this.path}/checksum?${q}`, {}, this.target.timeoutMs ?? 3600_000);
    if (status !== 200) throw httpFailure('GET checksum', status, body);
    const json = parseJson(body, 'checksum') as Partial<ChecksumResult>;
    if (typeof json.checksum !== 'string' || !/^[0-9a-f]+$/.test(json.checksum)) {
      throw new VerifyError(`bad answer from checksum: ${body.slice(0, 200)}`);
    }
    return {
      algorithm: String(json.algorithm ?? opts.algorithm ?? DEFAULT_ALGORITHM),
      block_size: Number(json.block_size ?? opts.blockSize ?? DEFAULT_BLOCK_SIZE),
      checksum: json.checksum,
    };
  }

  async close(): Promise<void> {
    await this.client.close().catch(() => this.client.destroy());
  }

  private async get(path: string, headers: Record<string, string>, timeoutMs: number) {
    let res;
    try {
      res = await this.client.request({ method: 'GET', path, headers, headersTimeout: timeoutMs, bodyTimeout: 60_000 });
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (typeof code === 'string' && TLS_VERIFY_CODES.has(code)) throw new VerifyError(tlsVerifyMessage(this.origin, err));
      throw new VerifyError(`GET ${path.replace(/\?.*/, '')} failed: ${(err as Error).message}`);
    }
    const chunks: Buffer[] = [];
    let total = 0;
    for await (const chunk of res.body as AsyncIterable<Buffer>) {
      total += chunk.length;
      if (total > MAX_JSON_BODY) {
        res.body.destroy();
        throw new VerifyError(`GET ${path.replace(/\?.*/, '')}: answer larger than ${MAX_JSON_BODY} bytes`);
      }
      chunks.push(chunk);
    }
    return { status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') };
  }
}

function parseJson(body: string, what: string): Record<string, unknown> {
  try {
    const v = JSON.parse(body);
    if (v && typeof v === 'object' && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch {
    /* fall through */
  }
  throw new VerifyError(`bad answer from ${what}: ${body.slice(0, 200)}`);
}

function httpFailure(what: string, status: number, body: string): VerifyError {
  const hint = status === 403 ? ' (the ticket expired, was cancelled or does not exist)' : '';
  return new VerifyError(`${what} failed: HTTP ${status}${hint}: ${body.trim().slice(0, 200)}`);
}

/** Magic numbers of disk image formats that are not raw data (as qemu-img's probes read them). */
const FORMAT_MAGIC: ReadonlyArray<{ format: string; offset: number; magic: Buffer }> = [
  { format: 'qcow2', offset: 0, magic: Buffer.from('QFI\xfb', 'latin1') },
  { format: 'qed', offset: 0, magic: Buffer.from('QED\0', 'latin1') },
  { format: 'vmdk', offset: 0, magic: Buffer.from('KDMV', 'latin1') },
  { format: 'vmdk', offset: 0, magic: Buffer.from('# Disk DescriptorFile', 'latin1') },
  { format: 'vhdx', offset: 0, magic: Buffer.from('vhdxfile', 'latin1') },
  { format: 'vpc', offset: 0, magic: Buffer.from('conectix', 'latin1') },
  { format: 'vdi', offset: 0x40, magic: Buffer.from([0x7f, 0x10, 0xda, 0xbe]) },
  { format: 'luks', offset: 0, magic: Buffer.from('LUKS\xba\xbe', 'latin1') },
];

/** The image format whose header `head` (the file's first bytes) starts with; undefined for raw data. */
export function imageFormat(head: Buffer): string | undefined {
  return FORMAT_MAGIC.find((f) => head.length >= f.offset + f.magic.length && head.subarray(f.offset, f.offset + f.magic.length).equals(f.magic))?.format;
}

export interface VerifyResult {
  identical: boolean;
  /** The image size, and the local file's (which is compared zero-extended when smaller). */
  imageSize: number;
  fileSize: number;
  local?: ChecksumResult;
  remote?: ChecksumResult;
  /** One line for the user. */
  message: string;
}

/** Compare the raw file `path` with the image behind the transfer `target`. */
export async function verifyUpload(path: string, target: ImageioTarget, opts: ChecksumOptions = {}): Promise<VerifyResult> {
  const algorithm = opts.algorithm ?? DEFAULT_ALGORITHM;
  const blockSize = opts.blockSize ?? DEFAULT_BLOCK_SIZE;
  if (!ALGORITHMS.includes(algorithm)) throw new VerifyError(`unsupported algorithm '${algorithm}': one of ${ALGORITHMS.join(', ')}`);
  const bad = checkBlockSize(blockSize);
  if (bad) throw new VerifyError(`invalid block size ${blockSize}: ${bad}`);
  let fileSize: number;
  let format: string | undefined;
  try {
    const fh = await open(path, 'r');
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new Error('not a regular file');
      fileSize = st.size;
      const head = Buffer.alloc(512);
      const { bytesRead } = await fh.read(head, 0, head.length, 0);
      format = imageFormat(head.subarray(0, bytesRead));
    } finally {
      await fh.close();
    }
  } catch (err) {
    throw new VerifyError(`cannot open ${path}: ${(err as Error).message}`);
  }
  // A container format (qcow2...) is compared byte for byte like any file: equal only when the
  // image holds the container itself. A difference then says nothing about the upload.
  const notRaw = () =>
    new VerifyError(
      `${path} is a ${format} image, not raw data: verify compares the disk's raw bytes, so a difference says nothing about the upload; ` +
        `convert it first (qemu-img convert -f ${format} -O raw ${path} ${path}.raw) and verify that file`,
    );
  const client = new ImageioChecksumClient(target);
  try {
    const [algorithms, imageSize] = await Promise.all([client.algorithms(), client.size()]);
    if (!algorithms.includes(algorithm)) {
      throw new VerifyError(`the imageio server does not offer '${algorithm}': it offers ${algorithms.join(', ')}`);
    }
    if (fileSize > imageSize) {
      if (format) throw notRaw();
      return {
        identical: false,
        imageSize,
        fileSize,
        message: `${path} (${fileSize} bytes) is larger than the image (${imageSize} bytes)`,
      };
    }
    // Both sides at once: the server reads its image while we read ours.
    const abort = new AbortController();
    const localP = fileChecksum(path, { algorithm, blockSize, size: imageSize, signal: abort.signal });
    let remote: ChecksumResult;
    try {
      remote = await client.checksum({ algorithm, blockSize });
    } catch (err) {
      abort.abort(err);
      await localP.catch(() => undefined);
      throw err;
    }
    const local = await localP;
    if (remote.algorithm !== algorithm || remote.block_size !== blockSize) {
      throw new VerifyError(`the server computed ${remote.algorithm}/${remote.block_size}, not ${algorithm}/${blockSize}`);
    }
    const identical = local.checksum === remote.checksum;
    if (!identical && format) throw notRaw();
    const extended = fileSize < imageSize ? ` (${path} zero-extended from ${fileSize} bytes)` : '';
    const message = identical
      ? `${path} and ${target.url} are identical: ${algorithm} checksum ${remote.checksum}, block size ${blockSize}, ${imageSize} bytes${extended}`
      : `${path} and ${target.url} differ: ${algorithm} checksum of the file ${local.checksum}${extended}, of the image ${remote.checksum}`;
    return { identical, imageSize, fileSize, local, remote, message };
  } finally {
    await client.close();
  }
}
