/**
 * A true drop-in for nbdkit: the questions tools ask nbdkit (compared with Debian's nbdkit),
 * virt-v2v's exact probe sequence and command line through examples/nbdkit-shim.sh, the
 * option spellings from nbdkit's manual, -s on stdin/stdout (nbdsh connect_command, qemu-img
 * on a socket fd), --exit-with-parent without -f, and SIGQUIT.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { UNSUPPORTED_NBDKIT_OPTIONS } from '../../src/cli/option-table';
import { NBDKIT_COMPAT_VERSION } from '../../src/cli/nbdkit-compat';
import {
  CLI,
  commandEnv,
  compareFiles,
  e2eSuite,
  existsSync,
  isAlive,
  MiB,
  runCli,
  socketAccepts,
  spawnCli,
  spawnTracked,
  trackPid,
  waitAllClosed,
  waitFor,
  waitForFile,
} from '../helpers/cli';
import { run, runOk } from '../helpers/run';
import { VIRT_V2V } from '../helpers/virt-v2v';

const SIZE = 32 * MiB;
const suite = e2eSuite({ name: 'cli-nbdkit', size: SIZE, seed: 31 });
const lines = (s: string) => s.split('\n').filter((l) => l !== '');

describe("nbdkit's informational options, in nbdkit's format", () => {
  test('--dump-config: key=value lines, sorted, with the keys callers read', async () => {
    const ours = await runCli(['--dump-config']);
    const real = await runOk('nbdkit', ['--dump-config']);
    expect(ours.code).toBe(0);
    const parse = (s: string) => Object.fromEntries(lines(s).map((l) => l.split(/=(.*)/s).slice(0, 2)));
    for (const l of lines(ours.stdout)) expect(l).toMatch(/^[a-z_]+=.*$/);
    expect(lines(ours.stdout)).toEqual([...lines(ours.stdout)].sort());
    const o = parse(ours.stdout);
    const r = parse(real.stdout);
    // The keys virt-v2v and scripts read are there, in the same form as nbdkit's.
    for (const k of ['version', 'version_major', 'version_minor', 'selinux', 'exit_with_parent', 'tls', 'binary', 'host_cpu', 'name']) {
      expect(Object.keys(o)).toContain(k);
      expect(Object.keys(r)).toContain(k);
    }
    expect(o.version).toMatch(/^\d+\.\d+\.\d+$/);
    expect(o.version).toBe(NBDKIT_COMPAT_VERSION);
    expect(`${o.version_major}.${o.version_minor}`).toBe(NBDKIT_COMPAT_VERSION.split('.').slice(0, 2).join('.'));
    expect(o.host_cpu).toBe(r.host_cpu);
    expect(o.selinux).toBe('yes');
    expect(o.exit_with_parent).toBe('yes');
  });

  test('--long-options and --short-options: every nbdkit option is accepted or refused with a reason', async () => {
    const longOurs = lines((await runCli(['--long-options'])).stdout);
    const shortOurs = lines((await runCli(['--short-options'])).stdout);
    const longReal = lines((await runOk('nbdkit', ['--long-options'])).stdout);
    const shortReal = lines((await runOk('nbdkit', ['--short-options'])).stdout);
    for (const l of longOurs) expect(l).toMatch(/^--[a-z0-9-]+$/);
    for (const s of shortOurs) expect(s).toMatch(/^-[A-Za-z0-9]$/);
    const refused = new Set(UNSUPPORTED_NBDKIT_OPTIONS.flatMap((u) => [`--${u.name}`, ...(u.short ? [`-${u.short}`] : [])]));
    for (const o of [...longReal, ...shortReal]) {
      expect({ option: o, known: longOurs.includes(o) || shortOurs.includes(o) || refused.has(o) }).toEqual({ option: o, known: true });
    }
    // What the probes grep for.
    for (const o of ['--exit-with-parent', '--foreground', '--pidfile', '--unix', '--threads', '--selinux-label', '--run', '--single', '--read-only', '--pid-file', '--no-fork', '--export-name']) {
      const g = await run('sh', ['-c', `"${process.execPath}" "${CLI}" --long-options | grep -q '^${o}$'`]);
      expect({ o, code: g.code }).toEqual({ o, code: 0 });
    }
  });

  test('PLUGIN --dump-plugin and --version exit 0; a refused option says why', async () => {
    const d = await runCli(['python', '/tmp/v2v/rhv-upload-plugin.py', '--dump-plugin']);
    expect(d.code).toBe(0);
    expect(lines(d.stdout)).toContain('name=python');
    expect(lines(d.stdout)).toContain('magic_config_key=script');
    for (const l of lines(d.stdout)) expect(l).toMatch(/^[a-z_]+=/);
    expect((await runCli(['--version'])).code).toBe(0);
    const t = await runCli(['--tls=require', 'memory:1M']);
    expect({ code: t.code, stderr: t.stderr }).toEqual({ code: 1, stderr: "imageio-nbd: nbdkit's --tls is not supported by imageio-nbd: NBD over TLS is not implemented: serve on a unix socket (-U) or on 127.0.0.1\n" });
  });
});

describe("virt-v2v's probes and command line through examples/nbdkit-shim.sh", () => {
  test.each([
    ['script=FILE (virt-v2v 2.x), the real nbdkit answering the probes', 'script', '/usr/bin/nbdkit'],
    ['a positional script (older virt-v2v), no real nbdkit: imageio-nbd answers everything', 'positional', '/nonexistent/nbdkit'],
  ])('%s', async (_name, form, real) => {
    const s = await suite.imageio();
    const plugin = suite.dir.file('rhv-upload-plugin.py');
    writeFileSync(plugin, '# virt-v2v writes its plugin here; imageio-nbd takes its place\n');
    const env = commandEnv(suite.dir, { shim: true, env: { ...process.env, NBDKIT_REAL: real, PLUGIN: plugin, PLUGIN_FORM: form, DIR: suite.dir.path, SIZE: String(SIZE), URL: s.url, SRC: suite.source } });
    const p = spawnTracked('bash', ['-c', VIRT_V2V], { env, timeoutMs: 90000 });
    const r = await p.exited;
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
    const version = real.startsWith('/usr') ? (await runOk('nbdkit', ['--dump-config'])).stdout.match(/^version=(.*)$/m)![1] : NBDKIT_COMPAT_VERSION;
    expect(lines(r.stdout)).toEqual([`probed: nbdkit ${version} selinux=yes`, 'copied']);
    expect(compareFiles(suite.source, s.image)).toBe('equal');
    await waitAllClosed(s.server);
  });

  test('every other invocation goes to the real nbdkit, unchanged', async () => {
    const env = commandEnv(suite.dir, { shim: true, env: { ...process.env, NBDKIT_REAL: '/usr/bin/nbdkit' } });
    const r = await run('nbdkit', ['-U', '-', 'memory', '1M', '--run', 'nbdinfo --size "$uri"'], { env });
    expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 0, stdout: `${MiB}\n` });
    const v = await run('nbdkit', ['--version'], { env });
    expect(v.stdout).toMatch(/^nbdkit 1\.\d+\.\d+$/m);
  });
});

describe("nbdkit's option spellings and behaviours", () => {
  test('--read-only --pid-file --no-fork --export-name: the same as -r -P -f -e', async () => {
    const sock = suite.dir.file('a.sock');
    const pidfile = suite.dir.file('a.pid');
    const proc = spawnCli(['--read-only', '--pid-file', pidfile, '--no-fork', '--export-name', 'disk1', '-U', sock, 'memory:1M']);
    expect(Number(await waitForFile(pidfile))).toBe(proc.pid); // --no-fork: no detached child
    const info = await runOk('nbdinfo', [`nbd+unix:///disk1?socket=${sock}`]);
    expect(info.stdout).toMatch(/export="disk1"/);
    expect(info.stdout).toMatch(/is_read_only: true/);
    proc.signal('SIGTERM');
    expect((await proc.exited).code).toBe(0);
  });

  test('SIGQUIT is handled like SIGTERM: data flushed, socket removed, exit 0', async () => {
    const s = await suite.imageio();
    const sock = suite.dir.file('q.sock');
    const pidfile = suite.dir.file('q.pid');
    const proc = spawnCli(['-f', '-U', sock, '-P', pidfile, s.url]);
    await waitForFile(pidfile);
    await runOk('nbdcopy', [suite.source, `nbd+unix:///?socket=${sock}`]);
    proc.signal('SIGQUIT');
    const r = await proc.exited;
    expect({ code: r.code, signal: r.signal, stderr: r.stderr }).toEqual({ code: 0, signal: null, stderr: '' });
    expect(compareFiles(suite.source, s.image)).toBe('equal');
    expect(existsSync(sock)).toBe(false);
  });

  test('--exit-with-parent without -f stays attached to its parent and exits with it', async () => {
    const sock = suite.dir.file('p.sock');
    const pidfile = suite.dir.file('p.pid');
    const shell = spawnTracked('sh', ['-c', `"${process.execPath}" "${CLI}" --exit-with-parent -P "${pidfile}" -U "${sock}" memory:1M & echo $!; wait`]);
    const pid = Number(await waitForFile(pidfile));
    trackPid(pid);
    await waitFor(() => shell.stdout.trim() !== '', 'the shell to print the pid');
    expect(pid).toBe(Number(shell.stdout.trim())); // the process the shell started, not a detached child
    await new Promise((r) => setTimeout(r, 1500));
    expect(isAlive(pid)).toBe(true); // not exited because "its launcher" exited
    expect(await socketAccepts(sock)).toBe(true);
    process.kill(shell.pid, 'SIGKILL');
    await waitFor(() => !isAlive(pid), 'the server to exit after its parent', 5000);
    expect(existsSync(sock)).toBe(false);
  });

  test('-s: one client on stdin/stdout, nbdsh h.connect_command (a socketpair); exits when it leaves', async () => {
    const s = await suite.imageio();
    const script = [
      `h.connect_command(["${process.execPath}", "${CLI}", "-s", "${s.url}"])`,
      'print(h.get_size())',
      'h.pwrite(b"single" * 1000, 3 * 1024 * 1024)',
      'h.flush()',
      'print(h.pread(6, 3 * 1024 * 1024).decode())',
    ].join('\n');
    const r = await runOk('/usr/bin/python3', ['-m', 'nbd', '-c', script]);
    expect(lines(r.stdout)).toEqual([String(SIZE), 'single']);
    expect(readFileSync(s.image).subarray(3 * MiB, 3 * MiB + 12).toString()).toBe('singlesingle');
    await waitAllClosed(s.server); // the server exited with the client: no connection left open
  });

  test('-s through two pipes, and qemu-img on a socket fd (json:{"file.driver":"nbd","file.server.type":"fd"})', async () => {
    const viaPipes = await runOk('/usr/bin/python3', ['-m', 'nbd', '-c',
      `h.connect_command(["sh", "-c", 'cat | "${process.execPath}" "${CLI}" -s memory:2M | cat']); print(h.get_size())`]);
    expect(viaPipes.stdout.trim()).toBe(String(2 * MiB));

    const target = suite.dir.file('qemu-target.raw');
    writeFileSync(target, '');
    await runOk('truncate', ['-s', String(SIZE), target]);
    // A socketpair: imageio-nbd -s on one end, qemu-img convert writing to the other through fd N.
    const py = String.raw`
import socket, subprocess, sys
a, b = socket.socketpair()
srv = subprocess.Popen([sys.argv[1], sys.argv[2], "-s", "file://" + sys.argv[4]], stdin=a, stdout=a)
a.close()
fd = b.fileno()
target = 'json:{"file.driver":"nbd","file.server.type":"fd","file.server.str":"%d"}' % fd
subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", sys.argv[3], target], pass_fds=[fd], check=True)
b.close()
sys.exit(srv.wait())
`;
    const r = await run('/usr/bin/python3', ['-c', py, process.execPath, CLI, suite.source, target]);
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
    expect(compareFiles(suite.source, target)).toBe('equal');
  });
});
