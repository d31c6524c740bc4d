/**
 * Faults end to end: the built-in imageio server (in this process, with fault injection and a
 * control socket a --run script can reach with curl) misbehaves while qemu-img, nbdcopy or an
 * nbdsh script writes through the real imageio-nbd command. Failures must give a non-zero
 * exit and a clear log line; harmless faults must be invisible (bytes equal).
 */
import { readFileSync } from 'node:fs';
import {
  compareFiles,
  existsSync,
  MiB,
  runCli,
  type StartImageioOptions,
  type TestImageio,
  e2eSuite,
} from '../helpers/cli';

const SIZE = 32 * MiB;

const suite = e2eSuite({ name: 'faults', size: SIZE, seed: 3, imageio: { withControl: true } });
const imageio = (opts: Partial<StartImageioOptions> = {}) => suite.imageio(opts);

const QEMU_IMG = 'qemu-img convert -n -f raw -O raw "$SRC" "$uri"';
const NBDCOPY_V2V = 'nbdcopy --request-size=4194304 --requests=16 --flush "$SRC" "$uri"';

/** imageio-nbd --run CMD URL, with $SRC, $CONTROL (the server's control socket) and $SCRIPT set. */
function runWith(s: TestImageio, cmd: string, extra: string[] = [], script = '') {
  return runCli([...extra, '--run', cmd, s.url], {
    env: { ...process.env, SRC: suite.source, CONTROL: s.control ?? '', SCRIPT: script },
    timeoutMs: 60000,
  });
}

/** An nbdsh script: `h` is the connected handle; `control(path)` POSTs to the server's control socket. */
// Debian's python3 has the nbd module; a python3 earlier on PATH may not.
const NBDSH = '/usr/bin/python3 -m nbd -u "$uri" -c "$SCRIPT"';
function script(body: string): string {
  return [
    'import os, subprocess, sys, time',
    'def control(path):',
    '    subprocess.run(["curl", "-sSf", "-o", "/dev/null", "--unix-socket", os.environ["CONTROL"], "-X", "POST", "http://control" + path], check=True)',
    'def fails(what, fn):',
    '    try:',
    '        fn()',
    '    except nbd.Error as e:',
    '        print(what, "failed:", e.string, "errno", e.errno, flush=True)',
    '        return True',
    '    print(what, "ok", flush=True)',
    '    return False',
    body,
  ].join('\n');
}

/** stderr lines that are log lines (not --run output). */
function logLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l.trim() !== '');
}

describe('HTTP errors', () => {
  test('a 500 on every PUT fails the copy: non-zero exit, a log line naming PUT, offset, length and 500', async () => {
    const s = await imageio();
    s.server.faults.add({ method: 'PUT', times: Infinity, action: { status: 500 } });
    // -v: the chain of messages (each retry, the final failure); the default level has one summary line.
    const r = await runWith(s, QEMU_IMG, ['-v', '--request-size', '0']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/PUT offset=\d+ length=\d+ failed: HTTP 500\b.*\(after 3 retries\)/);
    // Retried, then given up: the server saw 4 attempts of the first PUT.
    expect(s.server.stats().statuses['500']).toBeGreaterThanOrEqual(4);
  });

  test('a 500 on every PUT with coalescing (default): writes were buffered, the copy still fails', async () => {
    const s = await imageio();
    s.server.faults.add({ method: 'PUT', times: Infinity, action: { status: 500 } });
    const r = await runWith(s, NBDCOPY_V2V, ['--retries', '1']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/PUT offset=\d+ length=\d+ with HTTP 500/);
  });

  test('one 500 on a PUT is retried: the copy succeeds and the bytes are equal', async () => {
    const s = await imageio();
    s.server.faults.add({ method: 'PUT', after: 2, action: { status: 500 } });
    const r = await runWith(s, QEMU_IMG);
    expect(r.code).toBe(0);
    expect(compareFiles(suite.source, s.image)).toBe('equal');
    expect(s.server.stats().faultsApplied).toBe(1);
    // A warning, not silence: at the default level one line at exit, the retry itself with -v.
    expect(r.stderr).toMatch(/^imageio-nbd: 1 warning from the layers below; run with -v to see them$/m);
  });
});

