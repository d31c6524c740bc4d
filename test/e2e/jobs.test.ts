/**
 * --jobs end to end: imageio-nbd, given a fake oVirt engine (HTTPS, several hosts, in this
 * process) and a job list, creates every transfer, serves each on its own NBD export to a real
 * qemu-img or nbdcopy, and finalizes or fails each by engine mode's rules. Checked against the
 * engine's own records: sessions per host at once (--per-host), the transfers' phases, which
 * disks exist; every uploaded disk is compared byte for byte with its source.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { compareFiles, e2eSuite, makeSource, MiB, runCli, spawnCli, waitFor } from '../helpers/cli';
import { engineEnv, expectNothingLeft, useTestEngine, type TestEngine } from '../helpers/engine';
import { EngineClient } from '../../src/engine/engine-client';

const SIZE = 4 * MiB;
const suite = e2eSuite({ name: 'jobs-e2e', size: SIZE, seed: 41 });
const engine = useTestEngine(suite);

/** `n` raw sources of `size` with different content; qcow2 copies of the even ones when asked. */
function sources(n: number, size = SIZE, qcow2 = false): Array<{ raw: string; src: string }> {
  return Array.from({ length: n }, (_, i) => {
    const raw = suite.dir.file(`src${i + 1}.raw`);
    makeSource(raw, size, 100 + i, 0.5);
    if (!qcow2 || i % 2 === 1) return { raw, src: raw };
    const q = suite.dir.file(`src${i + 1}.qcow2`);
    execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, q]);
    return { raw, src: q };
  });
}

function jobFile(lines: string[]): string {
  const f = suite.dir.file('jobs.txt');
  writeFileSync(f, lines.join('\n') + '\n');
  return f;
}

async function runJobs(t: TestEngine, args: string[], env: NodeJS.ProcessEnv = {}, vdsmIdFile?: string) {
  return runCli([...t.args, '--engine-timeout', '20', ...args], { env: engineEnv(env, vdsmIdFile), timeoutMs: 60_000 });
}

/** The rows of the outcome table (after its header). */
function tableRows(stdout: string): string[][] {
  const lines = stdout.trim().split('\n');
  expect(lines[lines.length - 1]).toMatch(/^total: \d+ of \d+ jobs ok, .* imageio-nbd: [\d.]+ s CPU, peak RSS [\d.]+ MiB$/);
  return lines
    .slice(1, -1)
    .map((l) => l.split(/\s{2,}/));
}

test('6 jobs over 3 hosts with --per-host 1: never two sessions on a host, every host used, disks equal, table, exit 0', async () => {
  const t = await engine({ hosts: 3 });
  const src = sources(6, SIZE, true);
  const file = jobFile(src.map((s, i) => `upload ${s.src} --disk-name job${i + 1}`));
  const r = await runJobs(t, ['--storage-domain', 'data', '--jobs', file, '--per-host', '1']);
  expect(r.stderr).not.toMatch(/imageio-nbd: /);
  expect(r.code).toBe(0);
  const transfers = await expectNothingLeft(t.engine);
  expect(transfers.map((x) => x.phase)).toEqual(Array(6).fill('finished_success'));
  const st = t.engine.state();
  // The engine's own record: at most one transfer with a live imageio session per host at once.
  for (const h of st.hosts) expect(h.maxActiveTransfers).toBe(1);
  expect(st.hosts.reduce((n, h) => n + h.transfers, 0)).toBe(6);
  // The first three jobs cannot share a host.
  expect(st.hosts.every((h) => h.transfers >= 1)).toBe(true);
  for (let i = 0; i < 6; i++) {
    const d = st.disks.find((x) => x.name === `job${i + 1}`)!;
    expect(d.status).toBe('ok');
    expect(compareFiles(src[i].raw, d.path)).toBe('equal');
  }
  // One placement line per job (some also say they waited), and the table.
  expect(r.stderr.match(/INFO: job \d \(line \d, upload src\d\.(raw|qcow2)\): host\d: \d active transfers? \(\d of ours\), /g)).toHaveLength(6);
  const rows = tableRows(r.stdout);
  expect(rows).toHaveLength(6);
  for (const [i, row] of rows.entries()) {
    expect(row[0]).toBe(`${i + 1} (line ${i + 1})`);
    expect(row[1]).toMatch(/^host\d$/);
    expect(row[2]).toBe('HTTPS');
    expect(row[6]).toBe('ok');
    expect(row[7]).toBe(st.disks.find((x) => x.name === `job${i + 1}`)!.id);
  }
});

