/**
 * Progress and stats people can read and machines can parse: --progress counts the export's
 * extent that is done (reads and skipped holes of a download, writes and zeroes of an upload
 * once imageio confirmed them), prints elapsed time, rate and ETA and ends with a final line
 * that says done only when the copy succeeded and was flushed;
 * one line per interval in a pipe, one line rewritten in place on a terminal; with
 * --log-format json every line of stderr (progress, stats, coalescing counters) is JSON.
 */
import { writeFileSync } from 'node:fs';
import { CLI, compareFiles, e2eSuite, MiB, runCli, spawnTracked } from '../helpers/cli';

const SIZE = 32 * MiB;
const suite = e2eSuite({ name: 'cli-output', size: SIZE, seed: 41 });
const lines = (s: string) => s.split('\n').filter((l) => l.trim() !== '');

test('--progress in a pipe: one line per interval; a sparse download (reads plus the holes skipped) ends at 100%', async () => {
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
    expect(x).toMatch(/^progress: [\d.]+% of 32 MiB \(written [^,]+, zeroed [^,]+, read [^,]+, holes [^)]+\), [\d.]+ s, [\d.]+ [\w ]*\/s, ETA (\?|[\d.]+ s|\d+ min \d+ s)$/);
  }
  const last = /^progress: done: ([\d.]+)% of 32 MiB \(written 0 bytes, zeroed 0 bytes, read ([\d.]+) (KiB|MiB), holes ([\d.]+) (KiB|MiB)\) in [\d.]+ s, [\d.]+ [\w ]*\/s$/.exec(l.at(-1)!);
  expect(last).not.toBeNull();
  // The source is sparse (a third data): nbdcopy read the data and skipped the holes, all of it.
  expect(last![1]).toBe('100.0');
  expect(Number(last![2])).toBeLessThan(32);
});

test('--progress of an upload never shows more than imageio confirmed; the final line is done at 100% once flushed', async () => {
  const s = await suite.imageio();
  // The first write is held 3 s before imageio performs it: bytes handed to the coalescing
  // layer are then far ahead of what imageio confirmed, and every line printed meanwhile is
  // checked against what imageio had performed when it arrived.
  s.server.faults.add({ op: 'write', times: 1, action: { delayMs: 3000 } });
  const proc = spawnTracked(process.execPath, [CLI, '--log-format', 'json', '--progress', '0.1', '--run', 'nbdcopy "$SRC" "$uri"', s.url], {
    env: { ...process.env, SRC: suite.source },
  });
  type Progress = { final: boolean; complete?: boolean; percent: number; written: number; zeroed: number; done: number };
  const seen: Progress[] = [];
  const violations: string[] = [];
  let partial = '';
  proc.child.stderr!.on('data', (chunk: Buffer) => {
    // What imageio has performed when the line arrives: the line was computed before, and
    // imageio performs a write before it answers, so this bounds what was confirmed then.
    const st = s.server.stats();
    partial += chunk.toString('utf8');
    const complete = partial.split('\n');
    partial = complete.pop()!;
    for (const l of complete.filter((x) => x.trim() !== '')) {
      const p = (JSON.parse(l) as { progress?: Progress }).progress;
      if (!p) continue;
      seen.push(p);
      if (p.written > st.bytesWritten) violations.push(`written ${p.written} > ${st.bytesWritten} performed`);
      if (p.zeroed > st.bytesZeroed) violations.push(`zeroed ${p.zeroed} > ${st.bytesZeroed} performed`);
      if (p.done > st.bytesWritten + st.bytesZeroed) violations.push(`done ${p.done} > ${st.bytesWritten + st.bytesZeroed} performed`);
    }
  });
  const r = await proc.exited;
  expect(r.code).toBe(0);
  expect(compareFiles(suite.source, s.image)).toBe('equal');
  expect(violations).toEqual([]);
  // The held write keeps the copy going for 3 s: lines every 0.1 s were checked meanwhile.
  expect(seen.filter((p) => !p.final).length).toBeGreaterThan(0);
  expect(seen.at(-1)).toMatchObject({ final: true, complete: true, percent: 100 });
});

test('--progress: the final line says NOT done when the copy failed', async () => {
  const r = await runCli(['--progress', '5', '--run', 'exit 3', 'memory:1M']);
  expect(r.code).toBe(3);
  expect(lines(r.stderr).at(-1)).toMatch(/^progress: NOT done \(the --run command ended with status 3\): 0\.0% of 1 MiB /);
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
