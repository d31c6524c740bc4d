/**
 * Engine mode when things go wrong: every failure must cancel the transfer, remove a disk the
 * run created, exit non-zero and end with one line naming the cause; and the fake engine must
 * end with no transfer open and no disk locked. Covers a failing and a killed --run command,
 * SIGTERM, a transfer stuck in initializing, finalize failing, a host going down, a transfer
 * paused by the engine, a wrong password, and --host naming a host that is down.
 */
import { compareFiles, e2eSuite, MiB, runCli, spawnCli, waitFor } from '../helpers/cli';
import { engineEnv, expectNothingLeft, useTestEngine, type TestEngine } from '../helpers/engine';

const SIZE = 16 * MiB;
const suite = e2eSuite({ name: 'engine-fail', size: SIZE, seed: 22 });

const engine = useTestEngine(suite);

const NEW_DISK = ['--create-disk', '--storage-domain', 'data', '--size', '16M', '--disk-name', 'doomed'];
const UPLOAD = 'qemu-img convert -n -f raw -O raw "$SRC" "$uri"';

function runFailing(t: TestEngine, args: string[], cmd: string) {
  const timeout = args.includes('--engine-timeout') ? [] : ['--engine-timeout', '20'];
  return runCli([...t.args, ...timeout, ...args, '--run', cmd], { env: engineEnv({ SRC: suite.source, CTL: t.control }), timeoutMs: 60_000 });
}

/** The last line of stderr: the one that names the cause. */
function lastLine(stderr: string): string {
  const lines = stderr.trim().split('\n');
  return lines[lines.length - 1];
}

const CANCELLED_AND_REMOVED = /; transfer [0-9a-f-]{36} cancelled, disk [0-9a-f-]{36} removed$/;

test('the --run command fails: exit with its status, transfer cancelled, the new disk removed', async () => {
  const t = await engine();
  const r = await runFailing(t, NEW_DISK, `${UPLOAD} && exit 3`);
  expect(r.code).toBe(3);
  expect(lastLine(r.stderr)).toMatch(/^imageio-nbd: the --run command exited with status 3/);
  expect(lastLine(r.stderr)).toMatch(CANCELLED_AND_REMOVED);
  const [tr] = await expectNothingLeft(t.engine, ['doomed']);
  expect(tr.phase).toBe('finished_failure');
  expect(t.engine.state().requests).toContain(`POST /imagetransfers/${tr.id}/cancel`);
  expect(t.engine.state().requests).not.toContain(`POST /imagetransfers/${tr.id}/finalize`);
});

test('a failed download: cancelled, and the existing disk stays ok', async () => {
  const t = await engine();
  const disk = t.engine.addDisk({ size: SIZE, from: suite.source });
  const r = await runFailing(t, ['--disk-id', disk.id, '-r'], 'nbdinfo "$uri" >/dev/null && exit 2');
  expect(r.code).toBe(2);
  expect(lastLine(r.stderr)).toMatch(/^imageio-nbd: the --run command exited with status 2; transfer \S+ cancelled$/);
  await expectNothingLeft(t.engine);
  expect(t.engine.state().disks.find((d) => d.id === disk.id)).toMatchObject({ status: 'ok' });
  expect(compareFiles(suite.source, disk.path)).toBe('equal');
});

test('an upload into an existing disk fails: the engine removes that disk, and imageio-nbd says so', async () => {
  const t = await engine();
  const disk = t.engine.addDisk({ name: 'precious', size: SIZE });
  const r = await runFailing(t, ['--disk-id', disk.id], 'exit 1');
  expect(r.code).toBe(1);
  expect(lastLine(r.stderr)).toMatch(
    /^imageio-nbd: the --run command exited with status 1; transfer \S+ cancelled, the engine removed disk \S+ \(oVirt removes the disk of a failed upload\)$/,
  );
  await expectNothingLeft(t.engine, ['precious']);
});

test('SIGTERM while the --run command runs: cancelled, the new disk removed, non-zero exit', async () => {
  const t = await engine();
  const started = Date.now();
  const p = spawnCli([...t.args, '--engine-timeout', '20', ...NEW_DISK, '--run', 'exec sleep 30'], { env: engineEnv() });
  await waitFor(() => t.engine.state().transfers.some((x) => x.phase === 'transferring'), 'the transfer to start');
  await new Promise((r) => setTimeout(r, 300)); // imageio-nbd opens the transfer and starts the command
  p.signal('SIGTERM');
  const r = await p.exited;
  expect(Date.now() - started).toBeLessThan(25_000); // the --run command was ended too
  expect(r.code).not.toBe(0);
  expect(r.code).not.toBeNull();
  expect(lastLine(r.stderr)).toMatch(/^imageio-nbd: interrupted by SIGTERM/);
  expect(lastLine(r.stderr)).toMatch(CANCELLED_AND_REMOVED);
  await expectNothingLeft(t.engine, ['doomed']);
});

