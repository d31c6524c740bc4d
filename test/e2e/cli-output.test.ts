/**
 * Progress and stats people can read and machines can parse: --progress counts reads (a
 * download) as well as writes, prints elapsed time, rate and ETA and ends with a final line;
 * one line per interval in a pipe, one line rewritten in place on a terminal; with
 * --log-format json every line of stderr (progress, stats, coalescing counters) is JSON.
 */
import { writeFileSync } from 'node:fs';
import { CLI, compareFiles, e2eSuite, MiB, runCli, spawnTracked } from '../helpers/cli';

const SIZE = 32 * MiB;
const suite = e2eSuite({ name: 'cli-output', size: SIZE, seed: 41 });
const lines = (s: string) => s.split('\n').filter((l) => l.trim() !== '');

test('--progress in a pipe: one line per interval, reads counted (a download), a final "done" line', async () => {
  const s = await suite.imageio({ image: suite.source, readonly: true });
  const out = suite.dir.file('backup.raw');
  const r = await runCli(['--progress', '0.5', '--readonly', '--run', 'sleep 1.2; nbdcopy "$uri" "$OUT"', s.url], {
    env: { ...process.env, OUT: out },
  });
  expect(r.code).toBe(0);
  expect(compareFiles(suite.source, out)).toBe('equal');
  expect(r.stderr).not.toContain('\r');
  const l = lines(r.stderr);
  expect(l.length).toBeGreaterThanOrEqual(3);
  for (const x of l.slice(0, -1)) {
    expect(x).toMatch(/^progress: [\d.]+% of 32 MiB \(written [^,]+, zeroed [^,]+, read [^)]+\), [\d.]+ s, [\d.]+ [\w ]*\/s, ETA (\?|[\d.]+ s|\d+ min \d+ s)$/);
  }
  const last = /^progress: done: ([\d.]+)% of 32 MiB \(written 0 bytes, zeroed 0 bytes, read ([\d.]+) (KiB|MiB)\) in [\d.]+ s, [\d.]+ [\w ]*\/s$/.exec(l.at(-1)!);
  expect(last).not.toBeNull();
  expect(Number(last![1])).toBeGreaterThan(0); // a download no longer shows 0%
});

test('--progress on a terminal: one line rewritten in place, ended by the final line', async () => {
  // script(1) gives the command a pseudo-terminal; what it printed comes back on stdout.
  const cmd = `"${process.execPath}" "${CLI}" --progress 0.4 --run 'sleep 1.3' memory:1M`;
  const p = spawnTracked('script', ['-qfec', cmd, '/dev/null']);
  const r = await p.exited;
  expect(r.code).toBe(0);
  const text = r.stdout.replace(/\r\n/g, '\n');
  const updates = text.split('\r').filter((x) => x.startsWith('progress: '));
  expect(updates.length).toBeGreaterThanOrEqual(3);
  const eraseLine = '\u001b[K'; // what qemu-img -p style updating lines end with
  for (const u of updates) expect(u.includes(eraseLine)).toBe(true);
  expect(updates.at(-1)!.startsWith('progress: done: ')).toBe(true);
  expect(updates.at(-1)!.endsWith(`${eraseLine}\n`)).toBe(true);
  expect(text.trimEnd().split('\n')).toHaveLength(1); // one line on the screen
});

test('--log-format json: progress, stats and the coalescing counters are JSON lines too', async () => {
  const s = await suite.imageio();
  const r = await runCli(['--log-format', 'json', '--progress', '0.5', '--stats', '--run', 'sleep 0.7; nbdcopy "$SRC" "$uri"', s.url], {
    env: { ...process.env, SRC: suite.source },
  });
  expect(r.code).toBe(0);
  expect(compareFiles(suite.source, s.image)).toBe('equal');
  const records = lines(r.stderr).map((l) => JSON.parse(l) as Record<string, unknown> & { stats?: { kind: string }; progress?: { final: boolean } });
  for (const rec of records) {
    expect(typeof rec.level).toBe('number');
    expect(typeof rec.msg).toBe('string');
  }
  const progress = records.filter((x) => x.msg === 'progress');
  expect(progress.length).toBeGreaterThanOrEqual(2);
  expect(progress.at(-1)!.progress).toMatchObject({ final: true, size: SIZE });
  expect((progress.at(-1)!.progress as unknown as { written: number }).written).toBeGreaterThan(0);
  const kinds = new Set(records.filter((x) => x.stats).map((x) => x.stats!.kind));
  expect([...kinds].sort()).toEqual(['coalesce', 'http', 'http-summary', 'memory', 'nbd', 'process', 'readahead']);
  const write = records.find((x) => x.stats?.kind === 'nbd' && (x.stats as { op?: string }).op === 'write');
  expect(write?.msg).toMatch(/^write: \d+ ops, /);
  expect(write?.stats).toMatchObject({ ops: expect.any(Number), bytes: expect.any(Number) });
});

test('--stats=FILE with --log-format json writes JSON lines to the file', async () => {
  const file = suite.dir.file('stats.json');
  writeFileSync(file, 'old content');
  const r = await runCli(['--log-format', 'json', `--stats=${file}`, '--run', 'nbdinfo --size "$uri" >/dev/null', 'memory:1M']);
  expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
  const rec = lines(require('node:fs').readFileSync(file, 'utf8')).map((l) => JSON.parse(l));
  expect(rec[0].msg).toMatch(/^total: /);
  expect(rec.some((x: { stats?: { kind: string } }) => x.stats?.kind === 'process')).toBe(true);
});
