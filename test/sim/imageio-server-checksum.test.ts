/**
 * imageio's checksum API on the built-in server, the blkhash construction and our BLAKE2b
 * checked against Python's hashlib (an independent implementation), and `imageio-nbd verify`
 * after a real upload with qemu-img through imageio-nbd (identical, then a mismatch).
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { Client } from 'undici';
import { Blake2b, blake2b } from '../../src/checksum/blake2b';
import { ALGORITHMS, BlockHash } from '../../src/checksum/blkhash';
import { fileChecksum } from '../../src/cli/verify';
import { ImageioServer } from '../../sim/imageio-server';
import { killAll, makePki, makeEmpty, makeSource, MiB, runCli, startImageioProcess, tmpDir, type TmpDir } from '../helpers/cli';
import { head, rawRequest, startServer } from '../helpers/imageio-raw';

const PY = '/usr/bin/python3';
const T = '/images/test-ticket';

/** imageio's blkhash written in Python with hashlib, as imageio computes it. */
const PY_BLKHASH = `
import hashlib, sys
path, algorithm, block_size, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def new(data=b""):
    if algorithm.startswith("blake2"):
        return getattr(hashlib, algorithm)(data, digest_size=32)
    return hashlib.new(algorithm, data)
h = new()
with open(path, "rb") as f:
    data = f.read()
data = data + b"\\0" * (size - len(data))
for i in range(0, size, block_size):
    h.update(new(data[i:i + block_size]).digest())
print(h.hexdigest())
`;

function pyBlkhash(path: string, algorithm: string, blockSize: number, size: number): string {
  return execFileSync(PY, ['-c', PY_BLKHASH, path, algorithm, String(blockSize), String(size)]).toString().trim();
}

/** Python's hashlib digest of `data` (blake2 with imageio's 32-byte digest). */
function pyDigest(algorithm: string, data: Buffer): string {
  const ctor = algorithm.startsWith('blake2') ? `hashlib.${algorithm}(d, digest_size=32)` : `hashlib.new("${algorithm}", d)`;
  return execFileSync(PY, ['-c', `import hashlib, sys; d = sys.stdin.buffer.read(); print(${ctor}.hexdigest())`], { input: data })
    .toString()
    .trim();
}

let dir: TmpDir;
beforeEach(() => {
  dir = tmpDir('checksum-');
});
afterEach(async () => {
  await killAll();
  dir.cleanup();
});

describe('BLAKE2b', () => {
  test('RFC 7693 test vector, and Python hashlib for every length class and digest size', () => {
    expect(blake2b(Buffer.from('abc')).toString('hex')).toBe(
      'ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d17d87c5392aab792dc252d5de4533cc9518d38aa8dbf1925ab92386edd4009923',
    );
    const data = randomBytes(200_003);
    const lengths = [0, 1, 127, 128, 129, 255, 256, 257, 65536, 65537, 200_003];
    const sizes = [32, 64, 1, 20];
    const script = `
import hashlib, sys
d = sys.stdin.buffer.read()
for n in [${lengths}]:
    for ds in [${sizes}]:
        print(hashlib.blake2b(d[:n], digest_size=ds).hexdigest())
`;
    const expected = execFileSync(PY, ['-c', script], { input: data }).toString().trim().split('\n');
    let i = 0;
    for (const n of lengths) {
      for (const ds of sizes) {
        const input = data.subarray(0, n);
        expect([n, ds, blake2b(input, ds).toString('hex')]).toEqual([n, ds, expected[i]]);
        // Streamed in pieces that cross block and scratch-buffer boundaries.
        const h = new Blake2b(ds);
        for (let p = 0; p < n; ) {
          const q = Math.min(n, p + 1000 + (p % 77));
          h.update(input.subarray(p, q));
          p = q;
        }
        expect(h.digest().toString('hex')).toBe(expected[i]);
        i++;
      }
    }
  });
});