test('a group with a failing job: its new disk is removed, the existing disk kept and said so, the download finalized; other jobs finish; exit 1', async () => {
  const t = await engine({ hosts: 2 });
  const [a, b, c] = sources(3);
  const existing = t.engine.addDisk({ name: 'existing', size: SIZE });
  const toRead = t.engine.addDisk({ name: 'to-read', size: SIZE, from: c.raw });
  const notAFile = suite.dir.file('a-directory');
  mkdirSync(notAFile);
  const file = jobFile([
    `upload ${a.src} --disk-name new-in-group --group vm1`,
    `upload ${b.src} --disk-id ${existing.id} --group vm1`,
    `download ${toRead.id} ${notAFile} --group vm1`,
    `upload ${c.src} --disk-name alone`,
  ]);
  const r = await runJobs(t, ['--storage-domain', 'data', '--jobs', file]);
  expect(r.code).toBe(1);
  await expectNothingLeft(t.engine, ['new-in-group']);
  const st = t.engine.state();
  // Kept: the existing disk (finalized, never cancelled), the downloaded one, the job without a group.
  expect(st.disks.find((d) => d.id === existing.id)?.status).toBe('ok');
  expect(st.disks.find((d) => d.id === toRead.id)?.status).toBe('ok');
  expect(compareFiles(c.raw, toRead.path)).toBe('equal');
  const alone = st.disks.find((d) => d.name === 'alone')!;
  expect(compareFiles(c.raw, alone.path)).toBe('equal');
  for (const tr of st.transfers.filter((x) => x.diskId === existing.id)) expect(st.requests).not.toContain(`POST /imagetransfers/${tr.id}/cancel`);
  // One line per failed job: the download's own failure, the others because of it (the
  // existing disk's transfer is finalized whether the group failed before, during or after its copy).
  expect(r.stderr).toMatch(/imageio-nbd: job 3 \(line 3, download [0-9a-f-]+\): nbdcopy exited with status \d+/);
  expect(r.stderr).toMatch(/imageio-nbd: job 1 \(line 1, upload src1\.raw\): job 3 \(line 3, download [0-9a-f-]+\) of group vm1 failed; .*disk [0-9a-f-]+ removed/);
  expect(r.stderr).toMatch(new RegExp(`imageio-nbd: job 2 \\(line 2, upload src2\\.raw\\): job 3 .* of group vm1 failed; transfer [0-9a-f-]+ finalized(;| to keep) disk ${existing.id} \\(existing\\)`));
  expect(tableRows(r.stdout).map((row) => row[6])).toEqual(['failed', 'failed', 'failed', 'ok']);
});

