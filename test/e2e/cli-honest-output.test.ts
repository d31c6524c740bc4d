/**
 * Honest output of the small kind: a closed stdout does not stop the built-in servers; a
 * download ticket is named as such; verify says a qcow2 source is not raw instead of reporting
 * a mismatch; a TLS failure is one line naming --cafile and --insecure; a URL without its
 * scheme or a mistyped subcommand is named for what it looks like; every command's help has one
 * format (usage, options, exit status) and -h works everywhere.
 */
import { execFileSync } from 'node:child_process';
import { compareFiles, e2eSuite, makePki, MiB, runCli, socketAccepts, spawnCli, waitFor } from '../helpers/cli';

const SIZE = 8 * MiB;
const suite = e2eSuite({ name: 'cli-honest', size: SIZE, seed: 23 });
const nonEmpty = (s: string) => s.split('\n').filter((l) => l.trim() !== '');

describe('a closed stdout does not stop a server', () => {
  test('imageio-server with its stdout closed before it prints the URL keeps serving; SIGTERM exits 0', async () => {
    const sock = suite.dir.file('local.sock');
    const p = spawnCli(['imageio-server', '--image', suite.dir.file('img.raw'), '--size', '1M', '--unix', sock]);
    // As `imageio-server ... | true`: nobody will read what it prints.
    p.child.stdout!.destroy();
    await waitFor(() => socketAccepts(sock), 'the server to listen');
    // It still answers (OPTIONS over its local socket).
    const options = execFileSync('curl', ['-s', '--unix-socket', sock, '-X', 'OPTIONS', 'http://localhost/images/x', '-o', '/dev/null', '-w', '%{http_code}'], { encoding: 'utf8' });
    expect(options).toMatch(/^\d{3}$/);
    p.signal('SIGTERM');
    const r = await p.exited;
    expect({ code: r.code, signal: r.signal, stderr: r.stderr }).toEqual({ code: 0, signal: null, stderr: '' });
  });

  test('--help and --dump-config into a closed stdout (`| head -1`, `| true`): exit 0, no stack trace', async () => {
    for (const args of [['--help'], ['--dump-config']]) {
      const p = spawnCli(args);
      p.child.stdout!.destroy();
      const r = await p.exited;
      expect({ args, code: r.code, stderr: r.stderr }).toEqual({ args, code: 0, stderr: '' });
    }
  });

  test('engine-server with its stdout closed keeps serving; SIGTERM exits 0', async () => {
    const control = suite.dir.file('engine-control.sock');
    const p = spawnCli(['engine-server', '--hosts', '1', '--control', control, '--dir', suite.dir.file('engine')]);
    p.child.stdout!.destroy();
    await waitFor(() => socketAccepts(control), 'the engine to listen', 30000);
    p.signal('SIGTERM');
    const r = await p.exited;
    expect({ code: r.code, signal: r.signal, stderr: r.stderr }).toEqual({ code: 0, signal: null, stderr: '' });
  });
});

test('a read-only (download) ticket is named once; qemu-img writing to it is explained', async () => {
  const s = await suite.imageio({ readonly: true });
  const r = await runCli(['--run', `qemu-img convert -n -f raw -O raw ${suite.source} "$uri"`, s.url]);
  expect(r.code).not.toBe(0);
  const ours = nonEmpty(r.stderr).filter((l) => l.startsWith('imageio-nbd: '));
  expect(ours).toEqual(['imageio-nbd: the transfer is a download ticket (imageio allows no writes): serving it read-only; use -r/--readonly to say so']);
  // Asked for read-only: nothing to say.
  const quiet = await runCli(['-r', '--run', 'nbdinfo --size "$uri"', s.url]);
  expect({ code: quiet.code, stderr: quiet.stderr, stdout: quiet.stdout }).toEqual({ code: 0, stderr: '', stdout: `${SIZE}\n` });
});

