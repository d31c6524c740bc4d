/**
 * Engine mode end to end: imageio-nbd, given a fake oVirt engine (HTTPS, 3 hosts, in this
 * process) instead of a transfer URL, creates the transfer, serves it to real qemu-img and
 * nbdcopy, and finalizes it; every result is compared byte for byte, and the engine must end
 * with the transfer finished_success, the disk ok and nothing left open. Placement: the local
 * host when its vdsm id matches (data then goes over imageio's unix socket), else the least
 * busy one, else (an ordinary user) none: the engine chooses; the transfer_url -> proxy_url
 * fallback; the disk id on stdout.
 */
import { writeFileSync } from 'node:fs';
import { compareFiles, e2eSuite, MiB, runCli } from '../helpers/cli';
import { engineEnv, expectNothingLeft, useTestEngine, type TestEngine } from '../helpers/engine';
import { EngineClient } from '../../src/engine/engine-client';

const SIZE = 32 * MiB;
const suite = e2eSuite({ name: 'engine-e2e', size: SIZE, seed: 21 });

const engine = useTestEngine(suite);

/** Run imageio-nbd in engine mode; expects exit 0 unless `expectFail`. */
async function run(t: TestEngine, args: string[], cmd: string, env: NodeJS.ProcessEnv = {}) {
  const r = await runCli([...t.args, '--engine-timeout', '20', ...args, '--run', cmd], { env: engineEnv({ SRC: suite.source, ...env }, env.VDSM_ID_FILE), timeoutMs: 60_000 });
  if (r.code !== 0) throw new Error(`imageio-nbd exited ${r.code ?? r.signal}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

/** Services (tcp, unix) of the imageio connections that carried data for a transfer. */
function dataServices(t: TestEngine, transferId: string): string[] {
  const s = t.engine.imageioServer(transferId)!;
  return [...new Set(s.stats().connections.filter((c) => c.reads + c.writes + c.zeros > 0).map((c) => c.service))];
}

const PLACEMENT = /INFO: (host\d): (\d+) active transfers?, (.*)\n/;

test('upload into an existing disk with qemu-img: finalized, disk ok, bytes equal, one placement line, disk-id on stdout', async () => {
  const t = await engine();
  const disk = t.engine.addDisk({ name: 'existing', size: SIZE });
  const r = await run(t, ['--disk-id', disk.id, '--direction', 'upload'], 'qemu-img convert -n -f raw -O raw "$SRC" "$uri"');
  expect(compareFiles(suite.source, disk.path)).toBe('equal');
  const [tr] = await expectNothingLeft(t.engine);
  expect(tr).toMatchObject({ phase: 'finished_success', direction: 'upload', diskId: disk.id, format: 'raw' });
  expect(t.engine.state().disks.find((d) => d.id === disk.id)?.status).toBe('ok');
  // Quiet except for the one placement line; all hosts idle: one at random.
  expect(r.stderr.trim().split('\n')).toHaveLength(1);
  expect(r.stderr).toMatch(/INFO: host\d: 0 active transfers, chosen over host\d: 0, host\d: 0 \(ties broken at random\)\n/);
  expect(r.stdout).toBe(`disk-id=${disk.id}\n`);
  // An upload into a disk that existed before: pause on inactivity, never cancel (which would remove it).
  expect(tr.timeoutPolicy).toBe('pause');
  // Not this machine: HTTPS to the host, not its unix socket.
  expect(dataServices(t, tr.id)).toEqual(['tcp']);
  const st = t.engine.state();
  expect(st).toMatchObject({ logins: 1, logouts: 1, unauthorized: 0 });
  expect(st.requests).toContain(`POST /imagetransfers/${tr.id}/finalize`);
  expect(st.requests).not.toContain(`POST /imagetransfers/${tr.id}/cancel`);
});

test('upload into a new disk (--create-disk, qcow2, sparse) with nbdcopy', async () => {
  const t = await engine();
  const r = await run(
    t,
    ['--create-disk', '--storage-domain', 'data', '--size', '32M', '--disk-name', 'fresh', '--disk-format', 'qcow2', '--sparse'],
    'nbdcopy --flush "$SRC" "$uri"',
  );
  const [tr] = await expectNothingLeft(t.engine);
  expect(tr.phase).toBe('finished_success');
  const disk = t.engine.state().disks.find((d) => d.name === 'fresh')!;
  expect(disk).toMatchObject({ status: 'ok', size: SIZE, format: 'cow', sparse: true, id: tr.diskId });
  expect(compareFiles(suite.source, disk.path)).toBe('equal');
  expect(r.stdout).toBe(`disk-id=${disk.id}\n`);
  expect(tr.timeoutPolicy).toBe('cancel');
});

test('--disk-format cow without --sparse: a thin disk, which the engine accepts (it refuses COW preallocated)', async () => {
  const t = await engine();
  const r = await run(t, ['--create-disk', '--storage-domain', 'data', '--size', '32M', '--disk-format', 'cow'], 'qemu-img convert -n -f raw -O raw "$SRC" "$uri"');
  const [tr] = await expectNothingLeft(t.engine);
  const disk = t.engine.state().disks.find((d) => d.id === tr.diskId)!;
  expect(disk).toMatchObject({ status: 'ok', format: 'cow', sparse: true });
  expect(compareFiles(suite.source, disk.path)).toBe('equal');
  // The default name is unique, and the id is on stdout for scripts.
  expect(disk.name).toMatch(/^imageio-nbd-\d{8}-\d{6}-[0-9a-f]{6}$/);
  expect(r.stdout).toBe(`disk-id=${disk.id}\n`);
});

test('--log-format json: the disk id as a JSON record on stdout', async () => {
  const t = await engine();
  const r = await run(t, ['--create-disk', '--storage-domain', 'data', '--size', '32M', '--disk-name', 'j1', '--log-format', 'json'], 'qemu-img convert -n -f raw -O raw "$SRC" "$uri"');
  const disk = t.engine.state().disks.find((d) => d.name === 'j1')!;
  expect(JSON.parse(r.stdout)).toEqual({ disk_id: disk.id, disk_name: 'j1', transfer_id: t.engine.state().transfers[0].id, direction: 'upload' });
});

test('an ordinary user (transfers and hosts not listable): no host is sent, the engine chooses, and the upload succeeds', async () => {
  const t = await engine({ admin: false });
  const disk = t.engine.addDisk({ size: SIZE });
  const r = await run(t, ['--disk-id', disk.id, '--direction', 'upload'], 'qemu-img convert -n -f raw -O raw "$SRC" "$uri"');
  expect(r.stderr).toMatch(/INFO: no host chosen, the engine picks one: /);
  expect(r.stderr.trim().split('\n')).toHaveLength(1);
  const [tr] = await expectNothingLeft(t.engine);
  expect(tr).toMatchObject({ phase: 'finished_success', requestedHostId: undefined });
  expect(compareFiles(suite.source, disk.path)).toBe('equal');
});

test('download (--direction download) with qemu-img: read-only, the disk stays ok', async () => {
  const t = await engine();
  const disk = t.engine.addDisk({ name: 'full', size: SIZE, from: suite.source });
  const out = suite.dir.file('out.raw');
  await run(t, ['--disk-id', disk.id, '--direction', 'download'], 'qemu-img convert -f raw -O raw "$uri" "$OUT"', { OUT: out });
  expect(compareFiles(suite.source, out)).toBe('equal');
  const [tr] = await expectNothingLeft(t.engine);
  expect(tr).toMatchObject({ phase: 'finished_success', direction: 'download' });
  const s = t.engine.imageioServer(tr.id)!.stats();
  expect(s.methods.PUT ?? 0).toBe(0);
  expect(s.bytesRead).toBeGreaterThan(0);
  expect(t.engine.state().disks.find((d) => d.id === disk.id)?.status).toBe('ok');
});

test("placement: this machine's vdsm id is host2's, every host has the same SMBIOS uuid -> host2, over imageio's unix socket", async () => {
  // Cloned boards: one SMBIOS uuid for all; host deploy then gave each host a random vdsm id.
  const shared = '4c4c4544-0042-3510-8056-b4c04f595931';
  const t = await engine({ hosts: ['host1', 'host2', 'host3'].map((name) => ({ name, hardwareUuid: shared })) });
  const host2 = t.engine.state().hosts[1];
  const vdsmIdFile = suite.dir.file('vdsm.id');
  writeFileSync(vdsmIdFile, `${host2.vdsmId}\n`);
  const smbios = suite.dir.file('product_uuid');
  writeFileSync(smbios, `${shared}\n`);
  const disk = t.engine.addDisk({ size: SIZE });
  const r = await run(t, ['--disk-id', disk.id, '--direction', 'upload'], 'nbdcopy "$SRC" "$uri"', { VDSM_ID_FILE: vdsmIdFile, IMAGEIO_NBD_PRODUCT_UUID_FILE: smbios });
  expect(r.stderr).toMatch(new RegExp(`INFO: host2: this machine \\(vdsm id ${host2.vdsmId}\\), chosen\\n`));
  const [tr] = await expectNothingLeft(t.engine);
  expect(tr.hostId).toBe(host2.id);
  expect(dataServices(t, tr.id)).toEqual(['unix']);
  expect(compareFiles(suite.source, disk.path)).toBe('equal');
});

test('placement: transfers running on host1 and host2 -> the least busy host3', async () => {
  const t = await engine();
  const hosts = t.engine.state().hosts;
  // Occupy host1 and host2 through the API, as other clients would.
  const other = new EngineClient({ apiUrl: t.engine.apiUrl, username: t.engine.username, password: t.engine.password, cafile: t.ca });
  try {
    for (const h of hosts.slice(0, 2)) {
      const d = t.engine.addDisk({ size: MiB });
      await other.createTransfer({ diskId: d.id, direction: 'upload', hostId: h.id, inactivityTimeout: 0 });
    }
  } finally {
    await other.close();
  }
  const disk = t.engine.addDisk({ size: SIZE });
  const r = await run(t, ['--disk-id', disk.id, '--direction', 'upload'], 'qemu-img convert -n -f raw -O raw "$SRC" "$uri"');
  const m = PLACEMENT.exec(r.stderr);
  expect(m?.[0]).toBe('INFO: host3: 0 active transfers, chosen over host1: 1, host2: 1\n');
  const mine = t.engine.state().transfers.find((x) => x.diskId === disk.id)!;
  expect(mine).toMatchObject({ hostId: hosts[2].id, phase: 'finished_success' });
  expect(compareFiles(suite.source, disk.path)).toBe('equal');
});

test('--host NAME overrides placement', async () => {
  const t = await engine();
  const disk = t.engine.addDisk({ size: SIZE });
  const r = await run(t, ['--disk-id', disk.id, '--direction', 'upload', '--host', 'host2'], 'qemu-img convert -n -f raw -O raw "$SRC" "$uri"');
  expect(r.stderr).toMatch(/INFO: host2: chosen by --host\n/);
  const [tr] = await expectNothingLeft(t.engine);
  expect(tr.hostId).toBe(t.engine.state().hosts[1].id);
});

test('a host that cannot be reached at transfer_url: proxy_url is used, and said so', async () => {
  const t = await engine();
  t.engine.faults.unreachableTransferUrl = true;
  const disk = t.engine.addDisk({ size: SIZE });
  const r = await run(t, ['--disk-id', disk.id, '--direction', 'upload'], 'qemu-img convert -n -f raw -O raw "$SRC" "$uri"');
  expect(r.stderr).toMatch(/WARN: host host\d cannot be reached at https:\/\/127\.0\.0\.1:\d+\/images\/\S+ \(ECONNREFUSED\): using the engine's imageio proxy https:\/\/127\.0\.0\.1:\d+\/images\//);
  expect(compareFiles(suite.source, disk.path)).toBe('equal');
  const [tr] = await expectNothingLeft(t.engine);
  expect(tr.phase).toBe('finished_success');
  // Through the proxy: TCP only, even though the host has a unix socket.
  expect(dataServices(t, tr.id)).toEqual(['tcp']);
});

test('keep-alive within the inactivity timeout: a client that waits 7 s is not paused', async () => {
  const t = await engine();
  const disk = t.engine.addDisk({ size: SIZE });
  // inactivity_timeout 4 s: without keep-alives every 1.3 s (a third of it) the engine would
  // pause the transfer; with them the ticket is never idle for much more than 2 s.
  await run(t, ['--disk-id', disk.id, '--direction', 'upload', '--inactivity-timeout', '4'], 'sleep 7 && qemu-img convert -n -f raw -O raw "$SRC" "$uri"');
  const [tr] = await expectNothingLeft(t.engine);
  expect(tr).toMatchObject({ phase: 'finished_success', inactivityTimeout: 4 });
  expect(t.engine.imageioServer(tr.id)!.stats().ops.flush).toBeGreaterThanOrEqual(4);
  expect(compareFiles(suite.source, disk.path)).toBe('equal');
});

test('an engine before 4.4.5 (no timeout_policy): the upload works, and one line says a killed run would leave the disk locked', async () => {
  const t = await engine();
  t.engine.faults.noTimeoutPolicy = true;
  const r = await run(t, ['--create-disk', '--storage-domain', 'data', '--size', '32M', '--disk-name', 'old'], 'qemu-img convert -n -f raw -O raw "$SRC" "$uri"');
  expect(r.stderr).toMatch(/WARN: the engine does not know timeout_policy \(engines before 4\.4\.5\): if this run is killed, an upload is paused and its disk stays locked/);
  const [tr] = await expectNothingLeft(t.engine);
  expect(tr).toMatchObject({ phase: 'finished_success', timeoutPolicy: undefined });
});

test('an expired token (401) mid-run: imageio-nbd logs in again and finalizes', async () => {
  const t = await engine();
  const disk = t.engine.addDisk({ size: SIZE });
  await run(
    t,
    ['--disk-id', disk.id, '--direction', 'upload'],
    'qemu-img convert -n -f raw -O raw "$SRC" "$uri" && curl -sf --unix-socket "$CTL" -X POST http://x/tokens/expire',
    { CTL: t.control },
  );
  const [tr] = await expectNothingLeft(t.engine);
  expect(tr.phase).toBe('finished_success');
  const st = t.engine.state();
  expect(st.unauthorized).toBeGreaterThanOrEqual(1);
  expect(st.logins).toBe(2);
  expect(compareFiles(suite.source, disk.path)).toBe('equal');
});