test('the engine pauses a group member that has copied while another still copies: the group fails, nothing is finalized, both new disks removed', async () => {
  // Slow hosts: the big job needs 8 s through its host's 1 MiB/s; the engine's pause of the
  // small one is seen within the monitor's period (500 ms with --inactivity-timeout 2).
  const t = await engine({ hosts: 2, hostRate: MiB });
  const [small] = sources(1, MiB);
  const big = suite.dir.file('big.raw');
  makeSource(big, 8 * MiB, 7, 1);
  const file = jobFile([`upload ${small.src} --disk-name small --group g`, `upload ${big} --disk-name big --group g`]);
  const p = spawnCli([...t.args, '--engine-timeout', '20', '--inactivity-timeout', '2', '--storage-domain', 'data', '--jobs', file, '--per-host', '1', '--job-retries', '0'], { env: engineEnv() });
  const smallTransfer = await waitFor(() => {
    const d = t.engine.state().disks.find((x) => x.name === 'small');
    const tr = d && t.engine.state().transfers.find((x) => x.diskId === d.id);
    const io = tr && t.engine.imageioServer(tr.id)?.stats();
    return io && io.bytesWritten + io.bytesZeroed >= MiB ? tr : undefined;
  }, 'the small job to have written everything');
  expect(t.engine.pauseTransfer(smallTransfer!.id)).toBe(true);
  const r = await p.exited;
  expect(r.code).toBe(1);
  await expectNothingLeft(t.engine, ['small', 'big']);
  // Not finalized: the big job's transfer ended in failure with the group, its disk removed.
  const st = t.engine.state();
  expect(st.transfers.map((x) => x.phase)).toEqual(['finished_failure', 'finished_failure']);
  expect(st.requests.filter((x) => x.endsWith('/finalize'))).toEqual([]);
  expect(r.stderr).toMatch(/imageio-nbd: job 1 \(line 1, upload src1\.raw\): the engine paused transfer [0-9a-f-]+ on host host\d \(paused_system\).*disk [0-9a-f-]+ removed/);
  expect(r.stderr).toMatch(/imageio-nbd: job 2 \(line 2, upload big\.raw\): job 1 \(line 1, upload src1\.raw\) of group g failed; .*disk [0-9a-f-]+ removed/);
});

test('a host that goes down mid-transfer fails only its job, which is retried on another host; exit 0', async () => {
  const t = await engine({ hosts: [{ name: 'host1', downAfterBytes: MiB }, { name: 'host2' }, { name: 'host3' }] });
  const src = sources(3, 8 * MiB);
  const file = jobFile(src.map((s, i) => `upload ${s.src} --disk-name d${i + 1}`));
  const r = await runJobs(t, ['--storage-domain', 'data', '--jobs', file, '--per-host', '1']);
  expect(r.code).toBe(0);
  const transfers = await expectNothingLeft(t.engine);
  const st = t.engine.state();
  const [h1, h2, h3] = st.hosts;
  expect(h1.status).toBe('non_responsive');
  // One transfer on host1, failed; the three disks all written, on host2 and host3.
  const onH1 = transfers.filter((x) => x.hostId === h1.id);
  expect(onH1.map((x) => x.phase)).toEqual(['finished_failure']);
  expect(transfers.filter((x) => x.phase === 'finished_success').every((x) => x.hostId === h2.id || x.hostId === h3.id)).toBe(true);
  expect(transfers.filter((x) => x.phase === 'finished_success')).toHaveLength(3);
  for (let i = 0; i < 3; i++) expect(compareFiles(src[i].raw, st.disks.find((d) => d.name === `d${i + 1}`)!.path)).toBe('equal');
  // The failed try's disk was removed: exactly the three named disks exist.
  expect(st.disks.map((d) => d.name).sort()).toEqual(['d1', 'd2', 'd3']);
  expect(r.stderr).toMatch(/imageio-nbd: job \d \(line \d, upload src\d\.raw\): .*; starting it again in a new disk, on another host if one is up \(try 2 of 2\)/);
  const rows = tableRows(r.stdout);
  expect(rows.map((row) => row[6]).sort()).toEqual(['ok', 'ok', 'ok (2 tries)']);
  expect(rows.every((row) => row[1] === 'host2' || row[1] === 'host3')).toBe(true);
});

test('--job-retries 0: the job on the host that went down fails alone, its new disk removed; the others finish; exit 1', async () => {
  const t = await engine({ hosts: [{ name: 'host1', downAfterBytes: MiB }, { name: 'host2' }, { name: 'host3' }] });
  const src = sources(3, 8 * MiB);
  const file = jobFile(src.map((s, i) => `upload ${s.src} --disk-name d${i + 1}`));
  const r = await runJobs(t, ['--storage-domain', 'data', '--jobs', file, '--per-host', '1', '--job-retries', '0']);
  expect(r.code).toBe(1);
  const transfers = await expectNothingLeft(t.engine);
  const st = t.engine.state();
  const failed = transfers.filter((x) => x.hostId === st.hosts[0].id);
  expect(failed.map((x) => x.phase)).toEqual(['finished_failure']);
  expect(transfers.filter((x) => x.phase === 'finished_success')).toHaveLength(2);
  // The failed job's disk is gone; the other two are written.
  expect(st.disks.map((d) => d.name)).toHaveLength(2);
  for (const d of st.disks) expect(compareFiles(src[Number(d.name.slice(1)) - 1].raw, d.path)).toBe('equal');
  expect(r.stderr).not.toMatch(/starting it again/);
  expect(r.stderr.match(/imageio-nbd: job \d .*disk [0-9a-f-]+ removed/g)).toHaveLength(1);
  expect(tableRows(r.stdout).map((row) => row[6]).sort()).toEqual(['failed', 'ok', 'ok']);
});

