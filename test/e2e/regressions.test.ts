/**
 * regressions (not committed: these fail on main). Found by the end-to-end tests.
 */
import { compareFiles, killAll, makeSource, MiB, parseStats, runCli, startImageio, tmpDir, type TestImageio, type TmpDir } from '../helpers/cli';

let dir: TmpDir;
const servers: TestImageio[] = [];
beforeEach(() => { dir = tmpDir('regress-'); });
afterEach(async () => {
  await killAll();
  while (servers.length) await servers.pop()!.stop();
  dir.cleanup();
});

// tryUnixSocket() replaces connection 0, which connected over the URL for OPTIONS: it must
// not be counted as a pooled connection ("http: 5 of 4 connections used" once).
test('--stats: connections used never exceeds the pool size (unix socket in use)', async () => {
  const s = await startImageio({ dir, imageSize: 64 * MiB });
  servers.push(s);
  const src = dir.file('src.raw');
  makeSource(src, 64 * MiB, 1); // enough data that all 4 pooled connections carry some
  const r = await runCli(['--stats', '--run', 'nbdcopy --flush "$SRC" "$uri"', s.url], { env: { ...process.env, SRC: src } });
  expect(r.code).toBe(0);
  const m = /^http: (\d+) of (\d+) connections used/m.exec(parseStats(r.stderr).httpSummary ?? '');
  expect(m).not.toBeNull();
  expect(Number(m![1])).toBeLessThanOrEqual(Number(m![2]));
});

// Without imageio's flush feature (old servers) SEND_FLUSH was not offered, so virt-v2v's
// `nbdcopy --flush` failed ("server does not support flush operations"). Such a server flushes
// every PUT itself (flush=y is its default), so a flush that drains in-flight (and coalesced)
// writes is correct.
test('old server (OPTIONS 204): virt-v2v nbdcopy --flush works', async () => {
  const s = await startImageio({ dir, imageSize: 16 * MiB, legacy: 'options-204' });
  servers.push(s);
  const src = dir.file('src.raw');
  makeSource(src, 16 * MiB, 1);
  const r = await runCli(['--run', 'nbdcopy --request-size=4194304 --requests=16 --flush "$SRC" "$uri"', s.url], { env: { ...process.env, SRC: src } });
  expect(r.stderr).not.toMatch(/does not support flush/);
  expect(r.code).toBe(0);
  expect(compareFiles(src, s.image)).toBe('equal');
});
