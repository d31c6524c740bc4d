/**
 * End to end through the real command: qemu-img and nbdcopy upload a generated sparse image
 * through `imageio-nbd --run` into the built-in imageio server (TCP, its unix socket, HTTPS),
 * and download it back; every result is compared byte for byte with the source, and the
 * server's counters show how the data travelled (transport, PUT sizes, skipped holes).
 */
import { copyFileSync, readFileSync } from 'node:fs';
import {
  compareFiles,
  makePki,
  makeSource,
  MiB,
  parseStats,
  runCli,
  type StartImageioOptions,
  type TestImageio,
  type TestPki,
  e2eSuite,
  waitAllClosed,
} from '../helpers/cli';
import { runOk } from '../helpers/run';

const SIZE = 128 * MiB;

const suite = e2eSuite({ name: 'upload', size: SIZE, seed: 7 });
const imageio = (opts: Partial<StartImageioOptions> = {}) => suite.imageio(opts);

let pki: TestPki;
beforeAll(() => {
  pki = makePki(suite.shared.path);
});

/** Run imageio-nbd --run CMD URL with $SRC and $OUT set; expects success; returns stderr and parsed stats. */
async function upload(url: string, cmd: string, extra: string[] = [], out?: string, env: NodeJS.ProcessEnv = {}) {
  const statsFile = suite.dir.file('stats.txt');
  const r = await runCli([...extra, `--stats=${statsFile}`, '--run', cmd, url], {
    env: { ...process.env, SRC: suite.source, OUT: out ?? '', ...env },
    timeoutMs: 60000,
  });
  if (r.code !== 0) throw new Error(`imageio-nbd exited ${r.code ?? r.signal}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  const statsText = readFileSync(statsFile, 'utf8');
  return { ...r, statsText, stats: parseStats(statsText) };
}

/** Services of the connections that carried data. */
function dataServices(s: TestImageio): string[] {
  return [
    ...new Set(
      s.server
        .stats()
        .connections.filter((c) => c.reads + c.writes + c.zeros + c.flushes > 0)
        .map((c) => c.service),
    ),
  ];
}

const QEMU_IMG = 'qemu-img convert -n -f raw -O raw "$SRC" "$uri"';
const QEMU_IMG_W = 'qemu-img convert -n -W -f raw -O raw "$SRC" "$uri"';
const NBDCOPY = 'nbdcopy "$SRC" "$uri"';
const NBDCOPY_V2V = 'nbdcopy --request-size=4194304 --requests=16 --flush "$SRC" "$uri"';

describe('upload into the built-in imageio server', () => {
  test.each([
    ['qemu-img convert -n', 'tcp', QEMU_IMG],
    ['qemu-img convert -n -W', 'unix', QEMU_IMG_W],
    ['nbdcopy', 'tcp', NBDCOPY],
    ["virt-v2v's nbdcopy --request-size=4194304 --requests=16 --flush", 'unix', NBDCOPY_V2V],
  ])('%s over %s', async (_name, transport, cmd) => {
    const s = await imageio();
    const r = await upload(s.url, cmd, transport === 'tcp' ? ['--unix-socket', 'never'] : []);
    expect(compareFiles(suite.source, s.image)).toBe('equal');
    expect(dataServices(s)).toEqual([transport]);
    // Default: quiet on success.
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe('');
    const st = s.server.stats();
    expect(st.bytesWritten).toBeGreaterThan(0);
    expect(st.bytesWritten).toBeLessThan(SIZE); // holes were zeroed, not written
    expect(st.ops.flush).toBeGreaterThanOrEqual(1);
    // Every connection was closed when imageio-nbd exited.
    await waitAllClosed(s.server);
  });

  test.each([['qemu-img -W', QEMU_IMG_W], ['nbdcopy (virt-v2v flags)', NBDCOPY_V2V]])(
    'the other transport too: %s over the unix socket, and over TCP',
    async (_name, cmd) => {
      const s1 = await imageio({ name: 'a' });
      await upload(s1.url, cmd);
      expect(compareFiles(suite.source, s1.image)).toBe('equal');
      expect(dataServices(s1)).toEqual(['unix']);
      const s2 = await imageio({ name: 'b' });
      await upload(s2.url, cmd, ['--unix-socket', 'never']);
      expect(compareFiles(suite.source, s2.image)).toBe('equal');
      expect(dataServices(s2)).toEqual(['tcp']);
    },
  );

  test('HTTPS verified with --cafile (a test CA made with openssl), qemu-img and nbdcopy', async () => {
    const s = await imageio({ tls: { cert: pki.cert, key: pki.key }, withUnix: false });
    expect(s.url.startsWith('https://127.0.0.1:')).toBe(true);
    await upload(s.url, QEMU_IMG, ['--cafile', pki.ca]);
    expect(compareFiles(suite.source, s.image)).toBe('equal');
    expect(dataServices(s)).toEqual(['tcp']);

    const s2 = await imageio({ tls: { cert: pki.cert, key: pki.key }, withUnix: false, name: 'b' });
    await upload(s2.url, NBDCOPY_V2V, ['--cafile', pki.ca]);
    expect(compareFiles(suite.source, s2.image)).toBe('equal');
  });

  test('HTTPS with --insecure (no verification), and key=value insecure=true', async () => {
    const s = await imageio({ tls: { cert: pki.cert, key: pki.key }, withUnix: false });
    await upload(s.url, NBDCOPY, ['--insecure']);
    expect(compareFiles(suite.source, s.image)).toBe('equal');

    const s2 = await imageio({ tls: { cert: pki.cert, key: pki.key }, withUnix: false, name: 'b' });
    const statsFile = suite.dir.file('kv-stats.txt');
    const r = await runCli([`--stats=${statsFile}`, '--run', QEMU_IMG, `url=${s2.url}`, `size=${SIZE}`, 'insecure=true'], {
      env: { ...process.env, SRC: suite.source },
    });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(compareFiles(suite.source, s2.image)).toBe('equal');
  });

  test('HTTPS server that also offers its unix socket: the unix socket is used, no TLS needed for data', async () => {
    const s = await imageio({ tls: { cert: pki.cert, key: pki.key } });
    const r = await upload(s.url, QEMU_IMG, ['--cafile', pki.ca]);
    expect(compareFiles(suite.source, s.image)).toBe('equal');
    expect(dataServices(s)).toEqual(['unix']);
    // The OPTIONS that found the socket went over HTTPS, everything else over the socket.
    const tcp = s.server.stats().connections.filter((c) => c.service === 'tcp');
    expect(tcp.reduce((n, c) => n + c.requests, 0)).toBe(1);
    expect(r.stats.http.PUT.requests).toBeGreaterThan(0);
  });

  test('an old server (OPTIONS 405): one connection, zero emulated with PUTs, no PATCH at all', async () => {
    const s = await imageio({ legacy: 'options-405' });
    const r = await upload(s.url, QEMU_IMG);
    expect(compareFiles(suite.source, s.image)).toBe('equal');
    const st = s.server.stats();
    expect(st.methods.PATCH ?? 0).toBe(0);
    expect(st.ops.zero ?? 0).toBe(0);
    expect(st.ops.flush ?? 0).toBe(0);
    expect(r.stats.http['PATCH zero']).toBeUndefined();
    expect(dataServices(s)).toEqual(['tcp']); // no OPTIONS answer: no unix socket either
    expect(new Set(st.connections.filter((c) => c.writes > 0).map((c) => c.id)).size).toBe(1);
    // With zeroes sent as data, the server received the whole image.
    expect(st.bytesWritten).toBe(SIZE);
  });

  test('an old server (OPTIONS 204) with nbdcopy', async () => {
    const s = await imageio({ legacy: 'options-204' });
    await upload(s.url, 'nbdcopy --request-size=4194304 --requests=16 "$SRC" "$uri"');
    expect(compareFiles(suite.source, s.image)).toBe('equal');
    expect(s.server.stats().methods.PATCH ?? 0).toBe(0);
  });
});

describe('coalescing', () => {
  // A dense source (contiguous data), so that consecutive writes can be merged.
  let dense: string;
  beforeAll(async () => {
    dense = suite.shared.file('dense.raw');
    await runOk('sh', ['-c', `head -c ${48 * MiB} /dev/urandom > "${dense}"`]);
  });

  async function both(cmd: string, blockSize: string) {
    const env = { SRC: dense };
    const off = await imageio({ name: 'off', imageSize: 48 * MiB });
    const rOff = await upload(off.url, cmd, ['--block-size', blockSize, '--request-size', '0'], undefined, env);
    expect(compareFiles(dense, off.image)).toBe('equal');
    const on = await imageio({ name: 'on', imageSize: 48 * MiB });
    // No idle sends (--coalesce-idle 30): a scheduling pause in the client must not decide
    // how many PUTs there are, so the counts below are exact, not timing-dependent.
    const rOn = await upload(on.url, cmd, ['--block-size', blockSize, '--coalesce-idle', '30'], undefined, env);
    expect(compareFiles(dense, on.image)).toBe('equal');
    expect(rOff.statsText).not.toMatch(/^coalesce:/m);
    expect(rOn.statsText).toMatch(/^coalesce: \{.*"mergedWrites":[1-9]/m);
    return { off: off.server.stats(), on: on.server.stats(), rOff, rOn };
  }

  test("qemu-img: off (--request-size 0) one PUT per 2 MiB write; on (default 8M) 8 MiB PUTs; both byte-exact", async () => {
    const { off, on, rOff, rOn } = await both(QEMU_IMG, '512K');
    expect(rOff.stats.nbd.write.ops).toBe(24); // qemu-img: 2 MiB writes, one at a time
    expect(off.methods.PUT).toBe(24);
    // 24 sequential 2 MiB writes fill exactly 6 buffers of 8 MiB.
    expect(on.methods.PUT).toBe(6);
    expect(on.bytesWritten / on.methods.PUT).toBe(8 * MiB);
    expect(rOn.stats.nbd.write.ops).toBe(24);
    expect(rOn.stats.http.PUT.requests).toBe(on.methods.PUT);
  });

  test('nbdcopy 256 KiB writes on 2 connections: off one PUT each; on 8 MiB PUTs; both byte-exact', async () => {
    const { off, on, rOn } = await both(NBDCOPY, '256K');
    expect(off.methods.PUT).toBe(192);
    expect(rOn.stats.nbd.write.ops).toBe(192);
    expect(on.methods.PUT).toBeLessThanOrEqual(12);
    expect(on.bytesWritten / on.methods.PUT).toBeGreaterThanOrEqual(4 * MiB);
  });
});

describe('download back', () => {
  async function filledServer() {
    // The server's image is a sparse copy of the source, so its extents have holes.
    const image = suite.dir.file('served.raw');
    await runOk('cp', ['--sparse=always', suite.source, image]);
    return imageio({ image });
  }

  test.each([
    ['qemu-img', 'qemu-img convert -f raw -O raw "$uri" "$OUT"'],
    ['nbdcopy', 'nbdcopy "$uri" "$OUT"'],
  ])('%s reads only the data (block status), bytes equal', async (_name, cmd) => {
    const s = await filledServer();
    const out = suite.dir.file('out.raw');
    const r = await upload(s.url, cmd, ['--readonly'], out);
    expect(compareFiles(suite.source, out)).toBe('equal');
    const st = s.server.stats();
    expect(st.ops.extents).toBeGreaterThanOrEqual(1);
    expect(st.bytesRead).toBeGreaterThan(0);
    // About a third is data; the server maps allocation in 1 MiB blocks and nbdcopy reads whole requests.
    expect(st.bytesRead).toBeLessThan(SIZE * 0.8);
    expect(st.methods.PUT ?? 0).toBe(0);
    expect(r.stats.http.GET.requests).toBeGreaterThan(0);
    expect(dataServices(s)).toEqual(['unix']);
  });

  test('qemu-img over TCP with nbd+unix URI from --run, read-write export: reads only', async () => {
    const s = await filledServer();
    const out = suite.dir.file('out.raw');
    await upload(s.url, 'qemu-img convert -f raw -O raw "$uri" "$OUT"', ['--unix-socket', 'never'], out);
    expect(compareFiles(suite.source, out)).toBe('equal');
    expect(s.server.stats().methods.PUT ?? 0).toBe(0);
    expect(s.server.stats().bytesRead).toBeLessThan(SIZE * 0.6);
    expect(dataServices(s)).toEqual(['tcp']);
  });
});

test('a copy of the source file round-trips through memory: (sanity of the comparison helper)', () => {
  const c = suite.dir.file('copy.raw');
  copyFileSync(suite.source, c);
  expect(compareFiles(suite.source, c)).toBe('equal');
  const other = suite.dir.file('other.raw');
  makeSource(other, SIZE, 8);
  expect(compareFiles(suite.source, other)).not.toBe('equal');
});
