/**
 * The fake oVirt engine (src/engine-server) and the engine client (src/engine/engine-client.ts)
 * against it: SSO login and 401s, the JSON shapes of the API model (string scalars, href/id
 * links, {} for an empty collection, faults), the transfer lifecycle and its inactivity
 * timeout, TLS verification, the `imageio-nbd engine-server` command, and
 * examples/upload-to-engine.sh.
 */
import { existsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Client } from 'undici';
import { ConfigError, EngineError } from '../../src/core/errors';
import { EngineClient, faultText } from '../../src/engine/engine-client';
import { FakeEngine } from '../../sim/engine-server/fake-engine';
import {
  compareFiles,
  killAll,
  makePki,
  makeSource,
  MiB,
  ROOT,
  spawnCli,
  spawnTracked,
  tmpDir,
  waitFor,
  type TestPki,
  type TmpDir,
} from '../helpers/cli';
import { runOk } from '../helpers/run';
import { engineEnv, expectNothingLeft } from '../helpers/engine';

let shared: TmpDir;
let pki: TestPki;
beforeAll(() => {
  shared = tmpDir('engine-server-');
  pki = makePki(shared.path);
});
afterAll(() => shared.cleanup());

let engine: FakeEngine | undefined;
const clients: EngineClient[] = [];
afterEach(async () => {
  await killAll();
  while (clients.length) await clients.pop()!.close();
  await engine?.close();
  engine = undefined;
});

async function start(opts: ConstructorParameters<typeof FakeEngine>[0] = {}) {
  engine = new FakeEngine({ tls: { cert: pki.cert, key: pki.key }, stepMs: 20, ...opts });
  await engine.start();
  return engine;
}

function client(e: FakeEngine, extra: Partial<ConstructorParameters<typeof EngineClient>[0]> = {}) {
  const c = new EngineClient({ apiUrl: e.apiUrl, username: e.username, password: e.password, cafile: pki.ca, ...extra });
  clients.push(c);
  return c;
}

