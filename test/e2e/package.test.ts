/**
 * Installable and self-explaining: the README's install line works from a fresh clone (no
 * node_modules, no dist/), the package holds only what runs and needs no TypeScript, the
 * installed command serves an upload, an older Node gets one clear line, and the README's
 * options tables are exactly what --help prints.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { CLI, compareFiles, e2eSuite, MiB, ROOT, runCli, spawnTracked } from '../helpers/cli';
import { run } from '../helpers/run';
import { freshClone, lines, npm } from '../helpers/package';

const SIZE = 8 * MiB;
const suite = e2eSuite({ name: 'package', size: SIZE, seed: 51 });

jest.setTimeout(600000);

test('npm pack in a fresh clone, then npm install -g of the tarball into a prefix: --help and an upload from there', async () => {
  const clone = freshClone(suite.dir.file('clone'));
  await npm(['pack', '--pack-destination', suite.dir.path], clone);
  const tgz = readdirSync(suite.dir.path).find((f) => /^imageio-nbd-.*\.tgz$/.test(f))!;
  expect(tgz).toBeDefined();

  // Only what runs: the command, the compiled code, the nbdkit shim, README and package.json.
  const entries = lines(execFileSync('tar', ['-tzf', path.join(suite.dir.path, tgz)]).toString());
  for (const e of entries) {
    expect(e).toMatch(/^package\/(bin\/imageio-nbd\.js|dist\/(src|sim)\/.*\.(js|d\.ts)|examples\/nbdkit-shim\.sh|README\.md|package\.json)$/);
  }
  expect(entries).toContain('package/dist/src/cli/main.js');
  expect(entries).toContain('package/dist/src/index.d.ts');
  expect(entries.length).toBeLessThan(250);

  const prefix = suite.dir.file('prefix');
  await npm(['install', '-g', '--prefix', prefix, path.join(suite.dir.path, tgz)], suite.dir.path);
  const installed = path.join(prefix, 'lib', 'node_modules', 'imageio-nbd');
  expect(existsSync(path.join(installed, 'node_modules', 'typescript'))).toBe(false);
  const cmd = path.join(prefix, 'bin', 'imageio-nbd');
  const env = { ...process.env, PATH: `${path.dirname(process.execPath)}:${process.env.PATH ?? ''}` };

  const help = await run(cmd, ['--help'], { env });
  expect(help.code).toBe(0);
  expect(help.stdout).toMatch(/^Usage: imageio-nbd \[OPTIONS\] URL/);

  const s = await suite.imageio();
  const up = spawnTracked(cmd, ['--run', 'qemu-img convert -n -f raw -O raw "$SRC" "$uri"', s.url], { env: { ...env, SRC: suite.source } });
  const r = await up.exited;
  expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
  expect(compareFiles(suite.source, s.image)).toBe('equal');

  // The installed command on an older Node (Debian's): one line, exit 1.
  const oldNode = '/usr/bin/node';
  const major = Number(execFileSync(oldNode, ['-p', 'process.versions.node.split(".")[0]']).toString());
  expect(major).toBeLessThan(24); // scripts/ensure-deps.sh installs Debian's nodejs
  const old = await run(cmd, ['--help'], { env: { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` } });
  expect({ code: old.code, stdout: old.stdout }).toEqual({ code: 1, stdout: '' });
  expect(lines(old.stderr)).toEqual([expect.stringMatching(/^imageio-nbd: needs Node\.js 24 or later, this is v\d+\.\d+\.\d+: install Node\.js 24 LTS/)]);
});

test('the version check itself: any Node below 24 gets one line (also when /usr/bin/node is new)', async () => {
  const fake = suite.dir.file('old-node.js');
  writeFileSync(fake, "Object.defineProperty(process, 'version', { value: 'v20.1.0' }); Object.defineProperty(process, 'versions', { value: { ...process.versions, node: '20.1.0' } });\n");
  const r = await run(process.execPath, ['--require', fake, CLI, '--help']);
  expect({ code: r.code, stdout: r.stdout, stderr: r.stderr }).toEqual({
    code: 1,
    stdout: '',
    stderr: 'imageio-nbd: needs Node.js 24 or later, this is v20.1.0: install Node.js 24 LTS and run it with that\n',
  });
  const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { engines: { node: string } };
  expect(pkg.engines.node).toBe('>=24');
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
