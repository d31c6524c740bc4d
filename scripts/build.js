#!/usr/bin/env node
'use strict';
// Builds dist/ (what the command and the library run) from the TypeScript sources; npm runs it
// as `prepare` (npm ci, npm install from git) and `prepack` (npm pack), so that a packed or
// installed imageio-nbd never needs TypeScript itself.
//
// - Nothing to do when dist/ is newer than every source (prepare and prepack both run on pack).
// - Without TypeScript (npm ci --omit=dev, npm pack in a fresh clone, or npm preparing a git
//   dependency under -g, whose own install puts the dev dependencies elsewhere), the dev
//   dependencies are installed here first, without scripts; when npm was asked to omit them,
//   they are removed again once dist/ is built.
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const sentinel = path.join(root, 'dist', 'src', 'cli', 'main.js');

function newestSource() {
  let newest = 0;
  const visit = (p) => {
    const st = fs.statSync(p);
    if (st.isDirectory()) for (const e of fs.readdirSync(p)) visit(path.join(p, e));
    else if (p.endsWith('.ts') || p.endsWith('.json')) newest = Math.max(newest, st.mtimeMs);
  };
  for (const p of ['src', 'sim', 'tsconfig.json', 'tsconfig.build.json', 'package.json']) visit(path.join(root, p));
  return newest;
}

function fresh() {
  try {
    return fs.statSync(sentinel).mtimeMs >= newestSource();
  } catch {
    return false;
  }
}

function hasTypeScript() {
  try {
    require.resolve('typescript/bin/tsc', { paths: [root] });
    require.resolve('@types/node/package.json', { paths: [root] });
    return true;
  } catch {
    return false;
  }
}

function npm(args) {
  // A git dependency is prepared inside `npm install -g`: keep its global settings out.
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (/^npm_config_(global|prefix|omit|include|only|production|location)$/i.test(k)) delete env[k];
  const npmCli = process.env.npm_execpath;
  const r = npmCli && npmCli.endsWith('.js')
    ? spawnSync(process.execPath, [npmCli, ...args], { cwd: root, env, stdio: ['ignore', 2, 2] })
    : spawnSync('npm', args, { cwd: root, env, stdio: ['ignore', 2, 2] });
  if (r.status !== 0) {
    process.stderr.write(`imageio-nbd build: npm ${args.join(' ')} failed\n`);
    process.exit(1);
  }
}

// An installed package has dist/ and no sources: nothing to build.
if (!fs.existsSync(path.join(root, 'src')) || fresh()) process.exit(0);
const omitDev = /(^|[\s,])dev($|[\s,])/.test(process.env.npm_config_omit || '') || process.env.NODE_ENV === 'production';
let installed = false;
if (!hasTypeScript()) {
  process.stderr.write('imageio-nbd build: installing the dev dependencies to build dist/\n');
  npm(['install', '--include=dev', '--ignore-scripts', '--no-save', '--no-audit', '--no-fund', '--prefer-offline']);
  installed = true;
}
const tsc = require.resolve('typescript/bin/tsc', { paths: [root] });
const r = spawnSync(process.execPath, [tsc, '-p', path.join(root, 'tsconfig.build.json')], { cwd: root, stdio: 'inherit' });
if (r.status !== 0) process.exit(r.status ?? 1);
if (installed && omitDev) npm(['prune', '--omit=dev', '--no-audit', '--no-fund']);