describe('dropped connections', () => {
  test('a dropped connection holding unflushed writes makes FLUSH fail (non-zero exit; data may be lost)', async () => {
    const s = await imageio();
    // The first flush's socket is destroyed before it is handled: its connection had unflushed PUTs.
    s.server.faults.add({ method: 'PATCH', op: 'flush', action: { drop: 'before' } });
    const r = await runWith(s, NBDCOPY_V2V);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/(was lost|failed to flush) with unflushed writes .*may not have reached the disk/);
    expect(r.stderr).toMatch(/nbd_flush|flush/i);
    expect(r.stderr).toContain('the transfer is NOT complete');
  });

  test('idle dirty connections closed by the server between a write and FLUSH: FLUSH fails with EIO', async () => {
    const s = await imageio();
    const r = await runWith(s, NBDSH, ['--request-size', '0'], script(`
h.pwrite(b"\\xab" * 65536, 1048576)
control("/close-idle")
time.sleep(0.5)
sys.exit(5 if fails("flush", lambda: h.flush()) else 0)
`));
    expect(r.stdout).toMatch(/flush failed: .*errno EIO/);
    expect(r.code).toBe(5);
    expect(r.stderr).toMatch(/unflushed writes \(.*1048576.*\).*may not have reached the disk/);
  });

  test('a PUT cut mid-body is not resent (it may still land later): the copy fails, NOT complete', async () => {
    const s = await imageio();
    s.server.faults.add({ method: 'PUT', action: { drop: 'mid-body' } });
    // -v: the backend's own lines; the default level has one summary line (test/e2e/cli-errors.test.ts).
    const r = await runWith(s, QEMU_IMG, ['-v']);
    expect(r.code).not.toBe(0);
    expect(s.server.stats().faultsApplied).toBe(1);
    expect(r.stderr).toMatch(/PUT offset=\d+ length=\d+ may still be written by imageio/);
    expect(r.stderr).toContain('the transfer is NOT complete');
  });

  test('a dropped clean connection is recovered transparently (idle close after a flush)', async () => {
    const s2 = await imageio({ name: 'b' });
    const r2 = await runWith(s2, NBDSH, [], script(`
h.pwrite(b"\\x11" * 4096, 0)
h.flush()
control("/close-idle")
time.sleep(0.3)
h.pwrite(b"\\x22" * 4096, 8192)
h.flush()
assert h.pread(4096, 0) == b"\\x11" * 4096
assert h.pread(4096, 8192) == b"\\x22" * 4096
print("done")
`));
    expect(r2.stderr).toBe('');
    expect(r2.stdout).toBe('done\n');
    expect(r2.code).toBe(0);
    const img = readFileSync(s2.image);
    expect(img.subarray(0, 4096).every((b) => b === 0x11)).toBe(true);
    expect(img.subarray(8192, 12288).every((b) => b === 0x22)).toBe(true);
    expect(s2.server.stats().connections.some((c) => c.closedBy === 'idle')).toBe(true);
  });

  test('a GET cut mid-body is retried: the download is byte-exact', async () => {
    const s = await imageio({ image: suite.source, readonly: true });
    s.server.faults.add({ method: 'GET', op: 'read', after: 1, action: { drop: 'mid-body' } });
    const out = suite.dir.file('out.raw');
    const r = await runCli(['--readonly', '--run', 'nbdcopy "$uri" "$OUT"', s.url], { env: { ...process.env, OUT: out } });
    expect(r.code).toBe(0);
    expect(compareFiles(suite.source, out)).toBe('equal');
    expect(s.server.stats().faultsApplied).toBe(1);
  });
});

describe('expired ticket', () => {
  test('at start: one clear line, exit 1, nothing listens and no pidfile', async () => {
    const s = await imageio();
    s.server.expireTicket();
    const sock = suite.dir.file('nbd.sock');
    const pid = suite.dir.file('nbd.pid');
    const r = await runCli(['--foreground', '--unix', sock, '--pidfile', pid, s.url]);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    const lines = logLines(r.stderr);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^imageio-nbd: .*403.*expired/);
    expect(existsSync(sock)).toBe(false);
    expect(existsSync(pid)).toBe(false);
  });

  test('mid-transfer: the next request fails with EIO and a clear message, exit non-zero', async () => {
    const s = await imageio();
    const r = await runWith(s, NBDSH, ['-v', '--request-size', '0'], script(`
h.pwrite(b"\\x01" * 65536, 0)
h.flush()
control("/ticket/expire")
failed = fails("write", lambda: h.pwrite(b"\\x02" * 65536, 65536))
sys.exit(7 if failed else 0)
`));
    expect(r.stdout).toMatch(/write failed: .*errno EIO/);
    expect(r.code).toBe(7);
    expect(r.stderr).toMatch(/PUT offset=65536 length=65536 failed: HTTP 403: the imageio ticket expired, was cancelled or does not exist: .*expired/);
  });
});

describe('idle connections', () => {
  // The server closes connections idle for 2 s; the client pauses 4 s between writes.
  const PAUSE = `
h.pwrite(b"\\x5a" * 65536, 0)
time.sleep(4)
h.pwrite(b"\\xa5" * 65536, 65536)
sys.exit(3 if fails("flush", lambda: h.flush()) else 0)
`;

  test('survive a client pause longer than the server idle timeout (--keepalive 0.5)', async () => {
    const s = await imageio({ idleTimeoutMs: 2000 });
    const r = await runWith(s, NBDSH, ['--keepalive', '0.5'], script(PAUSE));
    expect(r.stdout).toBe('flush ok\n');
    expect(r.code).toBe(0);
    const st = s.server.stats();
    expect(st.connections.filter((c) => c.closedBy === 'idle')).toEqual([]);
    expect(st.ops.flush).toBeGreaterThan(1); // keep-alive flushes
    const img = readFileSync(s.image);
    expect(img.subarray(0, 65536).every((b) => b === 0x5a)).toBe(true);
    expect(img.subarray(65536, 131072).every((b) => b === 0xa5)).toBe(true);
  });

  test('without keep-alive in time (default 30 s), the same pause loses the dirty connection: FLUSH fails', async () => {
    const s = await imageio({ idleTimeoutMs: 2000 });
    const r = await runWith(s, NBDSH, ['--request-size', '0'], script(PAUSE));
    expect(r.stdout).toMatch(/flush failed: .*EIO/);
    expect(r.code).toBe(3);
    expect(s.server.stats().connections.some((c) => c.closedBy === 'idle')).toBe(true);
    expect(r.stderr).toMatch(/may not have reached the disk/);
  });
});