test("the engine's other transfers count: a host busy with someone else's transfer gets none of ours at --per-host 1", async () => {
  const t = await engine({ hosts: 3 });
  const [host1] = t.engine.state().hosts;
  const other = new EngineClient({ apiUrl: t.engine.apiUrl, username: t.engine.username, password: t.engine.password, cafile: t.ca });
  try {
    const d = t.engine.addDisk({ name: 'someone-else', size: MiB });
    const theirs = await other.createTransfer({ diskId: d.id, direction: 'download', hostId: host1.id, inactivityTimeout: 0 });
    await waitFor(async () => (await other.getTransfer(theirs.id))?.phase === 'transferring', 'the other transfer to run');
    const src = sources(3);
    const file = jobFile(src.map((s) => `upload ${s.src}`));
    const r = await runJobs(t, ['--storage-domain', 'data', '--jobs', file, '--per-host', '1']);
    expect(r.code).toBe(0);
    const ours = t.engine.state().transfers.filter((x) => x.id !== theirs.id);
    expect(ours).toHaveLength(3);
    expect(ours.some((x) => x.hostId === host1.id)).toBe(false);
    expect(r.stderr).toMatch(/INFO: job 1 \(line 1, upload src1\.raw\): host[23]: 0 active transfers \(0 of ours\), chosen over host1: 1, host[23]: 0 \(ties broken at random\)\n/);
    expect(r.stderr).toMatch(/: waiting for a free slot: host1: 1, host2: 1, host3: 1 of 1 \(--per-host\)\n/);
    await other.transferAction(theirs.id, 'cancel');
  } finally {
    await other.close();
  }
  await expectNothingLeft(t.engine);
});

test('the local host is preferred (its unix socket carries the data) while it has free slots', async () => {
  const t = await engine({ hosts: 3 });
  const host2 = t.engine.state().hosts[1];
  const vdsmIdFile = suite.dir.file('vdsm.id');
  writeFileSync(vdsmIdFile, `${host2.vdsmId}\n`);
  const src = sources(2);
  const file = jobFile(src.map((s) => `upload ${s.src}`));
  const r = await runJobs(t, ['--storage-domain', 'data', '--jobs', file], {}, vdsmIdFile);
  expect(r.code).toBe(0);
  const transfers = await expectNothingLeft(t.engine);
  expect(transfers.map((x) => x.hostId)).toEqual([host2.id, host2.id]);
  expect(r.stderr.match(new RegExp(`INFO: job \\d .*: host2: this machine \\(vdsm id ${host2.vdsmId}\\), `, 'g'))).toHaveLength(2);
  expect(tableRows(r.stdout).map((row) => [row[1], row[2], row[6]])).toEqual([
    ['host2', 'unix', 'ok'],
    ['host2', 'unix', 'ok'],
  ]);
});

test('an ordinary user sees no hosts: the engine chooses, one line per job; exit 0', async () => {
  const t = await engine({ hosts: 2, admin: false });
  const src = sources(2);
  const file = jobFile(src.map((s) => `upload ${s.src}`));
  const r = await runJobs(t, ['--storage-domain', 'data', '--jobs', file]);
  expect(r.code).toBe(0);
  const transfers = await expectNothingLeft(t.engine);
  expect(transfers.map((x) => x.phase)).toEqual(['finished_success', 'finished_success']);
  expect(transfers.every((x) => x.requestedHostId === undefined)).toBe(true);
  expect(r.stderr.match(/INFO: job \d .*: no host chosen, the engine picks one: /g)).toHaveLength(2);
});

