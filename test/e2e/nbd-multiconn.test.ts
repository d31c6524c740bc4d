/**
 * Several libnbd handles (python3-libnbd, as nbdsh uses) on one server: multi-conn visibility
 * after FLUSH, many requests in flight on one handle, and the command set as libnbd sees it.
 */
import { writeFileSync, truncateSync } from 'node:fs';
import type { Backend } from '../../src/core/backend';
import { MemoryBackend } from '../../src/backends/memory-backend';
import { openFileBackend } from '../../src/backends/file-backend';
import { startNbdServer } from '../helpers/nbd-server';
import { run, runOk } from '../helpers/run';

const PY = '/usr/bin/python3';
const MiB = 1024 * 1024;

const MULTI_CONN = `
import nbd, sys
uri = sys.argv[1]
hs = []
for i in range(3):
    h = nbd.NBD()
    h.connect_uri(uri)
    hs.append(h)
a, b, c = hs
assert a.can_multi_conn() and b.can_multi_conn() and c.can_multi_conn()
for i in range(8):
    a.pwrite(bytes([65 + i]) * 65536, i * 1048576 + 12345)
b.flush()
for i in range(8):
    assert c.pread(65536, i * 1048576 + 12345) == bytes([65 + i]) * 65536, i
c.pwrite(b'fua' * 1000, 3 * 1048576, nbd.CMD_FLAG_FUA)
assert a.pread(3000, 3 * 1048576) == b'fua' * 1000
if c.can_zero():
    c.zero(65536, 12345)
    b.flush()
    assert a.pread(65536, 12345) == bytes(65536)
for h in hs:
    h.shutdown()
print("ok")
`;

const IN_FLIGHT = `
import nbd, sys, random
h = nbd.NBD()
h.connect_uri(sys.argv[1])
random.seed(5)
size = h.get_size()
blocks = {}
cookies = []
for i in range(64):
    off = i * 65536
    data = bytes([random.randrange(256)]) * 65536
    blocks[off] = data
    cookies.append(h.aio_pwrite(data, off))
while h.aio_in_flight() > 0:
    h.poll(-1)
for ck in cookies:
    assert h.aio_command_completed(ck)
bufs = [(off, nbd.Buffer(65536)) for off in blocks]
rc = [h.aio_pread(b, off) for off, b in bufs]
while h.aio_in_flight() > 0:
    h.poll(-1)
for off, b in bufs:
    assert b.to_bytearray() == blocks[off], off
h.flush()
# errors as libnbd reports them
try:
    h.pread(10, size - 5)
    raise SystemExit("read past end succeeded")
except nbd.Error as e:
    assert e.errnum == 22, e.errnum
try:
    h.pwrite(b'x' * 10, size - 5)
    raise SystemExit("write past end succeeded")
except nbd.Error as e:
    assert e.errnum == 28, e.errnum
if h.can_fast_zero():
    try:
        h.zero(65536, 0, nbd.CMD_FLAG_FAST_ZERO)
        print("fast-zero-ok")
    except nbd.Error as e:
        assert e.errnum == 95, e.errnum
        print("fast-zero-enotsup")
if h.can_trim():
    h.trim(65536, 0)
if h.can_cache():
    h.cache(65536, 0)
h.shutdown()
print("ok")
`;
import { testPool } from '../helpers/pool';

describe.each(['memory', 'file'])('libnbd handles against the %s backend', (kind) => {
  async function withServer(fn: (uri: string) => Promise<void>): Promise<void> {
    const s0 = await startNbdServer(new MemoryBackend(1, false, testPool())); // just for its private dir
    let backend: Backend;
    if (kind === 'memory') {
      backend = new MemoryBackend(16 * MiB, false, testPool());
    } else {
      const p = s0.dir.file('disk.raw');
      writeFileSync(p, '');
      truncateSync(p, 16 * MiB);
      backend = await openFileBackend(p, { pool: testPool() });
    }
    const s = await startNbdServer(backend);
    try {
      await fn(s.uri);
    } finally {
      await s.stop();
      await backend.close();
      await s0.stop();
    }
  }

  test('write on A, FLUSH on B, read on C', async () => {
    await withServer(async (uri) => {
      const r = await runOk(PY, ['-c', MULTI_CONN, uri], { timeoutMs: 30000 });
      expect(r.stdout.trim()).toBe('ok');
    });
  });

  test('64 writes in flight on one handle, then reads; errnos as libnbd sees them', async () => {
    await withServer(async (uri) => {
      const r = await runOk(PY, ['-c', IN_FLIGHT, uri], { timeoutMs: 30000 });
      expect(r.stdout).toContain(kind === 'memory' ? 'fast-zero-ok' : 'fast-zero-enotsup');
      expect(r.stdout.trim().endsWith('ok')).toBe(true);
    });
  });

  test('nbdsh -c', async () => {
    await withServer(async (uri) => {
      // nbdsh runs "python3 -mnbd" from PATH: make that Debian's python, which has the nbd module.
      const env = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` };
      const r = await run('nbdsh', ['-u', uri, '-c', 'h.pwrite(b"nbdsh", 0); h.flush(); print(h.pread(5, 0))'], {
        timeoutMs: 30000,
        env,
      });
      expect(r.stderr).toBe('');
      expect(r.stdout.trim()).toBe("bytearray(b'nbdsh')");
    });
  });
});