test('a transfer stuck in initializing: gives up after --engine-timeout, cancels, removes the new disk', async () => {
  const t = await engine();
  t.engine.faults.stuckInitializing = true;
  const r = await runFailing(t, [...NEW_DISK, '--engine-timeout', '2'], UPLOAD);
  expect(r.code).toBe(1);
  expect(lastLine(r.stderr)).toMatch(/^imageio-nbd: transfer \S+ on host host1 was still initializing after 2 s \(--engine-timeout\)/);
  expect(lastLine(r.stderr)).toMatch(CANCELLED_AND_REMOVED);
  await expectNothingLeft(t.engine, ['doomed']);
});

test('SIGINT before serving (transfer still initializing): cancelled at once, the new disk removed', async () => {
  const t = await engine();
  t.engine.faults.stuckInitializing = true;
  const p = spawnCli([...t.args, '--engine-timeout', '60', ...NEW_DISK, '--run', 'exit 0'], { env: engineEnv() });
  await waitFor(() => t.engine.state().transfers.some((x) => x.phase === 'initializing'), 'the transfer to be created');
  const started = Date.now();
  p.signal('SIGINT');
  const r = await p.exited;
  expect(Date.now() - started).toBeLessThan(10_000); // not the 60 s --engine-timeout
  expect(r.code).toBe(1);
  expect(lastLine(r.stderr)).toMatch(/^imageio-nbd: interrupted by SIGINT/);
  expect(lastLine(r.stderr)).toMatch(CANCELLED_AND_REMOVED);
  await expectNothingLeft(t.engine, ['doomed']);
});

test('finalize fails (the upload does not verify): non-zero, no disk left', async () => {
  const t = await engine();
  t.engine.faults.finalizeFails = true;
  const r = await runFailing(t, NEW_DISK, UPLOAD);
  expect(r.code).toBe(1);
  expect(lastLine(r.stderr)).toMatch(/^imageio-nbd: the engine failed to finalize transfer \S+ \(finished_failure\): the uploaded image did not verify; transfer \S+ ended \(finished_failure\), disk \S+ removed$/);
  const [tr] = await expectNothingLeft(t.engine, ['doomed']);
  expect(t.engine.state().requests).toContain(`POST /imagetransfers/${tr.id}/finalize`);
});

test('the host goes down mid-transfer: reported as paused by the engine, cancelled, disk removed', async () => {
  const t = await engine();
  const down = `curl -sf --unix-socket "$CTL" -X POST -d '{"status":"non_responsive"}' http://x/hosts/host2/status`;
  const started = Date.now();
  const r = await runFailing(t, [...NEW_DISK, '--host', 'host2', '--inactivity-timeout', '4'], `${UPLOAD} && ${down} && exec sleep 30`);
  expect(Date.now() - started).toBeLessThan(25_000); // stopped by the phase change, not by the sleep
  expect(r.code).not.toBe(0);
  expect(lastLine(r.stderr)).toMatch(/^imageio-nbd: the engine paused transfer \S+ on host host2 \(paused_system\): the host or its imageio stopped answering the engine/);
  expect(lastLine(r.stderr)).toMatch(CANCELLED_AND_REMOVED);
  await expectNothingLeft(t.engine, ['doomed']);
});

test('a transfer paused by the engine (inactivity, paused_system) is reported as such', async () => {
  const t = await engine();
  const pause = 'curl -sf --unix-socket "$CTL" -X POST http://x/transfers/pause';
  const started = Date.now();
  const r = await runFailing(t, [...NEW_DISK, '--inactivity-timeout', '4'], `${UPLOAD} && ${pause} && exec sleep 30`);
  expect(Date.now() - started).toBeLessThan(25_000);
  expect(r.code).not.toBe(0);
  expect(lastLine(r.stderr)).toMatch(
    /^imageio-nbd: the engine paused transfer \S+ on host host1 \(paused_system\): .*no activity for more than its inactivity timeout \(4 s\); transfer \S+ cancelled, disk \S+ removed$/,
  );
  await expectNothingLeft(t.engine, ['doomed']);
});

test('a wrong password: one line from the engine, nothing created', async () => {
  const t = await engine();
  const args = [...t.args];
  const pw = suite.dir.file('wrong');
  require('node:fs').writeFileSync(pw, 'nope\n');
  args[args.indexOf('--password-file') + 1] = pw;
  const r = await runCli([...args, ...NEW_DISK, '--run', 'true'], { env: engineEnv() });
  expect(r.code).toBe(1);
  expect(r.stderr).toBe(
    "imageio-nbd: login to the engine as admin@internal failed: access_denied: Cannot authenticate user 'admin@internal': The username or password is incorrect.\n",
  );
  expect(t.engine.state()).toMatchObject({ disks: [], transfers: [], failedLogins: 1 });
});

test('--host names a host that is down: the new disk is removed again', async () => {
  const t = await engine();
  t.engine.setHostStatus('host2', 'maintenance');
  const r = await runFailing(t, [...NEW_DISK, '--host', 'host2'], 'true');
  expect(r.code).toBe(1);
  expect(r.stderr).toMatch(/^imageio-nbd: --host host2 is not an active host of data center Default \(active hosts: host1, host3\); disk \S+ removed\n$/);
  await expectNothingLeft(t.engine, ['doomed']);
  expect(t.engine.state().transfers).toEqual([]);
  expect(t.engine.state().requests.filter((x) => x.startsWith('DELETE /disks/'))).toHaveLength(1);
});