test('verify of a qcow2 source says it is not raw data (exit 2), instead of reporting a mismatch', async () => {
  const s = await suite.imageio({ image: suite.source, readonly: true });
  const qcow2 = suite.dir.file('source.qcow2');
  execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', suite.source, qcow2]);
  const r = await runCli(['verify', qcow2, s.url]);
  expect(r.code).toBe(2);
  expect(r.stdout).toBe('');
  expect(r.stderr).toBe(
    `imageio-nbd verify: ${qcow2} is a qcow2 image, not raw data: verify compares the disk's raw bytes, so a difference says nothing about the upload; ` +
      `convert it first (qemu-img convert -f qcow2 -O raw ${qcow2} ${qcow2}.raw) and verify that file\n`,
  );
  // Converted as told, it verifies.
  execFileSync('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', qcow2, `${qcow2}.raw`]);
  expect(compareFiles(`${qcow2}.raw`, suite.source)).toBe('equal');
  expect((await runCli(['verify', `${qcow2}.raw`, s.url])).code).toBe(0);
});

test('a TLS verification failure: one line, the reason once, --cafile and --insecure named with their dashes', async () => {
  const pki = makePki(suite.dir.path);
  const s = await suite.imageio({ tls: { cert: pki.cert, key: pki.key }, withUnix: false });
  const r = await runCli(['--cafile', pki.otherCa, '--run', 'true', s.url]);
  expect(r.code).toBe(1);
  const lines = nonEmpty(r.stderr);
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(
    /^imageio-nbd: cannot verify the TLS certificate of https:\/\/127\.0\.0\.1:\d+: [^:;]+ \[[A-Z_]+\]: pass the CA that signed it with --cafile FILE, or turn verification off with --insecure$/,
  );
});

describe('arguments that are not what they look like', () => {
  test('a URL without its scheme', async () => {
    const r = await runCli(['127.0.0.1:54322/images/T']);
    expect({ code: r.code, stderr: r.stderr }).toEqual({
      code: 1,
      stderr:
        "imageio-nbd: '127.0.0.1:54322/images/T' looks like a URL without its scheme: write https://127.0.0.1:54322/images/T (imageio's transfer URL), or http://127.0.0.1:54322/images/T for a plain-HTTP server\n",
    });
  });

  test('"help" and mistyped subcommands', async () => {
    expect((await runCli(['help'])).stderr).toBe("imageio-nbd: 'help' is not a subcommand: for help, run imageio-nbd --help\n");
    // Named before its options are taken for the main command's (--image is not one).
    const typo = await runCli(['imageio-sever', '--image', 'x']);
    expect({ code: typo.code, stderr: typo.stderr }).toEqual({
      code: 1,
      stderr: "imageio-nbd: unknown subcommand 'imageio-sever': did you mean 'imageio-server'? (subcommands: imageio-server, engine-server, verify)\n",
    });
    expect((await runCli(['verfy', 'a', 'b'])).stderr).toMatch(/^imageio-nbd: unknown subcommand 'verfy': did you mean 'verify'\?/);
  });

  test('a disk image that does not exist: named, with what else could be meant', async () => {
    const missing = suite.dir.file('missing.raw');
    const r = await runCli(['--run', 'true', missing]);
    expect({ code: r.code, stderr: r.stderr }).toEqual({
      code: 1,
      stderr: `imageio-nbd: cannot open ${missing}: no such file; give an imageio transfer URL (https://HOST:54322/images/TICKET), a disk image or memory:SIZE\n`,
    });
  });
});

test('every help: -h and --help exit 0, one format (Usage:, option tables, an Exit status section)', async () => {
  for (const cmd of [[], ['verify'], ['imageio-server'], ['engine-server']]) {
    for (const flag of ['-h', '--help']) {
      const r = await runCli([...cmd, flag]);
      expect({ cmd, flag, code: r.code, stderr: r.stderr }).toEqual({ cmd, flag, code: 0, stderr: '' });
      const lines = r.stdout.split('\n');
      expect(lines[0]).toMatch(new RegExp(`^Usage: imageio-nbd ${cmd.join(' ')}`.trimEnd()));
      expect({ cmd, titles: lines.filter((l) => /^(?! ).*options.*:$/.test(l)).length > 0 }).toEqual({ cmd, titles: true });
      expect(lines.filter((l) => /^ {2}-/.test(l)).length).toBeGreaterThan(3);
      expect(r.stdout).toMatch(/\nExit status: 0 +\S.*\n( {13}\S.*\n)+$/);
    }
  }
});