/** A raw API request, to look at the JSON as the engine sends it. */
async function raw(e: FakeEngine, method: 'GET' | 'POST', p: string, token?: string, body?: unknown) {
  const u = new URL(e.apiUrl);
  const c = new Client(u.origin, { connect: { ca: require('node:fs').readFileSync(pki.ca) } });
  try {
    const r = await c.request({
      method,
      path: `${u.pathname}${p}`,
      headers: { accept: 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await r.body.text();
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- JSON of the engine API, probed freely by the tests
    return { status: r.statusCode, text, json: text.startsWith('{') ? (JSON.parse(text) as Record<string, any>) : undefined };
  } finally {
    await c.close();
  }
}

async function token(e: FakeEngine): Promise<string> {
  const u = new URL(e.apiUrl);
  const c = new Client(u.origin, { connect: { ca: require('node:fs').readFileSync(pki.ca) } });
  try {
    const r = await c.request({
      method: 'POST',
      path: '/ovirt-engine/sso/oauth/token',
      headers: { accept: 'application/json', 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ grant_type: 'password', scope: 'ovirt-app-api', username: e.username, password: e.password }).toString(),
    });
    const j = (await r.body.json()) as { access_token: string; token_type: string; scope: string };
    expect(j).toMatchObject({ token_type: 'bearer', scope: 'ovirt-app-api' });
    return j.access_token;
  } finally {
    await c.close();
  }
}

describe('the fake engine speaks the API as the engine does', () => {
  test('no token: 401 (not JSON); a token from the password grant works', async () => {
    const e = await start();
    const r = await raw(e, 'GET', '/hosts');
    expect(r.status).toBe(401);
    expect(r.json).toBeUndefined();
    const ok = await raw(e, 'GET', '/hosts', await token(e));
    expect(ok.status).toBe(200);
    expect(ok.json!.host).toHaveLength(3);
  });

  test('JSON shapes: scalars as strings, links with href and id, {} for an empty collection, faults', async () => {
    const e = await start();
    const t = await token(e);
    const d = e.addDisk({ name: 'd1', size: 4 * MiB });
    const disk = (await raw(e, 'GET', `/disks/${d.id}`, t)).json!;
    expect(disk).toMatchObject({
      id: d.id,
      href: `/ovirt-engine/api/disks/${d.id}`,
      name: 'd1',
      provisioned_size: String(4 * MiB),
      sparse: 'true',
      status: 'ok',
      format: 'raw',
      storage_domains: { storage_domain: [{ id: e.state().storageDomain.id, href: `/ovirt-engine/api/storagedomains/${e.state().storageDomain.id}` }] },
    });
    const host = (await raw(e, 'GET', '/hosts', t)).json!.host[0];
    expect(host).toMatchObject({ name: 'host1', status: 'up', hardware_information: { uuid: e.state().hosts[0].hardwareUuid } });
    expect(host.cluster).toEqual({ href: expect.stringMatching(/^\/ovirt-engine\/api\/clusters\//), id: expect.any(String) });
    const sd = (await raw(e, 'GET', '/storagedomains?search=name%3Ddata', t)).json!.storage_domain;
    expect(sd).toHaveLength(1);
    expect(sd[0].data_centers.data_center[0].id).toEqual(expect.any(String));
    expect((await raw(e, 'GET', '/imagetransfers', t)).json).toEqual({});
    const missing = await raw(e, 'GET', '/disks/nope', t);
    expect(missing.status).toBe(404);
    expect(missing.json).toEqual({ reason: 'Operation Failed', detail: 'Entity not found: nope' });
    const bad = await raw(e, 'POST', '/disks', t, { name: 'x' });
    expect(bad.status).toBe(400);
    expect(bad.json).toEqual({ reason: 'Incomplete parameters', detail: 'Disk [provisionedSize|size] required for add' });
  });

  test('host search: datacenter=NAME and status=up, case-insensitive', async () => {
    const e = await start({ hosts: 4 });
    e.setHostStatus('host3', 'non_responsive');
    const c = client(e);
    expect((await c.listHosts('datacenter=default and status=Up')).map((h) => h.name)).toEqual(['host1', 'host2', 'host4']);
    expect((await c.listHosts('name=host*')).length).toBe(4);
    expect(await c.listHosts('datacenter=Other')).toEqual([]);
    await expect(c.listHosts('bogus=1')).rejects.toThrow("GET /hosts: HTTP 400 Bad Request: unknown search key 'bogus'");
  });
});

describe('transfer lifecycle', () => {
  test('create disk -> transfer -> write through transfer_url -> finalize -> finished_success, disk ok', async () => {
    const e = await start();
    const c = client(e);
    const sd = await c.findStorageDomain('data');
    const created = await c.createDisk({ name: 'n1', size: 4 * MiB, format: 'raw', sparse: true, storageDomainId: sd!.id });
    expect(created.status).toBe('locked');
    await waitFor(async () => (await c.getDisk(created.id))?.status === 'ok', 'the disk to be ok');
    const host = (await c.listHosts())[1];
    let t = await c.createTransfer({ diskId: created.id, direction: 'upload', hostId: host.id, inactivityTimeout: 60 });
    expect(t).toMatchObject({ phase: 'initializing', hostId: host.id, diskId: created.id, transferUrl: undefined });
    await expect(c.createTransfer({ diskId: created.id, direction: 'upload', inactivityTimeout: 60 })).rejects.toThrow(/HTTP 409 Operation Failed: \[Cannot transfer Virtual Disk: The following disks are locked: n1/);
    const id = t.id;
    t = (await waitFor(async () => {
      const x = await c.getTransfer(id);
      return x?.phase === 'transferring' ? x : undefined;
    }, 'transferring'))!;
    expect(t.transferUrl).toMatch(/^https:\/\/127\.0\.0\.1:\d+\/images\/[0-9a-f-]{36}$/);
    expect(t.proxyUrl).toMatch(/^https:\/\/127\.0\.0\.1:\d+\/images\/[0-9a-f-]{36}$/);
    expect(new URL(t.proxyUrl!).pathname).toBe(new URL(t.transferUrl!).pathname);
    expect((await c.getDisk(created.id))?.status).toBe('locked');
    // Write through the proxy: it reaches the same ticket.
    const u = new URL(t.proxyUrl!);
    const io = new Client(u.origin, { connect: { ca: require('node:fs').readFileSync(pki.ca) } });
    const r = await io.request({ method: 'PUT', path: u.pathname, headers: { 'content-range': 'bytes 0-3/*' }, body: Buffer.from('abcd') });
    await r.body.dump();
    await io.close();
    expect(r.statusCode).toBe(200);
    await c.transferAction(t.id, 'finalize');
    await waitFor(async () => (await c.getTransfer(t.id))?.phase === 'finished_success', 'finished_success');
    expect((await c.getDisk(created.id))?.status).toBe('ok');
    const d = e.state().disks.find((x) => x.id === created.id)!;
    expect(require('node:fs').readFileSync(d.path).subarray(0, 4).toString()).toBe('abcd');
    // Finished transfers stay listed and count as nothing.
    expect((await c.listTransfers()).map((x) => x.phase)).toEqual(['finished_success']);
  });

  test('cancelling an upload: cancelled_user ... finished_failure, and the disk is removed', async () => {
    const e = await start();
    const c = client(e);
    const d = e.addDisk({ size: MiB });
    const t = await c.createTransfer({ diskId: d.id, direction: 'upload', inactivityTimeout: 60 });
    await waitFor(async () => (await c.getTransfer(t.id))?.phase === 'transferring', 'transferring');
    await c.transferAction(t.id, 'cancel');
    expect((await c.getTransfer(t.id))?.phase).toBe('cancelled_user');
    await waitFor(async () => (await c.getTransfer(t.id))?.phase === 'finished_failure', 'finished_failure');
    expect(await c.getDisk(d.id)).toBeUndefined();
    // Accepted, and nothing changes: a finished phase is final (ImageTransferUpdater).
    await c.transferAction(t.id, 'cancel');
    await c.transferAction(t.id, 'finalize');
    expect((await c.getTransfer(t.id))?.phase).toBe('finished_failure');
  });

  test('a cancel sent while finalizing is accepted, turns the upload into a failure, and the disk is removed', async () => {
    const e = await start();
    e.faults.finalizeDelayMs = 2000;
    const c = client(e);
    const d = e.addDisk({ size: MiB });
    const t = await c.createTransfer({ diskId: d.id, direction: 'upload', inactivityTimeout: 60 });
    await waitFor(async () => (await c.getTransfer(t.id))?.phase === 'transferring', 'transferring');
    await c.transferAction(t.id, 'finalize');
    expect((await c.getTransfer(t.id))?.phase).toBe('finalizing_success');
    await c.transferAction(t.id, 'cancel');
    await waitFor(async () => (await c.getTransfer(t.id))?.phase === 'finished_failure', 'finished_failure');
    expect(await c.getDisk(d.id)).toBeUndefined();
  });

  test('a failed action answers the action with the fault nested: {"status": "failed", "fault": {...}}', async () => {
    const e = await start();
    const tk = await token(e);
    const c = client(e);
    const t = await c.createTransfer({ diskId: e.addDisk({ size: MiB }).id, direction: 'upload', inactivityTimeout: 60 });
    const r = await raw(e, 'POST', `/imagetransfers/${t.id}/resume`, tk, {});
    expect(r.status).toBe(409);
    expect(r.json).toEqual({ status: 'failed', fault: { reason: 'Operation Failed', detail: '[Cannot resume image transfer. The transfer is not paused.]' } });
    // The client reads the nested fault into one line.
    await expect(c.transferAction(t.id, 'resume' as 'cancel')).rejects.toThrow(
      `POST /imagetransfers/${t.id}/resume: HTTP 409 Operation Failed: [Cannot resume image transfer. The transfer is not paused.]`,
    );
    e.faults.actionsNotPermitted = true;
    await expect(c.transferAction(t.id, 'finalize')).rejects.toThrow(/^POST \/imagetransfers\/\S+\/finalize: HTTP 403 Operation Failed: \[User is not authorized to perform this action\.\]$/);
  });

  test('faultText: one line from a nested or top-level fault; never JSON, never cut inside it', () => {
    expect(faultText({ json: { status: 'failed', fault: { reason: 'Operation Failed', detail: '[Cannot\n  do it.]' } }, text: '' })).toBe(' Operation Failed: [Cannot do it.]');
    expect(faultText({ json: { reason: 'Bad Request', detail: 'x' }, text: '' })).toBe(' Bad Request: x');
    expect(faultText({ json: { status: 'failed' }, text: '{"status":"failed"}' })).toBe(' (the answer names no fault)');
    expect(faultText({ text: '{"status":"failed","fault":{"reason":"Operation Fa' })).toBe(' (the answer is unreadable)');
    expect(faultText({ text: '<html><body><h1>Service Unavailable</h1></body></html>' })).toBe(' Service Unavailable');
    const long = faultText({ text: `${'word '.repeat(60)}end` });
    expect(long.length).toBeLessThan(210);
    expect(long).toMatch(/^ (word )+\.\.\.$|^ (word )*word\.\.\.$/);
  });

  test('a transfer names its disk as image.id (no disk link); no host given: a random up host', async () => {
    const e = await start({ hosts: 4 });
    e.setHostStatus('host2', 'maintenance');
    const tk = await token(e);
    const c = client(e);
    const hostsSeen = new Set<string>();
    for (let i = 0; i < 12; i++) {
      const d = e.addDisk({ size: MiB });
      const t = await c.createTransfer({ diskId: d.id, direction: 'download', inactivityTimeout: 60 });
      const j = (await raw(e, 'GET', `/imagetransfers/${t.id}`, tk)).json!;
      expect(j.image).toEqual({ id: d.id });
      expect(j.disk).toBeUndefined();
      expect(t.diskId).toBe(d.id);
      hostsSeen.add(e.state().hosts.find((h) => h.id === t.hostId)!.name);
    }
    expect(hostsSeen.has('host2')).toBe(false);
    expect(hostsSeen.size).toBeGreaterThan(1); // 3 up hosts, 12 draws: all on one host has odds 3 * (1/3)^12
  });

  test('COW preallocated is refused (checkImageConfiguration); without sparse a disk is thin', async () => {
    const e = await start();
    const tk = await token(e);
    const sd = e.state().storageDomain.id;
    const add = (b: Record<string, unknown>) => raw(e, 'POST', '/disks', tk, { provisioned_size: MiB, storage_domains: { storage_domain: [{ id: sd }] }, ...b });
    const refused = await add({ format: 'cow', sparse: false });
    expect(refused.status).toBe(409);
    expect(refused.json).toEqual({
      reason: 'Operation Failed',
      detail: '[Cannot add Virtual Disk. Disk configuration (COW Preallocated backup-None) is incompatible with the storage domain type.]',
    });
    expect((await add({ format: 'cow' })).json).toMatchObject({ format: 'cow', sparse: 'true' });
    expect((await add({ format: 'cow', sparse: false, backup: 'incremental' })).status).toBe(201);
  });

  test('an ordinary user: /imagetransfers refused (admin query), hosts and data centers filtered', async () => {
    const e = await start({ admin: false });
    const tk = await token(e);
    const r = await raw(e, 'GET', '/imagetransfers', tk);
    expect(r.status).toBe(400);
    expect(r.json).toEqual({ reason: 'Operation Failed', detail: 'Query execution failed due to insufficient permissions.' });
    expect((await raw(e, 'GET', '/hosts', tk)).json).toEqual({});
    const c = client(e);
    expect(await c.getDataCenter('anything')).toBeUndefined();
    // It can still create a transfer: the engine picks the host.
    const t = await c.createTransfer({ diskId: e.addDisk({ size: MiB }).id, direction: 'download', inactivityTimeout: 60 });
    expect(e.state().transfers.find((x) => x.id === t.id)).toMatchObject({ requestedHostId: undefined, hostId: expect.any(String) });
  });

  test("hw_id searches vdsm's id, not the SMBIOS uuid", async () => {
    const e = await start({ hosts: [{ name: 'a', hardwareUuid: 'u-1', vdsmId: 'v-1' }, { name: 'b', hardwareUuid: 'u-1', vdsmId: 'v-2' }] });
    const c = client(e);
    expect((await c.listHosts('hw_id=v-2')).map((h) => h.name)).toEqual(['b']);
    expect(await c.listHosts('hw_id=u-1')).toEqual([]);
    expect((await c.listHosts('name=a'))[0].hardwareUuid).toBe('u-1');
  });

  test('an engine before 4.4.5 skips timeout_policy and does not send it', async () => {
    const e = await start();
    e.faults.noTimeoutPolicy = true;
    const c = client(e);
    const t = await c.createTransfer({ diskId: e.addDisk({ size: MiB }).id, direction: 'upload', inactivityTimeout: 60, timeoutPolicy: 'cancel' });
    expect(t.timeoutPolicy).toBeUndefined();
  });

  test('inactivity, legacy policy (the default): an idle upload is paused (paused_system), an idle download cancelled', async () => {
    const e = await start();
    const c = client(e);
    const up = await c.createTransfer({ diskId: e.addDisk({ size: MiB }).id, direction: 'upload', inactivityTimeout: 1 });
    const downDisk = e.addDisk({ size: MiB });
    const down = await c.createTransfer({ diskId: downDisk.id, direction: 'download', inactivityTimeout: 1 });
    await waitFor(async () => (await c.getTransfer(up.id))?.phase === 'paused_system', 'the upload to pause', 10_000);
    await waitFor(async () => (await c.getTransfer(down.id))?.phase === 'finished_failure', 'the download to be cancelled', 10_000);
    expect((await c.getDisk(downDisk.id))?.status).toBe('ok');
    expect((await c.getTransfer(up.id))?.timeoutPolicy).toBe('legacy');
  });

  test('inactivity, cancel policy: an idle upload is cancelled and its disk removed; pause policy: a download is paused', async () => {
    const e = await start();
    const c = client(e);
    const upDisk = e.addDisk({ size: MiB });
    const up = await c.createTransfer({ diskId: upDisk.id, direction: 'upload', inactivityTimeout: 1, timeoutPolicy: 'cancel' });
    const down = await c.createTransfer({ diskId: e.addDisk({ size: MiB }).id, direction: 'download', inactivityTimeout: 1, timeoutPolicy: 'pause' });
    await waitFor(async () => (await c.getTransfer(up.id))?.phase === 'finished_failure', 'the upload to be cancelled', 10_000);
    expect(await c.getDisk(upDisk.id)).toBeUndefined();
    await waitFor(async () => (await c.getTransfer(down.id))?.phase === 'paused_system', 'the download to pause', 10_000);
  });

  test('inactivity: OPTIONS counts as activity (imageio touches the ticket)', async () => {
    const e = await start();
    const c = client(e);
    const d = e.addDisk({ size: MiB });
    const t = await c.createTransfer({ diskId: d.id, direction: 'upload', inactivityTimeout: 1 });
    const ready = (await waitFor(async () => {
      const x = await c.getTransfer(t.id);
      return x?.phase === 'transferring' ? x : undefined;
    }, 'transferring'))!;
    const u = new URL(ready.transferUrl!);
    const io = new Client(u.origin, { connect: { ca: require('node:fs').readFileSync(pki.ca) } });
    try {
      // OPTIONS every 300 ms for 3 s (three inactivity timeouts): never paused.
      for (let i = 0; i < 10; i++) {
        const r = await io.request({ method: 'OPTIONS', path: u.pathname });
        await r.body.dump();
        expect((await c.getTransfer(t.id))?.phase).toBe('transferring');
        await new Promise((r2) => setTimeout(r2, 300));
      }
    } finally {
      await io.close();
    }
    // Then silence: paused.
    await waitFor(async () => (await c.getTransfer(t.id))?.phase === 'paused_system', 'the upload to pause', 10_000);
  });

  test('the client logs in again after a 401, once per request', async () => {
    const e = await start();
    const c = client(e);
    const d = e.addDisk({ size: MiB });
    expect((await c.getDisk(d.id))?.id).toBe(d.id);
    e.expireTokens();
    expect((await c.getDisk(d.id))?.id).toBe(d.id);
    expect(c.logins).toBe(2);
    expect(e.state()).toMatchObject({ logins: 2, unauthorized: 1 });
    await c.logout();
    expect(e.state().logouts).toBe(1);
  });

  test('the engine certificate is verified with --cafile: the wrong CA is a clear error', async () => {
    const e = await start();
    const c = client(e, { cafile: pki.otherCa });
    const err = await c.login().catch((x: unknown) => x);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toMatch(/^cannot verify the TLS certificate of the engine https:\/\/127\.0\.0\.1:\d+ \((SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_VERIFY_LEAF_SIGNATURE)\): pass the engine's CA with --cafile/);
    const bad = client(e, { password: 'wrong' });
    await expect(bad.login()).rejects.toThrow(EngineError);
  });
});

describe('hosts with a network link (bandwidth, down after N bytes) and per-host counters', () => {
  /** A new disk and an upload transfer on `hostName`, once transferring. */
  async function transferOn(e: FakeEngine, c: EngineClient, hostName: string, size: number) {
    const sd = await c.findStorageDomain('data');
    const d = await c.createDisk({ name: `d-${hostName}-${Math.random()}`, size, format: 'raw', sparse: true, storageDomainId: sd!.id });
    await waitFor(async () => (await c.getDisk(d.id))?.status === 'ok', 'the disk to be ok');
    const host = (await c.listHosts()).find((h) => h.name === hostName)!;
    const t = await c.createTransfer({ diskId: d.id, direction: 'upload', hostId: host.id, inactivityTimeout: 60 });
    return (await waitFor(async () => {
      const x = await c.getTransfer(t.id);
      return x?.phase === 'transferring' ? x : undefined;
    }, 'transferring'))!;
  }

  async function put(url: string, body: Buffer): Promise<number> {
    const u = new URL(url);
    const io = new Client(u.origin, { connect: { ca: require('node:fs').readFileSync(pki.ca) } });
    try {
      const r = await io.request({ method: 'PUT', path: u.pathname, headers: { 'content-range': `bytes 0-${body.length - 1}/*` }, body });
      await r.body.dump();
      return r.statusCode;
    } finally {
      await io.close().catch(() => undefined);
    }
  }

  test('the rate is shared by the host\'s transfers; bytes are counted; sessions at once are recorded per host', async () => {
    const e = await start({ hosts: [{ name: 'host1', rate: 4 * MiB }, { name: 'host2' }] });
    const c = client(e);
    const [a, b] = [await transferOn(e, c, 'host1', 4 * MiB), await transferOn(e, c, 'host1', 4 * MiB)];
    const started = Date.now();
    expect(await Promise.all([put(a.transferUrl!, Buffer.alloc(MiB, 1)), put(b.transferUrl!, Buffer.alloc(MiB, 2))])).toEqual([200, 200]);
    // 2 MiB at 4 MiB/s: at least half a second, less the link's 20 ms burst, whatever the machine's speed.
    expect(Date.now() - started).toBeGreaterThanOrEqual(480);
    const h1 = e.state().hosts.find((h) => h.name === 'host1')!;
    expect(h1.linkBytes).toBeGreaterThan(2 * MiB);
    expect(h1).toMatchObject({ activeTransfers: 2, maxActiveTransfers: 2, transfers: 2 });
    for (const t of [a, b]) await c.transferAction(t.id, 'finalize');
    await waitFor(() => e.state().hosts[0].activeTransfers === 0, 'the sessions to end');
    expect(e.state().hosts.map((h) => [h.name, h.maxActiveTransfers, h.transfers])).toEqual([
      ['host1', 2, 2],
      ['host2', 0, 0],
    ]);
  });

  test('downAfterBytes: the host goes non_responsive mid-transfer, its upload is paused, other hosts are untouched', async () => {
    const e = await start({ hosts: 2 });
    e.setHostLink('host1', { downAfterBytes: MiB });
    const c = client(e);
    const t1 = await transferOn(e, c, 'host1', 4 * MiB);
    const t2 = await transferOn(e, c, 'host2', 4 * MiB);
    await expect(put(t1.transferUrl!, Buffer.alloc(4 * MiB, 1))).rejects.toThrow();
    expect(e.state().hosts.map((h) => h.status)).toEqual(['non_responsive', 'up']);
    await waitFor(async () => (await c.getTransfer(t1.id))?.phase === 'paused_system', 'the upload on host1 to be paused');
    expect(await put(t2.transferUrl!, Buffer.alloc(MiB, 2))).toBe(200);
    expect((await c.getTransfer(t2.id))?.phase).toBe('transferring');
  });
});

describe('imageio-nbd engine-server and examples/upload-to-engine.sh', () => {
  test('the command prints the API URL, hosts and disks; control socket; SIGTERM stops it and removes its files', async () => {
    const dir = tmpDir('engine-cmd-');
    try {
      const ctl = dir.file('ctl.sock');
      const p = spawnCli(['engine-server', '--hosts', '2', '--disk', '2M', '--control', ctl]);
      const out = await waitFor(() => (p.stdout.split('\n').length >= 5 ? p.stdout : ''), 'engine-server output');
      const lines = out.trim().split('\n');
      expect(lines[0]).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/ovirt-engine\/api$/);
      expect(lines[1]).toBe('storage_domain=data');
      expect(lines[2]).toMatch(/^host=host1 id=\S+ hardware_uuid=[0-9a-f-]{36} vdsm_id=[0-9a-f-]{36} status=up$/);
      expect(lines[4]).toMatch(/^disk=[0-9a-f-]{36} name=disk1 size=2097152$/);
      const state = JSON.parse((await runOk('curl', ['-sf', '--unix-socket', ctl, 'http://x/state'])).stdout);
      const image = state.disks[0].path as string;
      expect(existsSync(image)).toBe(true);
      p.signal('SIGTERM');
      expect((await p.exited).code).toBe(0);
      expect(existsSync(path.dirname(path.dirname(image)))).toBe(false);
    } finally {
      dir.cleanup();
    }
  });

  test('upload-to-engine.sh: usage without arguments; a qcow2 image into a new disk', async () => {
    const script = path.join(ROOT, 'examples', 'upload-to-engine.sh');
    const usage = await spawnTracked('bash', [script]).exited;
    expect(usage.code).toBe(2);
    expect(usage.stderr).toMatch(/^usage: .*upload-to-engine\.sh IMAGE ENGINE-API-URL STORAGE-DOMAIN/);

    const dir = tmpDir('engine-example-');
    try {
      const e = await start({ dir: dir.file('engine') });
      const src = dir.file('src.raw');
      makeSource(src, 16 * MiB, 5);
      const qcow2 = dir.file('vm-disk.qcow2');
      await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', src, qcow2]);
      const pw = dir.file('pw');
      writeFileSync(pw, `${e.password}\n`);
      const r = await spawnTracked('bash', [script, qcow2, e.apiUrl, 'data'], {
        env: engineEnv({ OVIRT_PASSWORD_FILE: pw, OVIRT_CAFILE: pki.ca }),
      }).exited;
      if (r.code !== 0) throw new Error(`upload-to-engine.sh exited ${r.code}: ${r.stderr}`);
      const [tr] = await expectNothingLeft(e);
      expect(tr.phase).toBe('finished_success');
      const disk = e.state().disks.find((d) => d.name === 'vm-disk.qcow2')!;
      // cow is thin: the engine refuses COW preallocated disks.
      expect(disk).toMatchObject({ status: 'ok', size: 16 * MiB, format: 'cow', sparse: true });
      expect(r.stdout).toBe(`disk-id=${disk.id}\n`);
      expect(compareFiles(src, disk.path)).toBe('equal');
    } finally {
      dir.cleanup();
    }
  });
});
