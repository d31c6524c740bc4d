#!/usr/bin/env node
'use strict';
// Node.js 22 is the oldest that connects to an abstract unix socket (imageio's local socket on
// every oVirt host; measured: 22.0.0 can, 20.20.2 cannot). The installed command
// (bin/imageio-nbd) runs this file on the package's own Node when npm installed one. Written
// for old Node too, so that they get this line rather than a syntax error.
const major = Number(process.versions.node.split('.')[0]);
if (major < 22) {
  process.stderr.write(`imageio-nbd: needs Node.js 22 or later, this is ${process.version}: install Node.js 22 or 24, or on x86-64 or arm64 Linux reinstall imageio-nbd without --omit=optional (it brings its own)\n`);
  process.exit(1);
}
// Start-up time counts in every captive copy: keep V8's compiled code between runs (in the
// system's temporary directory; a cache that cannot be written is simply not used).
try {
  require('node:module').enableCompileCache();
} catch {
  /* no cache: compile as usual */
}
// The CLI is compiled TypeScript: `npm run build` (or `npm ci`, which runs `prepare`) writes dist/.
const path = require('node:path');
const compiled = path.join(__dirname, '..', 'dist', 'src', 'cli', 'main.js');
let cli;
try {
  cli = require(compiled);
} catch (err) {
  if (err && err.code === 'MODULE_NOT_FOUND' && String(err.message).includes(compiled)) {
    process.stderr.write(`imageio-nbd: ${compiled} is missing; run "npm run build" first\n`);
    process.exit(1);
  }
  throw err;
}
cli.main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (err) => { process.stderr.write(`imageio-nbd: ${err && err.stack ? err.stack : err}\n`); process.exit(1); },
);
