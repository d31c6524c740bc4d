/**
 * Engine mode's command line (src/cli/engine-options.ts through parseArgs) and host placement
 * (src/engine/placement.ts): pure functions, no engine.
 */
import { writeFileSync } from 'node:fs';
import { parseArgs, type RunConfig } from '../../../src/cli/parse';
import { ConfigError, EngineError } from '../../../src/core/errors';
import { engineApiUrl } from '../../../src/cli/engine-options';
import { activeTransfersPerHost, choosePlacement, readHardwareId, PRODUCT_UUID_ENV } from '../../../src/engine/placement';
import type { Host, ImageTransfer } from '../../../src/engine/api-types';
import { tmpDir } from '../../helpers/tmp-dir';

const BASE = ['--engine', 'https://engine.example.com/ovirt-engine/api', '--username', 'admin@internal', '--password-file', '/pw', '--run', 'true'];

async function cfg(argv: string[]): Promise<RunConfig> {
  const r = await parseArgs(argv);
  if (r.kind !== 'run') throw new Error(`expected run, got ${r.kind}`);
  return r.config;
}

describe('engine options', () => {
  test('an existing disk: upload by default, no URL, the other options unchanged', async () => {
    const c = await cfg([...BASE, '--disk-id', 'D1', '--cafile', 'ca.pem']);
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
      timeoutS: 300,
    });
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
    ['either a transfer URL or --engine', [...BASE, '--disk-id', 'D', 'https://h:54322/images/T']],
    ['invalid --inactivity-timeout', [...BASE, '--disk-id', 'D', '--inactivity-timeout', '-1']],
    ['invalid --engine-timeout', [...BASE, '--disk-id', 'D', '--engine-timeout', '0']],
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
    for (const o of ['--engine', '--username', '--password-file', '--disk-id', '--create-disk', '--storage-domain', '--disk-name', '--disk-format', '--sparse', '--direction', '--host', '--inactivity-timeout', '--engine-timeout']) {
      expect(r.text).toContain(o);
    }
    expect(r.text).toContain('imageio-nbd engine-server');
    expect(await parseArgs(['engine-server', '--hosts', '2'])).toEqual({ kind: 'engine-server', argv: ['--hosts', '2'] });
  });
});

describe('placement', () => {
  const h = (n: number, status = 'up', hardwareUuid = `hw-${n}`): Host => ({ id: `id${n}`, name: `host${n}`, status, hardwareUuid });
  const tr = (hostId: string, phase = 'transferring'): ImageTransfer => ({ id: `${hostId}-${Math.random()}`, phase, hostId });
  const hosts = [h(1), h(2), h(3)];

  test('the least busy host, with the counts of the others in one line', () => {
    const transfers = [tr('id1'), tr('id1'), tr('id1'), tr('id2'), tr('id3'), tr('id3')];
    const p = choosePlacement({ candidates: hosts, transfers, dataCenter: 'Default' });
    expect(p.host.name).toBe('host2');
    expect(p.local).toBe(false);
    expect(p.line).toBe('host2: 1 active transfer, chosen over host1: 3, host3: 2');
  });

  test('finished transfers do not count; ties go to the first name', () => {
    const transfers = [tr('id1', 'finished_success'), tr('id1', 'finished_failure'), tr('id1', 'finished_cleanup'), tr('id2', 'paused_system'), tr('id3', 'initializing')];
    expect(Object.fromEntries(activeTransfersPerHost(transfers))).toEqual({ id2: 1, id3: 1 });
    expect(choosePlacement({ candidates: [h(3), h(2), h(1)], transfers, dataCenter: 'Default' }).line).toBe('host1: 0 active transfers, chosen over host2: 1, host3: 1');
  });

  test('this machine wins over a less busy host; hardware ids compare without case', () => {
    const p = choosePlacement({ candidates: hosts, transfers: [tr('id3'), tr('id3')], localHardwareId: 'HW-3', dataCenter: 'Default' });
    expect(p).toMatchObject({ host: { name: 'host3' }, local: true });
    expect(p.line).toBe('host3: 2 active transfers, this machine (hardware id HW-3), chosen over host1: 0, host2: 0');
    expect(choosePlacement({ candidates: hosts, transfers: [], localHardwareId: 'other', dataCenter: 'Default' }).local).toBe(false);
  });

  test('--host overrides, and must name a candidate', () => {
    const p = choosePlacement({ candidates: hosts, transfers: [tr('id2')], localHardwareId: 'hw-1', forced: 'host2', dataCenter: 'Default' });
    expect(p).toMatchObject({ host: { name: 'host2' }, local: false, line: 'host2: 1 active transfer, chosen by --host' });
    expect(() => choosePlacement({ candidates: hosts, transfers: [], forced: 'host9', dataCenter: 'DC1' })).toThrow(
      '--host host9 is not an active host of data center DC1 (active hosts: host1, host2, host3)',
    );
  });

  test('one candidate, or none', () => {
    expect(choosePlacement({ candidates: [h(2)], transfers: [], dataCenter: 'DC1' }).line).toBe('host2: 0 active transfers, the only active host in data center DC1');
    expect(() => choosePlacement({ candidates: [], transfers: [], dataCenter: 'DC1' })).toThrow(EngineError);
    expect(() => choosePlacement({ candidates: [], transfers: [], dataCenter: 'DC1' })).toThrow('data center DC1 has no host in status up');
  });

  test("readHardwareId: the override file's first line, or nothing", () => {
    const dir = tmpDir('engine-hwid-');
    try {
      const f = dir.file('uuid');
      writeFileSync(f, '4C4C4544-0042-3510-8056-B4C04F595931\nmore\n');
      expect(readHardwareId({ [PRODUCT_UUID_ENV]: f })).toBe('4C4C4544-0042-3510-8056-B4C04F595931');
      expect(readHardwareId({ [PRODUCT_UUID_ENV]: dir.file('missing') })).toBeUndefined();
    } finally {
      dir.cleanup();
    }
  });
});