test('--log-format json: progress records and one outcome record per job, all JSON; the download equals the disk', async () => {
  const t = await engine({ hosts: 2 });
  const [a] = sources(1);
  const disk = t.engine.addDisk({ name: 'src', size: SIZE, from: a.raw });
  const dest = suite.dir.file('out.qcow2');
  const file = suite.dir.file('jobs.json');
  writeFileSync(file, JSON.stringify([{ upload: a.src, disk_name: 'up' }, { download: disk.id, dest, 'dest-format': 'qcow2' }]));
  const r = await runJobs(t, ['--storage-domain', 'data', '--jobs', file, '--log-format', 'json', '--progress', '0.1']);
  expect(r.code).toBe(0);
  const errLines = r.stderr.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  // Placement decisions are JSON records too.
  expect(errLines.filter((l) => typeof l.msg === 'string' && /^job \d \(item \d, /.test(l.msg)).length).toBeGreaterThanOrEqual(2);
  const progress = errLines.filter((l) => l.msg === 'jobs progress').map((l) => l.progress as Record<string, number | boolean>);
  const final = progress[progress.length - 1];
  expect(final).toMatchObject({ final: true, bytesTotal: 2 * SIZE, waiting: 0 });
  expect(final.bytesDone).toBeGreaterThan(0);
  const rows = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  expect(rows.pop()).toEqual({ summary: expect.objectContaining({ jobs: 2, ok: 2, failed: 0 }) });
  expect(rows.map((x) => [x.job, x.op, x.outcome])).toEqual([
    [1, 'upload', 'ok'],
    [2, 'download', 'ok'],
  ]);
  expect(rows[1].diskId).toBe(disk.id);
  execFileSync('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', a.raw, dest]);
  await expectNothingLeft(t.engine);
});

test('a bad job list is refused before any engine call, naming the line', async () => {
  const t = await engine({ hosts: 1 });
  const [a] = sources(1);
  const file = jobFile([`upload ${a.src}`, `upload ${a.src} --disk-format vmdk`]);
  const r = await runJobs(t, ['--storage-domain', 'data', '--jobs', file]);
  expect(r.code).toBe(1);
  expect(r.stderr).toBe("imageio-nbd: jobs line 2: invalid --disk-format 'vmdk': expected raw or cow\n");
  const missing = jobFile([`upload ${suite.dir.file('nope.raw')}`]);
  const r2 = await runJobs(t, ['--storage-domain', 'data', '--jobs', missing]);
  expect(r2.code).toBe(1);
  expect(r2.stderr).toMatch(/^imageio-nbd: jobs line 1: cannot read source .*nope\.raw: .*\n$/);
  expect(t.engine.state()).toMatchObject({ logins: 0, requests: [] });
});

test('SIGINT while copying: every job is stopped by the rules (new disks removed), exit non-zero', async () => {
  // Slow hosts, so that the copies are surely running when the signal comes.
  const t = await engine({ hosts: 2, hostRate: 2 * MiB });
  const src = sources(2, 16 * MiB);
  const file = jobFile(src.map((s, i) => `upload ${s.src} --disk-name s${i + 1}`));
  const p = spawnCli([...t.args, '--engine-timeout', '20', '--storage-domain', 'data', '--jobs', file], { env: engineEnv() });
  await waitFor(() => t.engine.state().hosts.reduce((n, h) => n + h.linkBytes, 0) > 0 && t.engine.state().transfers.filter((x) => x.phase === 'transferring').length === 2, 'both copies to run');
  p.signal('SIGINT');
  const r = await p.exited;
  expect(r.code).not.toBe(0);
  await expectNothingLeft(t.engine, ['s1', 's2']);
  expect(r.stderr).toMatch(/interrupted by SIGINT: 2 of 2 jobs did not complete/);
  expect(r.stderr.match(/imageio-nbd: job \d .*: interrupted by SIGINT; .*disk [0-9a-f-]+ removed/g)).toHaveLength(2);
});
