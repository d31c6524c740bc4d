/** Shared by the packaging tests: a fresh clone of this checkout, and npm run as a user would. */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, realpathSync } from 'node:fs';
import path from 'node:path';
import { ROOT } from './cli';
import { run } from './run';

/** Non-empty lines of a command's output. */
export const lines = (s: string) => s.split('\n').filter((l) => l.trim() !== '');

/** This checkout as a fresh clone would have it: the files git knows of, no node_modules or dist/. */
export function freshClone(dir: string): string {
  mkdirSync(dir, { recursive: true });
  const files = execFileSync('git', ['ls-files', '-co', '--exclude-standard', '-z'], { cwd: ROOT })
    .toString()
    .split('\0')
    // Never node_modules, .tools or dist/, even where git does not ignore them (a symlinked
    // node_modules is not matched by "node_modules/"): npm ci in the copy would empty the
    // directory the link points to.
    .filter((f) => f !== '' && existsSync(path.join(ROOT, f)) && !f.split('/').some((part) => ['node_modules', '.tools', 'dist'].includes(part)));
  execFileSync('tar', ['-cf', path.join(dir, '..', 'clone.tar'), '--null', '-T', '-'], { cwd: ROOT, input: files.join('\0') });
  execFileSync('tar', ['-xf', path.join(dir, '..', 'clone.tar')], { cwd: dir });
  return dir;
}

/**
 * npm run as a user would: by the Node.js running the tests, or by `node` (Debian's
 * /usr/bin/node, say); that Node's directory comes first on PATH, so that scripts and
 * `#!/usr/bin/env node` find it too.
 */
export async function npm(args: string[], cwd: string, opts: { node?: string; timeoutMs?: number } = {}) {
  const node = opts.node ?? process.execPath;
  const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${path.dirname(node)}:${process.env.PATH ?? ''}` };
  for (const k of Object.keys(env)) if (k.startsWith('npm_')) delete env[k];
  const npmCli = realpathSync(execFileSync('sh', ['-c', 'command -v npm'], { env }).toString().trim());
  const r = await run(node, [npmCli, ...args, '--no-audit', '--no-fund', '--prefer-offline'], { cwd, env, timeoutMs: opts.timeoutMs ?? 300000 });
  if (r.code !== 0) throw new Error(`npm ${args.join(' ')} exited ${r.code}\n${r.stdout}\n${r.stderr}`);
  return r;
}

/** The machine's own older Node.js (Debian's nodejs package, which scripts/ensure-deps.sh installs). */
export const SYSTEM_NODE = '/usr/bin/node';

/** The major version of the Node.js at `node`. */
export function nodeMajor(node: string): number {
  return Number(execFileSync(node, ['-p', 'process.versions.node.split(".")[0]']).toString());
}
