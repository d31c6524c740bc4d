/**
 * Used by the benchmarks when /usr/bin/time is missing: runs a Node script (imageio-nbd's
 * bin/imageio-nbd.js) inside this process and, at exit, writes the process's rusage to OUT in
 * GNU time's `%e %U %S %M` format (wall s, user s, sys s, peak RSS KiB).
 *
 *   node dist/bench/rusage-wrapper.js OUT SCRIPT [ARGS...]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

const [out, script, ...rest] = process.argv.slice(2);
if (!out || !script) {
  process.stderr.write('usage: rusage-wrapper OUT SCRIPT [ARGS...]\n');
  process.exit(2);
}
const start = process.hrtime.bigint();
process.on('exit', () => {
  const ru = process.resourceUsage();
  const wall = Number(process.hrtime.bigint() - start) / 1e9;
  fs.writeFileSync(out, `${wall.toFixed(2)} ${(ru.userCPUTime / 1e6).toFixed(2)} ${(ru.systemCPUTime / 1e6).toFixed(2)} ${ru.maxRSS}\n`);
});
const resolved = path.resolve(script);
process.argv = [process.argv[0], resolved, ...rest];
require(resolved);