describe('blkhash', () => {
  test("a local file's checksum equals imageio's construction in Python (algorithms, block sizes, zero-extension)", async () => {
    const file = dir.file('img.raw');
    // Unaligned size; data in some blocks, a hole elsewhere.
    const size = 5 * MiB + 12345;
    const buf = Buffer.alloc(size);
    randomBytes(300_000).copy(buf, 100);
    randomBytes(4096).copy(buf, 3 * MiB - 10);
    randomBytes(345).copy(buf, size - 345);
    writeFileSync(file, buf);
    for (const [algorithm, blockSize] of [
      ['blake2b', 4 * MiB],
      ['blake2b', MiB],
      ['sha256', 2 * MiB],
      ['blake2s', MiB],
      ['md5', 16 * MiB],
      ['sha3_256', MiB],
    ] as const) {
      const mine = await fileChecksum(file, { algorithm, blockSize });
      expect([algorithm, blockSize, mine.checksum]).toEqual([algorithm, blockSize, pyBlkhash(file, algorithm, blockSize, size)]);
      expect(mine).toMatchObject({ algorithm, block_size: blockSize, size });
    }
    const extended = await fileChecksum(file, { size: 8 * MiB });
    expect(extended.checksum).toBe(pyBlkhash(file, 'blake2b', 4 * MiB, 8 * MiB));
    expect(extended.checksum).not.toBe((await fileChecksum(file)).checksum);
  });

  test('every listed algorithm: inner digests as Python computes them; zero() equals hashing zeros', () => {
    const block = randomBytes(MiB);
    for (const algorithm of ALGORITHMS) {
      const a = new BlockHash(algorithm, MiB);
      a.update(block);
      a.zero(MiB);
      a.zero(1000);
      const b = new BlockHash(algorithm, MiB);
      b.update(block);
      b.update(Buffer.alloc(MiB));
      b.update(Buffer.alloc(1000));
      expect(a.result()).toEqual(b.result());

      // One block: checksum = H(H(block)), each H checked against Python.
      const inner = Buffer.from(pyDigest(algorithm, block), 'hex');
      const one = new BlockHash(algorithm, MiB);
      one.update(block);
      expect([algorithm, one.result().checksum]).toEqual([algorithm, pyDigest(algorithm, inner)]);
    }
    // Python computed what Node's names compute: spot-check one outer digest here as well.
    expect(pyDigest('sha256', Buffer.from('x'))).toBe(createHash('sha256').update('x').digest('hex'));
  });
});

describe('GET /images/TICKET/checksum on the built-in server', () => {
  test('matches the local checksum of the image, after PUT and PATCH zero through the server', async () => {
    const size = 6 * MiB + 4096;
    const s = await startServer(size);
    const client = new Client(`http://127.0.0.1:${s.port}`);
    try {
      const put = await client.request({
        path: `${T}?flush=n`,
        method: 'PUT',
        body: randomBytes(3 * MiB),
        headers: { 'content-range': `bytes ${MiB}-${4 * MiB - 1}/*` },
      });
      await put.body.text();
      const zero = await client.request({ path: T, method: 'PATCH', body: JSON.stringify({ op: 'zero', offset: 2 * MiB, size: 100_000 }) });
      await zero.body.text();
      expect([put.statusCode, zero.statusCode]).toEqual([200, 200]);
      for (const q of ['', '?algorithm=sha256&block_size=1048576', '?block_size=16777216', '?algorithm=blake2s']) {
        const r = await client.request({ path: `${T}/checksum${q}`, method: 'GET' });
        const body = await r.body.text();
        expect(r.statusCode).toBe(200);
        expect(r.headers['content-type']).toBe('application/json');
        const got = JSON.parse(body) as { algorithm: string; block_size: number; checksum: string };
        // imageio's key order and Python's separators.
        expect(body).toBe(`{"algorithm": "${got.algorithm}", "block_size": ${got.block_size}, "checksum": "${got.checksum}"}\n`);
        expect(got.checksum).toBe((await fileChecksum(s.image, { algorithm: got.algorithm, blockSize: got.block_size })).checksum);
        expect(got.checksum).toBe(pyBlkhash(s.image, got.algorithm, got.block_size, size));
      }
      expect(s.server.stats().ops.checksum).toBe(4);
    } finally {
      await client.close();
      await s.done();
    }
  });

  test("algorithms list, and the error table with imageio's texts", async () => {
    const s = await startServer(MiB, { readonly: true });
    try {
      const get = async (path: string) => (await rawRequest({ port: s.port }, head('GET', path))).responses[0];
      const algos = await get(`${T}/checksum/algorithms`);
      expect(algos.status).toBe(200);
      expect(algos.body.toString()).toBe(`{"algorithms": [${ALGORITHMS.map((a) => `"${a}"`).join(', ')}]}\n`);
      expect(ALGORITHMS).toContain('blake2b');
      expect([...ALGORITHMS]).toEqual([...ALGORITHMS].sort());
      // Server information: no ticket needed.
      expect((await get('/images/no-such-ticket/checksum/algorithms')).status).toBe(200);
      // A read-only ticket can be checksummed.
      expect((await get(`${T}/checksum`)).status).toBe(200);
      const list = `[${ALGORITHMS.map((a) => `'${a}'`).join(', ')}]`;
      const cases: [string, number, string][] = [
        [`${T}/checksum?algorithm=crc32`, 400, `Unsupported value 'crc32' for 'algorithm', expecting one of ${list}`],
        [`${T}/checksum?block_size=abc`, 400, "Invalid block size: 'abc'"],
        [`${T}/checksum?block_size=4096`, 400, 'Block size out of allowed range: 1048576-16777216'],
        [`${T}/checksum?block_size=33554432`, 400, 'Block size out of allowed range: 1048576-16777216'],
        [`${T}/checksum?block_size=1048577`, 400, 'Block size is not aligned to 4096'],
        ['/images/no-such-ticket/checksum', 403, 'You are not allowed to access this resource: No such ticket no-such-ticket'],
        ['/images//checksum', 400, 'Ticket id is required'],
      ];
      for (const [path, status, text] of cases) {
        const r = await get(path);
        expect([path, r.status, r.body.toString()]).toEqual([path, status, `${text}\n`]);
      }
    } finally {
      await s.done();
    }
  });
});

