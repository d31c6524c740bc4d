/**
 * The other ways to install from source: npm ci --omit=dev in a fresh clone, and npm pack of a
 * git URL (what the README gives for git). Beside package.test.ts so that jest runs them in
 * parallel: each spends most of its time in npm.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { e2eSuite, MiB } from '../helpers/cli';
import { run } from '../helpers/run';
import { freshClone, lines, npm, SYSTEM_NODE } from '../helpers/package';

const suite = e2eSuite({ name: 'package-source', size: MiB, seed: 52 });

jest.setTimeout(600000);

test('npm ci --omit=dev in a fresh clone builds dist/, leaves no TypeScript, and the command runs', async () => {
  const clone = freshClone(suite.dir.file('clone'));
  await npm(['ci', '--omit=dev'], clone);
  expect(existsSync(path.join(clone, 'dist', 'src', 'cli', 'main.js'))).toBe(true);
  expect(existsSync(path.join(clone, 'node_modules', 'typescript'))).toBe(false);
  const r = await run(process.execPath, [path.join(clone, 'bin', 'imageio-nbd.js'), '--run', 'nbdinfo --size "$uri"', 'memory:1M']);
  expect({ code: r.code, stdout: r.stdout, stderr: r.stderr }).toEqual({ code: 0, stdout: `${MiB}\n`, stderr: '' });
  // The clone's command runs on the package's own Node, which npm ci installed and kept.
  const env = { ...process.env, PATH: `${path.dirname(SYSTEM_NODE)}:${process.env.PATH ?? ''}` };
  const own = await run(path.join(clone, 'bin', 'imageio-nbd'), ['--run', 'nbdinfo --size "$uri"', 'memory:1M'], { env });
  expect({ code: own.code, stdout: own.stdout, stderr: own.stderr }).toEqual({ code: 0, stdout: `${MiB}\n`, stderr: '' });
});

test('npm pack of a git URL (the README way to install from git)', async () => {
  const clone = freshClone(suite.dir.file('git'));
  const git = (...a: string[]) => execFileSync('git', ['-c', 'user.email=t@example.com', '-c', 'user.name=t', ...a], { cwd: clone });
  git('init', '-q');
  git('add', '-A');
  git('commit', '-qm', 'snapshot');
  const out = suite.dir.file('out');
  mkdirSync(out);
  await npm(['pack', `git+file://${clone}`], out);
  const tgz = readdirSync(out).find((f) => f.endsWith('.tgz'))!;
  const entries = lines(execFileSync('tar', ['-tzf', path.join(out, tgz)]).toString());
  expect(entries).toContain('package/dist/src/cli/main.js');
  expect(entries).toContain('package/bin/imageio-nbd.js');
  expect(entries).toContain('package/bin/imageio-nbd'); // the installed command: runs the .js on the package's own Node
});

