/**
 * Engine mode's command line (src/cli/engine-options.ts through parseArgs) and host placement
 * (src/engine/placement.ts): pure functions, no engine.
 */
import { writeFileSync } from 'node:fs';
import { parseArgs, type RunConfig } from '../../../src/cli/parse';
import { ConfigError, EngineError } from '../../../src/core/errors';
import { engineApiUrl } from '../../../src/cli/engine-options';
import { activeTransfersPerHost, choosePlacement, leastBusy, readVdsmId, type PlacementQueries } from '../../../src/engine/placement';
import type { Disk, Host, ImageTransfer } from '../../../src/engine/api-types';
import { tmpDir } from '../../helpers/tmp-dir';

const BASE = ['--engine', 'https://engine.example.com/ovirt-engine/api', '--username', 'admin@internal', '--password-file', '/pw', '--run', 'true'];

async function cfg(argv: string[]): Promise<RunConfig> {
  const r = await parseArgs(argv);
  if (r.kind !== 'run') throw new Error(`expected run, got ${r.kind}`);
  return r.config;
}

describe('engine options', () => {
  test('an existing disk: --direction upload, no URL, the other options unchanged', async () => {
    const c = await cfg([...BASE, '--disk-id', 'D1', '--direction', 'upload', '--cafile', 'ca.pem']);
    expect(c.url).toBe('');
    expect(c.readonly).toBe(false);
    expect(c.cafile).toBe('ca.pem');
    expect(c.listen).toEqual({ privateUnix: true });
    expect(c.engine).toEqual({
      apiUrl: 'https://engine.example.com/ovirt-engine/api',
      username: 'admin@internal',
      passwordFile: '/pw',
      disk: { id: 'D1' },
      direction: 'upload',
      host: undefined,
      inactivityTimeoutS: 120,
      timeoutPolicy: undefined,
      timeoutS: 300,
      finalizeTimeoutS: 1800,
    });
  });

  test('--timeout-policy and --finalize-timeout', async () => {
    const c = await cfg([...BASE, '--disk-id', 'D1', '--direction', 'upload', '--timeout-policy', 'cancel', '--finalize-timeout', '60']);
    expect(c.engine).toMatchObject({ timeoutPolicy: 'cancel', finalizeTimeoutS: 60 });
  });

  test('cow is thin: --disk-format cow makes a sparse disk; raw is preallocated unless --sparse', async () => {
    const disk = async (...flags: string[]) => (await cfg([...BASE, '--create-disk', '--storage-domain', 'data', '--size', '1G', ...flags])).engine?.disk;
    expect(await disk('--disk-format', 'cow')).toMatchObject({ create: { format: 'cow', sparse: true } });
    expect(await disk('--disk-format', 'qcow2', '--sparse')).toMatchObject({ create: { format: 'cow', sparse: true } });
    expect(await disk('--disk-format', 'raw')).toMatchObject({ create: { format: 'raw', sparse: false } });
    expect(await disk('--disk-format', 'raw', '--preallocated')).toMatchObject({ create: { format: 'raw', sparse: false } });
    expect(await disk('--sparse')).toMatchObject({ create: { format: 'raw', sparse: true } });
  });

  test('a new disk: --create-disk with --storage-domain and --size; qcow2 means cow', async () => {
    const c = await cfg([...BASE, '--create-disk', '--storage-domain', 'data', '--size', '10G', '--disk-format', 'qcow2', '--sparse', '--disk-name', 'vm1-boot', '--host', 'host7', '--inactivity-timeout', '600', '--engine-timeout', '30']);
    expect(c.engine).toMatchObject({
      disk: { create: { storageDomain: 'data', size: 10 * 2 ** 30, format: 'cow', sparse: true, name: 'vm1-boot' } },
      host: 'host7',
      inactivityTimeoutS: 600,
      timeoutS: 30,
    });
    expect(c.size).toBe(10 * 2 ** 30);
    expect((await cfg([...BASE, '--create-disk', '--storage-domain', 'data', '--size', '1G'])).engine?.disk).toEqual({
      create: { storageDomain: 'data', size: 2 ** 30, format: 'raw', sparse: false, name: undefined },
    });
  });

  test('download: --direction download or -r, and the export is read-only', async () => {
    for (const flag of [['--direction', 'download'], ['-r'], ['--readonly', '--direction', 'download']]) {
      const c = await cfg([...BASE, '--disk-id', 'D', ...flag]);
      expect(c.engine?.direction).toBe('download');
      expect(c.readonly).toBe(true);
    }
  });

  test.each([
    ['--disk-id needs --engine', ['--disk-id', 'D', '--run', 'x']],
    ['--host needs --engine', ['memory:1G', '--host', 'h1']],
    ['--engine needs --run', [...BASE.filter((x) => x !== '--run' && x !== 'true'), '--disk-id', 'D']],
    ['--engine needs --disk-id ID, or --create-disk', [...BASE]],
    ['--engine needs --password-file', [...BASE.slice(0, 4), '--run', 'x', '--disk-id', 'D']],
    ['use either --disk-id or --create-disk', [...BASE, '--disk-id', 'D', '--create-disk']],
    ['--engine needs --storage-domain (with --create-disk)', [...BASE, '--create-disk', '--size', '1G']],
    ['--create-disk needs --size', [...BASE, '--create-disk', '--storage-domain', 'sd']],
    ['cannot be downloaded', [...BASE, '--create-disk', '--storage-domain', 'sd', '--size', '1G', '--direction', 'download']],
    ['--size with --engine is the size of a new disk', [...BASE, '--disk-id', 'D', '--size', '1G']],
    ['--storage-domain describes a new disk', [...BASE, '--disk-id', 'D', '--storage-domain', 'sd']],
    ['--sparse describes a new disk', [...BASE, '--disk-id', 'D', '--sparse']],
    ['contradict', [...BASE, '--disk-id', 'D', '-r', '--direction', 'upload']],
    ['--disk-id needs --direction upload or --direction download (-r)', [...BASE, '--disk-id', 'D']],
    ['--disk-format cow cannot be --preallocated: the engine refuses COW preallocated disks', [...BASE, '--create-disk', '--storage-domain', 'sd', '--size', '1G', '--disk-format', 'cow', '--preallocated']],
    ['--sparse and --preallocated contradict', [...BASE, '--create-disk', '--storage-domain', 'sd', '--size', '1G', '--sparse', '--preallocated']],
    ["invalid --timeout-policy 'never': expected legacy, pause or cancel", [...BASE, '--disk-id', 'D', '--direction', 'upload', '--timeout-policy', 'never']],
    ['invalid --finalize-timeout', [...BASE, '--disk-id', 'D', '--direction', 'upload', '--finalize-timeout', '0']],
    ['either a transfer URL or --engine', [...BASE, '--disk-id', 'D', '-r', 'https://h:54322/images/T']],
    ['invalid --inactivity-timeout', [...BASE, '--disk-id', 'D', '-r', '--inactivity-timeout', '-1']],
    ['invalid --engine-timeout', [...BASE, '--disk-id', 'D', '-r', '--engine-timeout', '0']],
    ["invalid --direction 'sideways': expected upload or download", [...BASE, '--disk-id', 'D', '--direction', 'sideways']],
  ])('refused: %s', async (message, argv) => {
    await expect(parseArgs(argv)).rejects.toThrow(ConfigError);
    await expect(parseArgs(argv)).rejects.toThrow(message);
  });

  test('--engine accepts the API URL, the engine URL or just the host', () => {
    expect(engineApiUrl('https://e.example.com/ovirt-engine/api/')).toBe('https://e.example.com/ovirt-engine/api');
    expect(engineApiUrl('https://e.example.com/ovirt-engine')).toBe('https://e.example.com/ovirt-engine/api');
    expect(engineApiUrl('https://e.example.com:8443')).toBe('https://e.example.com:8443/ovirt-engine/api');
    expect(() => engineApiUrl('https://e.example.com/api/vms')).toThrow('not the API URL');
    expect(() => engineApiUrl('ftp://e.example.com')).toThrow('https://');
    expect(() => engineApiUrl('engine')).toThrow('invalid --engine URL');
  });

  test('--help lists the engine options in their own group; engine-server is a subcommand', async () => {
    const r = await parseArgs(['--help']);
    if (r.kind !== 'help') throw new Error(r.kind);
    expect(r.text).toContain('oVirt engine options');
    for (const o of ['--engine', '--username', '--password-file', '--disk-id', '--create-disk', '--storage-domain', '--disk-name', '--disk-format', '--sparse', '--preallocated', '--direction', '--host', '--inactivity-timeout', '--timeout-policy', '--engine-timeout', '--finalize-timeout']) {
      expect(r.text).toContain(o);
    }
    expect(r.text).toContain('imageio-nbd engine-server');
    expect(await parseArgs(['engine-server', '--hosts', '2'])).toEqual({ kind: 'engine-server', argv: ['--hosts', '2'] });
  });
});