describe('imageio-nbd verify', () => {
  test('after a qemu-img upload through imageio-nbd over the abstract socket: identical; one changed block: differ', async () => {
    const size = 24 * MiB;
    const source = dir.file('source.raw');
    makeSource(source, size, 11);
    const target = dir.file('target.raw');
    const control = dir.file('control.sock');
    // The command's defaults: a fresh abstract local socket, advertised in OPTIONS.
    const { url } = await startImageioProcess(['--image', target, '--size', String(size), '--control', control]);
    const up = await runCli(['--run', 'qemu-img convert -n -f raw -O raw "$SRC" "$uri"', url], {
      env: { ...process.env, SRC: source },
    });
    expect(up.stderr).toBe('');
    expect(up.code).toBe(0);
    const stats = JSON.parse(execFileSync('curl', ['-sSf', '--unix-socket', control, 'http://control/stats']).toString()) as {
      connections: { service: string; writes: number }[];
    };
    // The data went over the abstract unix socket named in OPTIONS.
    expect(new Set(stats.connections.filter((c) => c.writes > 0).map((c) => c.service))).toEqual(new Set(['unix']));

    const ok = await runCli(['verify', source, url]);
    expect(ok.stderr).toBe('');
    expect(ok.stdout).toMatch(
      new RegExp(`^${source} and ${url} are identical: blake2b checksum [0-9a-f]{64}, block size 4194304, ${size} bytes\\n$`),
    );
    expect(ok.code).toBe(0);
    const sha = await runCli(['verify', '--algorithm', 'sha256', '--block-size', '1M', source, url]);
    expect(sha.stdout).toContain('identical: sha256 checksum');
    expect(sha.code).toBe(0);

    // One changed 4 KiB block, written through imageio like any upload.
    const u = new URL(url);
    const client = new Client(u.origin);
    const put = await client.request({
      path: u.pathname,
      method: 'PUT',
      body: Buffer.alloc(4096, 0x5a),
      headers: { 'content-range': 'bytes 13631488-13635583/*' },
    });
    await put.body.text();
    await client.close();
    expect(put.statusCode).toBe(200);
    expect(readFileSync(target).subarray(13631488, 13631490).toString('hex')).toBe('5a5a');
    const bad = await runCli(['verify', source, url]);
    expect(bad.stdout).toMatch(/ differ: blake2b checksum of the file [0-9a-f]{64}, of the image [0-9a-f]{64}\n$/);
    expect(bad.code).toBe(1);

    // A shorter file is compared zero-extended; a longer one differs at once.
    writeFileSync(dir.file('short.raw'), readFileSync(target).subarray(0, 20 * MiB));
    const short = await runCli(['verify', dir.file('short.raw'), url]);
    expect(short.stdout).toContain('zero-extended from 20971520 bytes');
    expect(short.code).toBe(1); // the image has data after 20 MiB
    writeFileSync(dir.file('long.raw'), Buffer.alloc(size + 1));
    const long = await runCli(['verify', dir.file('long.raw'), url]);
    expect(long.stdout).toMatch(/is larger than the image/);
    expect(long.code).toBe(1);
  });

  test('errors: one line, exit 2 (unknown ticket, unreachable server, no checksum API, bad options)', async () => {
    const file = dir.file('f.raw');
    writeFileSync(file, Buffer.alloc(MiB));
    const s = await startServer(MiB);
    // A server without the checksum API (an old imageio: 404 for the resource).
    const old = http.createServer((req, res) => {
      if (req.url?.includes('/checksum')) res.writeHead(404, { 'content-type': 'text/plain' }).end(`No handler for '${req.url}'\n`);
      else res.writeHead(206, { 'content-range': `bytes 0-0/${MiB}`, 'content-length': 1 }).end('\0');
    });
    await new Promise<void>((r) => old.listen(0, '127.0.0.1', r));
    try {
      const base = `http://127.0.0.1:${s.port}`;
      const oldUrl = `http://127.0.0.1:${(old.address() as { port: number }).port}/images/t`;
      const rows: [string[], RegExp][] = [
        [[file, `${base}/images/nope`], /HTTP 403 \(the ticket expired, was cancelled or does not exist\)/],
        [[file, 'http://127.0.0.1:1/images/x'], /ECONNREFUSED/],
        [[file, `${base}/not-images/x`], /URL path must be \/images\/TICKET-ID/],
        [['--algorithm', 'crc32', file, `${base}${T}`], /unsupported algorithm 'crc32'/],
        [['--block-size', '4097', file, `${base}${T}`], /Block size out of allowed range/],
        [[file], /expected FILE and URL/],
        [[dir.file('missing.raw'), `${base}${T}`], /cannot open .*missing\.raw/],
        [[file, oldUrl], /^imageio-nbd verify: the imageio server has no checksum API \(HTTP 404\)$/m],
      ];
      for (const [args, re] of rows) {
        const r = await runCli(['verify', ...args]);
        expect([args, r.code, r.stdout]).toEqual([args, 2, '']);
        expect(r.stderr.split('\n').filter(Boolean)).toHaveLength(1);
        expect(r.stderr).toMatch(/^imageio-nbd verify: /);
        expect(r.stderr).toMatch(re);
      }
    } finally {
      old.closeAllConnections();
      await new Promise((r) => old.close(r));
      await s.done();
    }
  });

  test('over HTTPS: --cafile verifies the server; without it the certificate is refused; --insecure skips the check', async () => {
    const pki = makePki(dir.path);
    const image = dir.file('tls.raw');
    makeEmpty(image, 3 * MiB);
    const server = new ImageioServer({ image, ticket: 'tls', tls: { cert: pki.cert, key: pki.key } });
    await server.start();
    try {
      const file = dir.file('zeros.raw');
      writeFileSync(file, Buffer.alloc(3 * MiB));
      const ok = await runCli(['verify', '--cafile', pki.ca, file, server.url]);
      expect(ok.stdout).toContain('are identical');
      expect(ok.code).toBe(0);
      expect((await runCli(['verify', '--insecure', file, server.url])).code).toBe(0);
      const untrusted = await runCli(['verify', '--cafile', pki.otherCa, file, server.url]);
      expect(untrusted.code).toBe(2);
      // Said once, naming the options with their dashes.
      expect(untrusted.stderr).toMatch(/^imageio-nbd verify: cannot verify the TLS certificate of https:\/\/127\.0\.0\.1:\d+: [^:]+ \[[A-Z_]+\]: pass the CA that signed it with --cafile FILE, or turn verification off with --insecure\n$/);
    } finally {
      await server.close();
    }
  });
});
