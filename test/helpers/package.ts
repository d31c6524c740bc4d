/** Shared by the packaging tests: a fresh clone of this checkout, and npm run as a user would. */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
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

/** npm with the Node.js running the tests first on PATH. */
export async function npm(args: string[], cwd: string, timeoutMs = 300000) {
  const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${path.dirname(process.execPath)}:${process.env.PATH ?? ''}` };
  for (const k of Object.keys(env)) if (k.startsWith('npm_')) delete env[k];
  const r = await run('npm', [...args, '--no-audit', '--no-fund', '--prefer-offline'], { cwd, env, timeoutMs });
  if (r.code !== 0) throw new Error(`npm ${args.join(' ')} exited ${r.code}\n${r.stdout}\n${r.stderr}`);
  return r;
}
