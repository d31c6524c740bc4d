/**
 * Engine mode when things go wrong, against a fake engine that removes the disk of every
 * upload that ends in failure, as oVirt does. A failure must never lose a disk the run did not
 * create: an upload into an existing disk is finalized (the disk kept, its content reported
 * partial), a download is finalized (the disk unchanged), an upload into a new disk is
 * cancelled and the disk removed; every failure exits non-zero with one line naming the cause,
 * and the fake engine must end with no transfer open and no disk locked. Once finalize was
 * sent, slow and lost answers are waited out and nothing is removed. A killed run is ended by
 * the engine through the transfer's timeout_policy. Covers a failing and a killed --run
 * command, SIGTERM, SIGKILL, a transfer stuck in initializing, finalize failing, slow or
 * unanswered, a refused action, a host going down, a transfer paused by the engine, a wrong
 * password, and --host naming a host that is down.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { EngineClient } from '../../src/engine/engine-client';
import { compareFiles, e2eSuite, MiB, runCli, spawnCli, waitFor } from '../helpers/cli';
import { engineEnv, expectNothingLeft, useTestEngine, type TestEngine } from '../helpers/engine';

const SIZE = 16 * MiB;
const suite = e2eSuite({ name: 'engine-fail', size: SIZE, seed: 22 });

const engine = useTestEngine(suite);

const NEW_DISK = ['--create-disk', '--storage-domain', 'data', '--size', '16M', '--disk-name', 'doomed'];
const UPLOAD = 'qemu-img convert -n -f raw -O raw "$SRC" "$uri"';

function runFailing(t: TestEngine, args: string[], cmd: string) {
  const timeout = args.includes('--engine-timeout') ? [] : ['--engine-timeout', '20'];
  return runCli([...t.args, ...timeout, ...args, '--run', cmd], { env: engineEnv({ SRC: suite.source, CTL: t.control, HALF: suite.dir.file('half.raw') }), timeoutMs: 60_000 });
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

test('a failed download: finalized, never cancelled, and the existing disk stays ok', async () => {
  const t = await engine();
  const disk = t.engine.addDisk({ size: SIZE, from: suite.source });
  const r = await runFailing(t, ['--disk-id', disk.id, '-r'], 'nbdinfo "$uri" >/dev/null && exit 2');
  expect(r.code).toBe(2);
  expect(lastLine(r.stderr)).toMatch(/^imageio-nbd: the --run command exited with status 2; transfer \S+ finalized; disk \S+ \(disk\d+\) is unchanged$/);
  const [tr] = await expectNothingLeft(t.engine);
  expect(t.engine.state().disks.find((d) => d.id === disk.id)).toMatchObject({ status: 'ok' });
  expect(compareFiles(suite.source, disk.path)).toBe('equal');
  expect(t.engine.state().requests).not.toContain(`POST /imagetransfers/${tr.id}/cancel`);
});

test('--disk-id without --direction: refused before any engine call', async () => {
  const t = await engine();
  const disk = t.engine.addDisk({ name: 'precious', size: SIZE });
  const r = await runCli([...t.args, '--disk-id', disk.id, '--run', 'exit 3'], { env: engineEnv() });
  expect(r.code).toBe(1);
  expect(r.stderr).toBe('imageio-nbd: --disk-id needs --direction upload or --direction download (-r): an upload overwrites the disk, a download only reads it\n');
  expect(t.engine.state()).toMatchObject({ logins: 0, transfers: [] });
});

test('an upload into an existing disk fails: finalized, not cancelled, the disk kept, reported as partial', async () => {
  const t = await engine();
  const disk = t.engine.addDisk({ name: 'precious', size: SIZE });
  // Half of the image, then the command fails.
  const r = await runFailing(t, ['--disk-id', disk.id, '--direction', 'upload'], 'head -c 8M "$SRC" > "$HALF" && qemu-img convert -n -f raw -O raw "$HALF" "$uri" && exit 3');
  expect(r.code).toBe(3);
  expect(lastLine(r.stderr)).toMatch(
    /^imageio-nbd: the --run command exited with status 3; transfer \S+ finalized to keep disk \S+ \(precious\), but the upload did NOT complete: the disk's content is PARTIAL, write it again$/,
  );
  const [tr] = await expectNothingLeft(t.engine);
  expect(tr.phase).toBe('finished_success');
  expect(t.engine.state().disks.find((d) => d.id === disk.id)).toMatchObject({ name: 'precious', status: 'ok' });
  expect(t.engine.state().requests).not.toContain(`POST /imagetransfers/${tr.id}/cancel`);
  expect(r.stdout).toBe('');
});

test('SIGTERM during an upload into an existing disk: the disk is kept', async () => {
  const t = await engine();
  const disk = t.engine.addDisk({ name: 'precious', size: SIZE });
  const pidFile = suite.dir.file('term.pid');
  writeFileSync(pidFile, '');
  const started = Date.now();
  const p = spawnCli([...t.args, '--engine-timeout', '20', '--disk-id', disk.id, '--direction', 'upload', '--run', 'echo $$ > "$PIDF"; exec sleep 30'], {
    env: engineEnv({ PIDF: pidFile }),
  });
  await waitFor(() => readFileSync(pidFile, 'utf8').trim() !== '', 'the --run command to start');
  p.signal('SIGTERM');
  const r = await p.exited;
  expect(Date.now() - started).toBeLessThan(25_000); // the --run command was ended too
  expect(r.code).not.toBe(0);
  expect(lastLine(r.stderr)).toMatch(/^imageio-nbd: interrupted by SIGTERM; transfer \S+ finalized to keep disk \S+ \(precious\), but the upload did NOT complete/);
  await expectNothingLeft(t.engine);
  expect(t.engine.state().disks.find((d) => d.id === disk.id)?.status).toBe('ok');
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
  expect(lastLine(r.stderr)).toMatch(/^imageio-nbd: transfer \S+ on host host\d was still initializing after 2 s \(--engine-timeout\)/);
  expect(lastLine(r.stderr)).toMatch(CANCELLED_AND_REMOVED);
  await expectNothingLeft(t.engine, ['doomed']);
});

test('an upload into an existing disk stuck in initializing: neither cancelled (that removes the disk) nor finalized (that never ends)', async () => {
  const t = await engine();
  t.engine.faults.stuckInitializing = true;
  const disk = t.engine.addDisk({ name: 'precious', size: SIZE });
  const r = await runFailing(t, ['--disk-id', disk.id, '--direction', 'upload', '--engine-timeout', '1'], UPLOAD);
  expect(r.code).toBe(1);
  expect(lastLine(r.stderr)).toMatch(
    /^imageio-nbd: transfer \S+ on host host\d was still initializing after 1 s \(--engine-timeout\); transfer \S+ is still initializing: not cancelled, because cancelling an upload removes disk \S+ \(precious\); end it in the engine$/,
  );
  const [tr] = t.engine.state().transfers;
  expect(t.engine.state().requests.filter((x) => x.startsWith(`POST /imagetransfers/${tr.id}/`))).toEqual([]);
  expect(t.engine.state().disks.map((d) => d.name)).toEqual(['precious']);
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

test('finalize slower than --engine-timeout: waited out, the disk kept, exit 0', async () => {
  const t = await engine();
  t.engine.faults.finalizeDelayMs = 3000;
  const r = await runFailing(t, [...NEW_DISK, '--engine-timeout', '1'], UPLOAD);
  if (r.code !== 0) throw new Error(`exit ${r.code}: ${r.stderr}`);
  const [tr] = await expectNothingLeft(t.engine);
  expect(tr.phase).toBe('finished_success');
  const disk = t.engine.state().disks.find((d) => d.name === 'doomed')!;
  expect(disk.status).toBe('ok');
  expect(compareFiles(suite.source, disk.path)).toBe('equal');
  expect(r.stdout).toBe(`disk-id=${disk.id}\n`);
  expect(t.engine.state().requests).not.toContain(`POST /imagetransfers/${tr.id}/cancel`);
});

test("the finalize answer is lost (the connection drops): the engine's final phase decides, the disk kept, exit 0", async () => {
  const t = await engine();
  t.engine.faults.loseFinalizeResponse = true;
  const r = await runFailing(t, NEW_DISK, UPLOAD);
  if (r.code !== 0) throw new Error(`exit ${r.code}: ${r.stderr}`);
  expect(t.engine.faults.loseFinalizeResponse).toBe(false); // the fault did happen
  const [tr] = await expectNothingLeft(t.engine);
  expect(tr.phase).toBe('finished_success');
  const disk = t.engine.state().disks.find((d) => d.name === 'doomed')!;
  expect(disk.status).toBe('ok');
  expect(compareFiles(suite.source, disk.path)).toBe('equal');
  expect(t.engine.state().requests.filter((x) => x.startsWith('DELETE '))).toEqual([]);
});

test('SIGKILL mid-upload into a new disk: the engine cancels it after the inactivity timeout (timeout_policy cancel), no disk left locked', async () => {
  const t = await engine();
  const pidFile = suite.dir.file('run.pid');
  const p = spawnCli([...t.args, '--engine-timeout', '20', ...NEW_DISK, '--inactivity-timeout', '1', '--run', `${UPLOAD} && echo $$ > "$PIDF" && exec sleep 60`], {
    env: engineEnv({ SRC: suite.source, PIDF: pidFile }),
  });
  await waitFor(() => existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim() !== '', 'the upload to be written');
  p.signal('SIGKILL');
  // The orphaned --run command holds imageio-nbd's stderr open: end it too.
  process.kill(Number(readFileSync(pidFile, 'utf8')), 'SIGKILL');
  expect((await p.exited).signal).toBe('SIGKILL');
  const [tr] = t.engine.state().transfers;
  expect(tr.timeoutPolicy).toBe('cancel');
  // Nobody is left to end the transfer: the engine does, once the ticket is idle.
  await waitFor(() => t.engine.state().transfers.every((x) => x.phase === 'finished_failure'), 'the engine to cancel the idle transfer', 20_000);
  await expectNothingLeft(t.engine, ['doomed']);
});

test('SIGKILL mid-upload into an existing disk: the engine pauses it (timeout_policy pause), the disk is not removed', async () => {
  const t = await engine();
  const disk = t.engine.addDisk({ name: 'precious', size: SIZE });
  const pidFile = suite.dir.file('run2.pid');
  writeFileSync(pidFile, '');
  const p = spawnCli([...t.args, '--engine-timeout', '20', '--disk-id', disk.id, '--direction', 'upload', '--inactivity-timeout', '1', '--run', `${UPLOAD} && echo $$ > "$PIDF" && exec sleep 60`], {
    env: engineEnv({ SRC: suite.source, PIDF: pidFile }),
  });
  await waitFor(() => readFileSync(pidFile, 'utf8').trim() !== '', 'the upload to be written');
  p.signal('SIGKILL');
  process.kill(Number(readFileSync(pidFile, 'utf8')), 'SIGKILL');
  expect((await p.exited).signal).toBe('SIGKILL');
  await waitFor(() => t.engine.state().transfers[0]?.phase === 'paused_system', 'the engine to pause the idle transfer', 20_000);
  expect(t.engine.state().transfers[0].timeoutPolicy).toBe('pause');
  // Whoever notices finalizes it by hand; the disk is kept with what was written.
  const id = t.engine.state().transfers[0].id;
  const c = new EngineClient({ apiUrl: t.engine.apiUrl, username: t.engine.username, password: t.engine.password, cafile: t.ca });
  try {
    await c.transferAction(id, 'finalize');
  } finally {
    await c.close();
  }
  await expectNothingLeft(t.engine);
  expect(t.engine.state().disks.find((d) => d.id === disk.id)?.status).toBe('ok');
  expect(compareFiles(suite.source, disk.path)).toBe('equal');
});

test('a refused finalize: the nested fault of the action in one line, never JSON', async () => {
  const t = await engine();
  t.engine.faults.actionsNotPermitted = true;
  const r = await runFailing(t, NEW_DISK, UPLOAD);
  expect(r.code).toBe(1);
  const line = lastLine(r.stderr);
  expect(line).toMatch(/^imageio-nbd: finalizing transfer \S+ failed: POST \/imagetransfers\/\S+\/finalize: HTTP 403 Operation Failed: \[User is not authorized to perform this action\.\]$/);
  expect(line).not.toMatch(/[{}]/);
  // Clean up what the refused user could not.
  t.engine.faults.actionsNotPermitted = false;
  const c = new EngineClient({ apiUrl: t.engine.apiUrl, username: t.engine.username, password: t.engine.password, cafile: t.ca });
  try {
    await c.transferAction(t.engine.state().transfers[0].id, 'cancel');
  } finally {
    await c.close();
  }
  await expectNothingLeft(t.engine, ['doomed']);
});

test('finalize fails (the upload does not verify): non-zero, no disk left', async () => {
  const t = await engine();
  t.engine.faults.finalizeFails = true;
  const r = await runFailing(t, NEW_DISK, UPLOAD);
  expect(r.code).toBe(1);
  expect(lastLine(r.stderr)).toMatch(/^imageio-nbd: the engine failed to finalize transfer \S+ \(finished_failure\): the uploaded image did not verify; disk \S+ removed$/);
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
    /^imageio-nbd: the engine paused transfer \S+ on host host\d \(paused_system\): .*no activity for more than its inactivity timeout \(4 s\); transfer \S+ cancelled, disk \S+ removed$/,
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
  expect(r.stderr).toMatch(/^imageio-nbd: --host host2 is not an up host of data center Default \(up hosts: host1, host3\); disk \S+ removed\n$/);
  await expectNothingLeft(t.engine, ['doomed']);
  expect(t.engine.state().transfers).toEqual([]);
  expect(t.engine.state().requests.filter((x) => x.startsWith('DELETE /disks/'))).toHaveLength(1);
});
