/**
 * Errors a person understands: every failure to start is one line naming the cause and what
 * to do (exit 1, nothing listening); a failure mid-transfer is one summary line at the default
 * level, the chain of messages with -v; a server that keeps us waiting is said to.
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { openExport } from '../../src/export/open-export';
import { PayloadPool } from '../../src/core/payload-pool';
import { e2eSuite, makePki, MiB, runCli, spawnCli, waitFor, compareFiles } from '../helpers/cli';

const SIZE = 32 * MiB;
const suite = e2eSuite({ name: 'cli-errors', size: SIZE, seed: 21 });
const lines = (s: string) => s.split('\n').filter((l) => l.trim() !== '');

/** A TCP server on 127.0.0.1 that the test owns; closed after use. */
async function tcpServer(onConn: (c: net.Socket) => void = () => undefined): Promise<{ port: number; close: () => Promise<void> }> {
  const conns = new Set<net.Socket>();
  const srv = net.createServer((c) => {
    conns.add(c);
    c.on('error', () => undefined);
    c.on('close', () => conns.delete(c));
    onConn(c);
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  return {
    port: (srv.address() as net.AddressInfo).port,
    close: () =>
      new Promise<void>((r) => {
        for (const c of conns) c.destroy();
        srv.close(() => r());
      }),
  };
}

/** Runs a start that must fail: exit 1, exactly one line on stderr matching `re`, nothing on stdout, no pidfile. */
async function failsWith(args: string[], re: RegExp, timeoutMs = 30000): Promise<string> {
  const pidfile = suite.dir.file('never.pid');
  const r = await runCli(['-f', '-P', pidfile, ...args], { timeoutMs });
  expect({ code: r.code, lines: lines(r.stderr), stdout: r.stdout }).toEqual({ code: 1, lines: [expect.stringMatching(re)], stdout: '' });
  expect(r.stderr.startsWith('imageio-nbd: ')).toBe(true);
  expect(existsSync(pidfile)).toBe(false);
  return r.stderr.trim();
}

describe('listening', () => {
  test('a port in use: one line naming the address and what to do', async () => {
    const other = await tcpServer();
    try {
      await failsWith(['-p', String(other.port), 'memory:1M'], new RegExp(`^imageio-nbd: cannot listen on 127\\.0\\.0\\.1:${other.port}: the address is in use .*choose another port with -p`));
    } finally {
      await other.close();
    }
  });

  test('an address that is not on this machine (binding fails locally, nothing is sent)', async () => {
    await failsWith(['-i', '192.0.2.1', '-p', '0', 'memory:1M'], /^imageio-nbd: cannot listen on 192\.0\.2\.1:0: 192\.0\.2\.1 is not an address of this machine: give -i one of its addresses/);
  });

  test('-U in a directory that does not exist says so (not "permission denied")', async () => {
    const sock = suite.dir.file('missing/dir/x.sock');
    await failsWith(['-U', sock, 'memory:1M'], new RegExp(`^imageio-nbd: cannot listen on ${sock}: directory ${suite.dir.file('missing/dir')} does not exist$`));
  });

  test('-4 with an IPv6 -i is refused before anything starts', async () => {
    await failsWith(['-4', '-i', '::1', 'memory:1M'], /^imageio-nbd: -i ::1 is not an IPv4 address, but -4 was given$/);
  });
});

describe('the URL and the server behind it', () => {
  test('an https:// URL on a plain-HTTP server: use http://, at once, without retries', async () => {
    const s = await suite.imageio({ withUnix: false });
    const url = s.url.replace(/^http:/, 'https:');
    const t0 = Date.now();
    const msg = await failsWith(['--retries', '3', url], /^imageio-nbd: https:\/\/127\.0\.0\.1:\d+ speaks plain HTTP, not HTTPS: use http:\/\/127\.0\.0\.1:\d+\/images\//);
    expect(msg).toContain(s.url);
    expect(Date.now() - t0).toBeLessThan(10000);
    expect(s.server.stats().methods.OPTIONS ?? 0).toBeLessThanOrEqual(1); // only the probe's /images/*, never retried
  });

  test('an http:// URL on an HTTPS server: use https://', async () => {
    const pki = makePki(suite.dir.path);
    const s = await suite.imageio({ tls: { cert: pki.cert, key: pki.key }, withUnix: false });
    const url = s.url.replace(/^https:/, 'http:');
    const msg = await failsWith(['--retries', '3', url], /^imageio-nbd: http:\/\/127\.0\.0\.1:\d+ speaks HTTPS \(TLS\), not plain HTTP: use https:\/\/127\.0\.0\.1:\d+\/images\//);
    expect(msg).toContain(s.url);
  });

  test('a server that accepts but never answers: a waiting line at the default level, then retries, then one failure line', async () => {
    const silent = await tcpServer(); // accepts, reads, never writes
    try {
      const proc = spawnCli(['-f', '-U', suite.dir.file('w.sock'), '--request-timeout', '3', '--retries', '1', `http://127.0.0.1:${silent.port}/images/t`], { timeoutMs: 60000 });
      const t0 = Date.now();
      // Told within seconds, long before the request timeouts and retries are over.
      await waitFor(() => /waiting/.test(proc.stderr), 'a waiting line', 12000);
      expect(Date.now() - t0).toBeLessThan(12000);
      const r = await proc.exited;
      expect(r.code).toBe(1);
      const l = lines(r.stderr);
      const where = `127\\.0\\.0\\.1:${silent.port}`;
      expect(l[0]).toMatch(new RegExp(`^imageio-nbd: waiting: (${where} accepted the connection but has not answered for 5 s|no answer from ${where} yet after \\d+ s); still trying \\(each try waits up to 3 s, 1 retry\\)$`));
      expect(l.at(-1)).toMatch(/^imageio-nbd: cannot open the transfer: imageio did not answer OPTIONS on connection 0 in time \((ERR_TIMEOUT|UND_ERR_HEADERS_TIMEOUT)\): the server accepted the connection but did not answer/);
      for (const x of l) expect(x).toMatch(/^imageio-nbd: /);
    } finally {
      await silent.close();
    }
  });

  test('--size larger than the transfer is refused at start, naming both sizes (also size=)', async () => {
    const s = await suite.imageio();
    await failsWith(['--size', '64M', s.url], /^imageio-nbd: --size 64 MiB is larger than the transfer \(32 MiB\): writes past its end would fail/);
    await failsWith([`size=${64 * MiB}`, `url=${s.url}`], /^imageio-nbd: --size 64 MiB is larger than the transfer \(32 MiB\)/);
    expect(s.server.stats().methods.PUT ?? 0).toBe(0);
  });

  test('--size smaller than the transfer serves a prefix', async () => {
    const s = await suite.imageio();
    const r = await runCli(['--size', '16M', '--run', 'nbdinfo --size "$uri"', s.url]);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe(String(16 * MiB));
  });

  test('a plain path is a file export; file://rel.raw says how to write it', async () => {
    mkdirSync(suite.dir.file('sub'));
    const disk = suite.dir.file('sub/disk.raw');
    writeFileSync(disk, Buffer.alloc(MiB, 7));
    const r = await runCli(['--run', 'nbdinfo --size "$uri"', 'sub/disk.raw'], { cwd: suite.dir.path });
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe(String(MiB));
    await failsWith(['file://rel.raw'], /^imageio-nbd: invalid file URL 'file:\/\/rel\.raw': a file URL needs an absolute path, file:\/\/\/absolute\/path \(three slashes\); or give the path itself \(rel\.raw\)$/);
  });

  test('numbers are echoed as typed; seconds may be fractions', async () => {
    await failsWith(['--connections', 'two', 'memory:1M'], /^imageio-nbd: invalid --connections 'two': expected a whole number >= 1$/);
    await failsWith(['-p', 'abc', 'memory:1M'], /^imageio-nbd: invalid --port 'abc': expected a whole number from 0 to 65535$/);
    const ok = await runCli(['--connect-timeout', '0.5', '--request-timeout', '1.5', '--run', 'true', 'memory:1M']);
    expect({ code: ok.code, stderr: ok.stderr }).toEqual({ code: 0, stderr: '' });
  });

  test('--stats FILE in a directory that does not exist: refused at start, before the copy runs', async () => {
    const marker = suite.dir.file('ran');
    await failsWith(['--stats', suite.dir.file('nodir/stats.txt'), '--run', `touch ${marker}`, 'memory:1M'], /^imageio-nbd: cannot write --stats file .*nodir\/stats\.txt: directory .*nodir does not exist$/);
    expect(existsSync(marker)).toBe(false);
  });

  test('--stats FILE (with a space) writes the file', async () => {
    const file = suite.dir.file('stats.txt');
    const r = await runCli(['--stats', file, '--run', 'true', 'memory:1M']);
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
    expect(require('node:fs').readFileSync(file, 'utf8')).toMatch(/^total: 0 ops/);
  });
});

describe('failures mid-transfer', () => {
  /** Every PUT after the first two is dropped after imageio wrote it: data acknowledged by no one. */
  async function flakyImageio() {
    const s = await suite.imageio();
    s.server.faults.add({ method: 'PUT', after: 2, times: Infinity, action: { drop: 'after' } });
    return s;
  }
  const copy = 'nbdcopy --request-size=4194304 "$SRC" "$uri"';

  test('default level: one summary line with the root cause, what was not confirmed, and the outcome; exit non-zero', async () => {
    const s = await flakyImageio();
    const r = await runCli(['--run', copy, s.url], { env: { ...process.env, SRC: suite.source } });
    expect(r.code).not.toBe(0);
    const ours = lines(r.stderr).filter((l) => !l.startsWith('nbdcopy:'));
    expect(ours).toEqual([
      expect.stringMatching(/^imageio-nbd: imageio closed connection \d+ while PUT offset=\d+ length=\d+ was in flight \(\w+\); [\d.]+ (KiB|MiB) not confirmed; the transfer is NOT complete$/),
    ]);
  });

  test('-v: the chain (retries, failed requests, lost connections), then the same summary', async () => {
    const s = await flakyImageio();
    const r = await runCli(['-v', '--run', copy, s.url], { env: { ...process.env, SRC: suite.source } });
    expect(r.code).not.toBe(0);
    const l = lines(r.stderr);
    expect(l.filter((x) => / (WARN|ERROR): /.test(x)).length).toBeGreaterThan(2);
    expect(l.filter((x) => x.startsWith('imageio-nbd: '))).toEqual([expect.stringMatching(/the transfer is NOT complete$/)]);
  });

  test('--log-format json: the summary is one JSON line too', async () => {
    const s = await flakyImageio();
    const r = await runCli(['--log-format', 'json', '--run', copy, s.url], { env: { ...process.env, SRC: suite.source } });
    expect(r.code).not.toBe(0);
    const ours = lines(r.stderr).filter((x) => !x.startsWith('nbdcopy:'));
    expect(ours).toHaveLength(1);
    expect(JSON.parse(ours[0]).msg).toMatch(/^imageio closed connection .* the transfer is NOT complete$/);
  });

  test('a library user sees a failure once: thrown, not also logged', async () => {
    const s = await suite.imageio();
    s.server.faults.add({ method: 'PUT', times: Infinity, action: { status: 500 } });
    const written: string[] = [];
    const orig = process.stderr.write.bind(process.stderr);
    process.stderr.write = ((chunk: string | Uint8Array) => {
      written.push(String(chunk));
      return true;
    }) as typeof process.stderr.write;
    try {
      const stack = await openExport({ url: s.url, pool: new PayloadPool(), requestSize: 0, retries: 0 }); // only the URL and the pool are required
      await expect(stack.top.pwrite(Buffer.alloc(4096, 1), 0)).rejects.toThrow(/HTTP 500/);
      await stack.top.close().catch(() => undefined);
    } finally {
      process.stderr.write = orig;
    }
    expect(written).toEqual([]);
  });

  test('a clean copy says nothing and exits 0', async () => {
    const s = await suite.imageio();
    const r = await runCli(['--run', copy, s.url], { env: { ...process.env, SRC: suite.source } });
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
    expect(compareFiles(suite.source, s.image)).toBe('equal');
  });
});
