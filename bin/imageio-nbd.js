#!/usr/bin/env node
'use strict';
// The CLI is compiled TypeScript: `npm run build` (or `npm ci`, which runs `prepare`) writes dist/.
const path = require('node:path');
const compiled = path.join(__dirname, '..', 'dist', 'src', 'cli.js');
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
