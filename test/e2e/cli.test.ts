/**
 * The command as a process (issue 5): virt-v2v's nbdkit contract (pidfile after the socket
 * listens, --exit-with-parent, SIGTERM flushes and closes every HTTP connection), nbdkit's
 * --run captive mode and its variables, detaching, start failures as one clear line, and the
 * output options (--stats, --progress, -v, --log-format json, --help, -V).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import {
  CLI,
  compareFiles,
  existsSync,
  isAlive,
  makePki,
  MiB,
  runCli,
  socketAccepts,
  spawnCli,
  spawnTracked,
  trackPid,
  waitFor,
  waitForFile,
  type StartImageioOptions,
  e2eSuite,
  waitAllClosed,
} from '../helpers/cli';
import { runOk } from '../helpers/run';

const SIZE = 32 * MiB;

const suite = e2eSuite({ name: 'cli', size: SIZE, seed: 5 });
const imageio = (opts: Partial<StartImageioOptions> = {}) => suite.imageio(opts);

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

const nonEmpty = (s: string) => s.split('\n').filter((l) => l.trim() !== '');

describe("virt-v2v's nbdkit contract", () => {
  test('pidfile written only once the socket listens; nbdcopy as virt-v2v; SIGTERM flushes, closes every HTTP connection, exits 0', async () => {
    const s = await imageio();
    const pidfile = suite.dir.file('nbdkit.pid');
    const sock = suite.dir.file('nbdkit.sock');
    const proc = spawnCli([
      '--exit-with-parent', '--foreground', '--pidfile', pidfile, '--unix', sock, '--threads', '8',
      '-D', 'nbdkit.backend.datapath=0', `url=${s.url}`, `size=${SIZE}`, 'insecure=true',
    ]);
    // Watch closely: the moment the pidfile appears, the socket must already accept.
    const pid = await waitFor(() => {
      if (proc.child.exitCode !== null) throw new Error(`exited early: ${proc.stderr}`);
      try {
        return readFileSync(pidfile, 'utf8');
      } catch (err) {
        expect((err as NodeJS.ErrnoException).code).toBe('ENOENT'); // absent, never half written
        return '';
      }
    }, 'the pidfile');
    expect(await socketAccepts(sock)).toBe(true);
    expect(pid).toBe(`${proc.pid}\n`);

    await runOk('nbdcopy', [suite.source, `nbd+unix:///?socket=${sock}`, '--request-size=4194304', '--requests=16', '--flush']);
    proc.signal('SIGTERM');
    const r = await proc.exited;
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    expect(compareFiles(suite.source, s.image)).toBe('equal');
    // Every HTTP connection is closed (oVirt can finalize the transfer at once).
    await waitFor(() => s.server.stats().connectionsOpen === 0, 'imageio connections to close', 3000);
    expect(s.server.stats().connections.every((c) => c.unflushedWrites === 0)).toBe(true);
  });

  test('SIGTERM flushes data written without a flush (nbdcopy without --flush, coalescing buffers)', async () => {
    const s = await imageio();
    const sock = suite.dir.file('nbd.sock');
    const pidfile = suite.dir.file('nbd.pid');
    const proc = spawnCli(['-f', '-P', pidfile, '-U', sock, s.url]);
    await waitForFile(pidfile);
    await runOk('nbdcopy', [suite.source, `nbd+unix:///?socket=${sock}`]);
    proc.signal('SIGTERM');
    const r = await proc.exited;
    expect(r.code).toBe(0);
    expect(compareFiles(suite.source, s.image)).toBe('equal');
    expect(s.server.stats().connections.every((c) => c.unflushedWrites === 0)).toBe(true);
    await waitAllClosed(s.server);
    expect(existsSync(pidfile)).toBe(true); // nbdkit leaves it; virt-v2v removes its temp dir
  });

  test('--exit-with-parent: killing the parent shell makes the server exit', async () => {
    const sock = suite.dir.file('nbd.sock');
    const pidfile = suite.dir.file('nbd.pid');
    const shell = spawnTracked('sh', ['-c', `"${process.execPath}" "${CLI}" --exit-with-parent -f -P "${pidfile}" -U "${sock}" memory:1M & wait`]);
    const pid = Number(await waitForFile(pidfile));
    trackPid(pid);
    expect(isAlive(pid)).toBe(true);
    await new Promise((r) => setTimeout(r, 700));
    expect(isAlive(pid)).toBe(true); // still serving while the parent lives
    process.kill(shell.pid, 'SIGKILL'); // the shell only, not its process group
    await waitFor(() => !isAlive(pid), 'the server to exit after its parent', 5000);
    expect(existsSync(sock)).toBe(false);
  });
});

describe('--run (captive mode)', () => {
  test("exits with the command's status", async () => {
    expect((await runCli(['--run', 'exit 3', 'memory:1M'])).code).toBe(3);
    expect((await runCli(['--run', 'true', 'memory:1M'])).code).toBe(0);
    expect((await runCli(['--run', 'kill -TERM $$', 'memory:1M'])).code).toBe(128 + 15);
  });

  test('sets $uri $nbd $unixsocket $port $exportname on a private socket (-U - implied), removed afterwards', async () => {
    const r = await runCli([
      '-e', 'disk1', '--run',
      'echo "uri=$uri"; echo "nbd=$nbd"; echo "unixsocket=$unixsocket"; echo "port=$port"; echo "exportname=$exportname"; nbdinfo --size "$uri"',
      'memory:3M',
    ]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const v = Object.fromEntries(nonEmpty(r.stdout).filter((l) => l.includes('=')).map((l) => l.split(/=(.*)/s).slice(0, 2)));
    expect(v.unixsocket).toMatch(/\/nbd\.sock$/);
    expect(v.uri).toBe(`nbd+unix:///disk1?socket=${v.unixsocket}`);
    expect(v.nbd).toBe(v.uri);
    expect(v.port).toBe('');
    expect(v.exportname).toBe('disk1');
    expect(nonEmpty(r.stdout).at(-1)).toBe(String(3 * MiB));
    expect(existsSync(path.dirname(v.unixsocket))).toBe(false); // the private directory is gone
  });

  test('-U - explicitly, and -p PORT (TCP): $port and an nbd:// URI that nbdinfo can use', async () => {
    const r1 = await runCli(['-U', '-', '--run', 'echo "$unixsocket"; nbdinfo --size "$uri"', 'memory:1M']);
    expect(r1.code).toBe(0);
    expect(nonEmpty(r1.stdout)).toEqual([expect.stringMatching(/nbd\.sock$/), String(MiB)]);

    const port = await freePort();
    const r2 = await runCli(['-p', String(port), '--run', 'echo "$port $unixsocket|$uri"; nbdinfo --size "$uri"', 'memory:2M']);
    expect(r2.stderr).toBe('');
    expect(r2.code).toBe(0);
    expect(nonEmpty(r2.stdout)).toEqual([`${port} |nbd://127.0.0.1:${port}/`, String(2 * MiB)]);
  });
});

test('without -f the command detaches and returns once listening', async () => {
  const sock = suite.dir.file('nbd.sock');
  const pidfile = suite.dir.file('nbd.pid');
  const proc = spawnCli(['-U', sock, '-P', pidfile, 'memory:1M']);
  // The parent exits 0; the detached child keeps stderr open, so wait for 'exit', not 'close'.
  const code = await new Promise<number | null>((resolve) => proc.child.once('exit', (c) => resolve(c)));
  expect(code).toBe(0);
  // Returned only once listening: pidfile and socket are there already.
  const pid = Number(readFileSync(pidfile, 'utf8'));
  trackPid(pid);
  expect(pid).not.toBe(proc.pid);
  expect(isAlive(pid)).toBe(true);
  expect(await socketAccepts(sock)).toBe(true);
  await runOk('nbdinfo', ['--size', `nbd+unix:///?socket=${sock}`]);
  process.kill(pid, 'SIGTERM');
  await waitFor(() => !isAlive(pid), 'the daemon to exit on SIGTERM', 5000);
});

describe('start failures: one clear line, non-zero exit, nothing listening', () => {
  let pki: ReturnType<typeof makePki>;
  beforeAll(() => {
    pki = makePki(suite.shared.path);
  });

  async function fails(args: string[], expected: RegExp) {
    const sock = suite.dir.file('fail.sock');
    const pidfile = suite.dir.file('fail.pid');
    const r = await runCli(['-f', '-U', sock, '-P', pidfile, ...args], { timeoutMs: 30000 });
    expect({ code: r.code, lines: nonEmpty(r.stderr), stdout: r.stdout }).toEqual({
      code: 1,
      lines: [expect.stringMatching(expected)],
      stdout: '',
    });
    expect(r.stderr.startsWith('imageio-nbd: ')).toBe(true);
    expect(existsSync(sock)).toBe(false);
    expect(existsSync(pidfile)).toBe(false);
  }

  test('missing URL', () => fails([], /missing URL/));
  test('missing URL in the key=value form', () => fails(['size=1G', 'insecure=true'], /missing URL/));

  test('unreachable server (closed port)', async () => {
    const port = await freePort();
    await fails(['--retries', '0', `http://127.0.0.1:${port}/images/abc`], /ECONNREFUSED/);
  });

  test('wrong CA', async () => {
    const s = await imageio({ tls: { cert: pki.cert, key: pki.key }, withUnix: false });
    await fails(['--cafile', pki.otherCa, s.url], /cannot verify the TLS certificate of https:\/\/127\.0\.0\.1:\d+: .*cafile.*insecure/);
  });

  test('expired ticket', async () => {
    const s = await imageio();
    s.server.expireTicket();
    await fails([s.url], /403.*expired/);
  });

  test('socket path in use by another server, which keeps working', async () => {
    const sock = suite.dir.file('fail.sock');
    const other = net.createServer((c) => {
      c.on('error', () => undefined); // imageio-nbd's probe connects and goes away
      c.end('hello');
    });
    await new Promise<void>((r) => other.listen(sock, r));
    try {
      const r = await runCli(['-f', '-U', sock, 'memory:1M']);
      expect(r.code).toBe(1);
      expect(nonEmpty(r.stderr)).toEqual([`imageio-nbd: socket ${sock} is in use by another server`]);
      expect(await socketAccepts(sock)).toBe(true);
    } finally {
      await new Promise((r) => other.close(r));
    }
  });

  test.each([
    [['size=abc', 'url=http://127.0.0.1:1/images/x'], /size/],
    [['--size', '-5', 'http://127.0.0.1:1/images/x'], /size/],
    [['--size', '0', 'http://127.0.0.1:1/images/x'], /size 0/],
    [['memory:0'], /memory:SIZE needs a size above 0/],
    [['memory:lots'], /size/],
    [['--request-size', '1Q', 'memory:1M'], /request size/],
    [['--request-size', '128M', 'memory:1M'], /request size/],
    [['--block-size', '3000', 'memory:1M'], /block size/],
    [['--threads', '0', 'memory:1M'], /threads/],
    [['--progress=-1', 'memory:1M'], /progress/],
    [['--keepalive', '0', 'memory:1M'], /keepalive/],
  ])('nonsense: %j', (args, re) => fails(args, re));

  test('unknown option', () => fails(['--frobnicate', 'memory:1M'], /frobnicate/));
});

describe('output', () => {
  test('default: quiet on success, only what --run prints', async () => {
    const s = await imageio();
    const r = await runCli(['--run', 'qemu-img convert -n -f raw -O raw "$SRC" "$uri" && echo copied', s.url], {
      env: { ...process.env, SRC: suite.source },
    });
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('copied\n');
    expect(r.stderr).toBe('');
    expect(compareFiles(suite.source, s.image)).toBe('equal');
  });

  test('--stats: nbdkit lines, http lines, process line on stderr; --stats=FILE into a file', async () => {
    const s = await imageio();
    const cmd = 'qemu-img convert -n -f raw -O raw "$SRC" "$uri"';
    const env = { ...process.env, SRC: suite.source };
    const r = await runCli(['--stats', '--run', cmd, s.url], { env });
    expect(r.code).toBe(0);
    const lines = nonEmpty(r.stderr);
    const rate = String.raw`[\d.]+ (bytes|KiB|MiB|GiB)`;
    const nbd = new RegExp(String.raw`^(total|write|zero|flush|read|extents): \d+ ops, [\d.]+ s, ${rate}, ${rate}/s( op, ${rate}/s total)?$`);
    expect(lines[0]).toMatch(/^total: \d+ ops, /);
    expect(lines).toContainEqual(expect.stringMatching(/^write: \d+ ops, [\d.]+ s, [\d.]+ MiB, /));
    expect(lines).toContainEqual(expect.stringMatching(/^flush: \d+ ops, /));
    expect(lines).toContainEqual(expect.stringMatching(/^process: [\d.]+ s user, [\d.]+ s sys, peak RSS [\d.]+ MiB$/));
    expect(lines).toContainEqual(expect.stringMatching(/^http PUT: \d+ requests, [\d.]+ MiB, mean [\d.]+ (KiB|MiB)$/));
    expect(lines).toContainEqual(expect.stringMatching(/^http PATCH flush: \d+ requests$/));
    expect(lines).toContainEqual(
      expect.stringMatching(/^http: \d+ of \d+ connections used, \d+ retries, \d+ reconnects, [\d.]+ MiB sent, .* received$/),
    );
    expect(lines).toContainEqual(expect.stringMatching(/^coalesce: \{.*\}$/));
    for (const l of lines) {
      expect(l).toMatch(new RegExp(`${nbd.source}|^http[ :]|^process: |^coalesce: |^readahead: |^memory: `));
    }

    const s2 = await imageio({ name: 'b' });
    const file = suite.dir.file('stats.txt');
    const r2 = await runCli([`--stats=${file}`, '--run', cmd, s2.url], { env });
    expect(r2.code).toBe(0);
    expect(r2.stderr).toBe('');
    const text = readFileSync(file, 'utf8');
    expect(text).toMatch(/^total: \d+ ops/);
    expect(text).toMatch(/^http PUT: /m);
    expect(text).toMatch(/^process: /m);
  });

  test('--stats URL: the URL is not taken as the stats file', async () => {
    const r = await runCli(['--stats', 'memory:1M', '--run', 'true']);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/^total: 0 ops/m);
    expect(existsSync('memory:1M')).toBe(false);
  });

  test('--progress 1 prints progress lines while serving, then a final line', async () => {
    const r = await runCli(['--progress', '1', '--run', 'sleep 2.6', 'memory:1M']);
    expect(r.code).toBe(0);
    const lines = nonEmpty(r.stderr);
    expect(lines.length).toBeGreaterThanOrEqual(2);
    for (const l of lines.slice(0, -1)) {
      expect(l).toMatch(/^progress: [\d.]+% of 1 MiB \(written [\d.]+ \w+, zeroed [\d.]+ \w+, read [\d.]+ \w+, holes [\d.]+ \w+\), [\d.]+ s, [\d.]+ [\w ]*\/s, ETA (\?|[\d.]+ s)$/);
    }
    expect(lines.at(-1)).toMatch(/^progress: done: 0\.0% of 1 MiB \(written 0 bytes, zeroed 0 bytes, read 0 bytes, holes 0 bytes\) in [\d.]+ s, 0 bytes\/s$/);
  });

  test('-v gives one debug line per request (NBD and HTTP)', async () => {
    const s = await imageio();
    const r = await runCli(['-v', '--request-size', '0', '--run', '/usr/bin/python3 -m nbd -u "$uri" -c "h.pwrite(b\\"x\\" * 4096, 8192); h.flush()"', s.url]);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/DEBUG: request .*cmd=write .*offset=8192 length=4096/);
    expect(r.stderr).toMatch(/DEBUG: imageio request method=PUT op=write offset=8192 length=4096 .*status=200/);
    expect(r.stderr).toMatch(/DEBUG: imageio request method=PATCH op=flush/);
    // One line per event, and no path quoted twice.
    for (const l of nonEmpty(r.stderr)) expect(l).toMatch(/^\[\d\d:\d\d:\d\d\.\d{3}\] (TRACE|DEBUG|INFO|WARN|ERROR): /);
    expect(r.stderr).not.toContain('\\"');
    // The size is said once (the backend's "ready" line), not again by every layer.
    expect(nonEmpty(r.stderr).filter((l) => l.includes(String(SIZE)) || l.includes('32 MiB'))).toHaveLength(1);
  });

  test('--log-format json: every stderr line is JSON, also a start failure', async () => {
    const s = await imageio();
    const r = await runCli(['-v', '--log-format', 'json', '--run', 'nbdinfo --size "$uri" >/dev/null', s.url]);
    expect(r.code).toBe(0);
    const lines = nonEmpty(r.stderr);
    expect(lines.length).toBeGreaterThan(3);
    for (const l of lines) {
      const j = JSON.parse(l);
      expect(typeof j.level).toBe('number');
      expect(typeof j.msg).toBe('string');
    }
    const bad = await runCli(['--log-format', 'json', '-f', '-U', suite.dir.file('x.sock'), 'http://127.0.0.1:1/images/x', '--retries', '0']);
    expect(bad.code).toBe(1);
    const badLines = nonEmpty(bad.stderr);
    expect(badLines).toHaveLength(1);
    expect(JSON.parse(badLines[0]).msg).toMatch(/^cannot start: .*ECONNREFUSED/);
  });

  test('--help mentions every option; -V and --version print the version', async () => {
    const h = await runCli(['--help']);
    expect(h.code).toBe(0);
    const options = [
      '--unix', '--port', '--ipaddr', '--foreground', '--readonly', '--exportname', '--run', '--exit-with-parent',
      '--pidfile', '--threads', '--verbose', '-V', '--debug', '--selinux-label', '--cafile', '--insecure',
      '--unix-socket', '--connections', '--request-size', '--max-buffer', '--size', '--block-size',
      '--connect-timeout', '--request-timeout', '--retries', '--keepalive', '--stats', '--progress',
      '--log-format', '--help', '--version', 'url=', 'size=', 'cafile=', 'insecure=', 'is_ovirt_host=',
      'imageio-server',
    ];
    for (const o of ['-U', '-p', '-i', '-f', '-r', '-e', '-P', '-t', '-v', '-D', '-h']) {
      expect(h.stdout).toMatch(new RegExp(`(^|[\\s,])${o}[,\\s]`));
    }
    for (const o of options) expect(h.stdout).toContain(o);
    const pkg = JSON.parse(readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')) as { version: string };
    for (const flag of ['-V', '--version']) {
      const v = await runCli([flag]);
      expect(v.code).toBe(0);
      expect(v.stdout).toBe(`imageio-nbd ${pkg.version}\n`);
    }
  });
});

test('a file:// export round-trips through nbdcopy (the same command, no imageio)', async () => {
  const target = suite.dir.file('file-target.raw');
  writeFileSync(target, '');
  await runOk('truncate', ['-s', String(SIZE), target]);
  const r = await runCli(['--run', 'nbdcopy "$SRC" "$uri"', `file://${target}`], { env: { ...process.env, SRC: suite.source } });
  expect(r.code).toBe(0);
  expect(compareFiles(suite.source, target)).toBe('equal');
});