describe('placement', () => {
  const h = (n: number, status = 'up'): Host => ({ id: `id${n}`, name: `host${n}`, status, hardwareUuid: 'same-smbios-uuid' });
  const tr = (hostId: string, phase = 'transferring'): ImageTransfer => ({ id: `${hostId}-${Math.random()}`, phase, hostId });
  const hosts = [h(1), h(2), h(3)];
  const disk: Disk = { id: 'd1', name: 'disk1', status: 'ok', provisionedSize: 1, format: 'raw', storageDomainIds: ['sd1'] };

  /** An engine as placement sees it; `refuse` names the queries that fail. */
  function engine(opts: { hosts?: Host[]; transfers?: ImageTransfer[]; vdsmIds?: Record<string, string>; refuse?: string[] } = {}) {
    const searches: string[] = [];
    const refuse = (what: string) => {
      if (opts.refuse?.includes(what)) throw new EngineError('ERR_ENGINE', `GET /${what}: HTTP 400 Operation Failed: refused`, 400);
    };
    const q: PlacementQueries = {
      getStorageDomain: async (id) => (refuse('storagedomains'), { id, name: 'data', dataCenterIds: ['dc1'] }),
      getDataCenter: async (id) => (refuse('datacenters'), { id, name: 'Default' }),
      listHosts: async (search) => {
        searches.push(search);
        refuse('hosts');
        const m = /^hw_id=(\S+) and /.exec(search);
        const all = (opts.hosts ?? hosts).filter((x) => x.status === 'up');
        return m ? all.filter((x) => opts.vdsmIds?.[x.id] === m[1]) : all;
      },
      listTransfers: async () => (refuse('imagetransfers'), opts.transfers ?? []),
    };
    return { q, searches };
  }

  test('the least busy host, with the counts of the others in one line', async () => {
    const transfers = [tr('id1'), tr('id1'), tr('id1'), tr('id2'), tr('id3'), tr('id3')];
    const p = await choosePlacement(engine({ transfers }).q, disk);
    expect(p.host?.name).toBe('host2');
    expect(p.local).toBe(false);
    expect(p.line).toBe('host2: 1 active transfer, chosen over host1: 3, host3: 2');
  });

  test('only initializing and transferring count; ties are broken at random', () => {
    const transfers = [tr('id1', 'finished_success'), tr('id1', 'paused_system'), tr('id1', 'finished_cleanup'), tr('id2', 'initializing'), tr('id3', 'transferring')];
    expect(Object.fromEntries(activeTransfersPerHost(transfers))).toEqual({ id2: 1, id3: 1 });
    expect(leastBusy(hosts, [], 'Default', () => 0).host?.name).toBe('host1');
    expect(leastBusy(hosts, [], 'Default', () => 0.5).host?.name).toBe('host2');
    expect(leastBusy(hosts, [], 'Default', () => 0.99).line).toBe('host3: 0 active transfers, chosen over host1: 0, host2: 0 (ties broken at random)');
    expect(leastBusy(hosts, [tr('id1'), tr('id2')], 'Default', () => 0.99).line).toBe('host3: 0 active transfers, chosen over host1: 1, host2: 1');
  });

  test("this machine by its vdsm id (hw_id search), not by the SMBIOS uuid every host shares", async () => {
    const e = engine({ transfers: [tr('id3'), tr('id3')], vdsmIds: { id3: 'vdsm-3' } });
    const p = await choosePlacement(e.q, disk, { vdsmId: 'vdsm-3' });
    expect(p).toMatchObject({ host: { name: 'host3' }, local: true, line: 'host3: this machine (vdsm id vdsm-3), chosen' });
    expect(e.searches).toContain('hw_id=vdsm-3 and datacenter=Default and status=up');
    expect((await choosePlacement(engine().q, disk, { vdsmId: 'same-smbios-uuid' })).local).toBe(false);
  });

  test('refused or empty lists: no host, the engine chooses, and the line says why', async () => {
    expect(await choosePlacement(engine({ refuse: ['imagetransfers'] }).q, disk)).toEqual({
      local: false,
      line: 'no host chosen, the engine picks one: cannot list the image transfers to find the least busy host (GET /imagetransfers: HTTP 400 Operation Failed: refused)',
    });
    expect((await choosePlacement(engine({ hosts: [] }).q, disk)).line).toBe('no host chosen, the engine picks one: this user sees no up host in data center Default');
    expect((await choosePlacement(engine({ refuse: ['hosts'] }).q, disk)).host).toBeUndefined();
    expect((await choosePlacement(engine({ refuse: ['datacenters'] }).q, disk)).line).toMatch(/^no host chosen, the engine picks one: cannot find the data center of disk d1 /);
  });

  test('--host overrides, and must name an up host of the data center', async () => {
    const p = await choosePlacement(engine({ transfers: [tr('id2')] }).q, disk, { forced: 'host2' });
    expect(p).toMatchObject({ host: { name: 'host2' }, local: false, line: 'host2: chosen by --host' });
    await expect(choosePlacement(engine({ hosts: [h(1), h(2, 'maintenance'), h(3)] }).q, disk, { forced: 'host2' })).rejects.toThrow(
      '--host host2 is not an up host of data center Default (up hosts: host1, host3)',
    );
  });

  test('one candidate', async () => {
    expect((await choosePlacement(engine({ hosts: [h(2)] }).q, disk)).line).toBe('host2: 0 active transfers, the only up host in data center Default');
  });

  test("readVdsmId: the file's first line, or nothing", () => {
    const dir = tmpDir('engine-vdsmid-');
    try {
      const f = dir.file('vdsm.id');
      writeFileSync(f, '4C4C4544-0042-3510-8056-B4C04F595931\nmore\n');
      expect(readVdsmId(f)).toBe('4C4C4544-0042-3510-8056-B4C04F595931');
      expect(readVdsmId(dir.file('missing'))).toBeUndefined();
    } finally {
      dir.cleanup();
    }
  });
});
