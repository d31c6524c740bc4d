/**
 * Engine-mode test helpers: a fake oVirt engine in this process (HTTPS with the test CA, with a
 * control socket that --run scripts can curl), the command-line arguments that point
 * imageio-nbd at it, and the check every test ends with: no transfer left open, no disk locked.
 */
import { writeFileSync } from 'node:fs';
import { FakeEngine, type FakeEngineOptions } from '../../sim/engine-server/fake-engine';
import { EngineControlServer } from '../../sim/engine-server/control';
import type { TransferState } from '../../sim/engine-server/entities';
import type { E2eSuite, TestPki, TmpDir } from './cli';
import { makePki, waitFor } from './cli';

export interface TestEngine {
  engine: FakeEngine;
  /** Control socket: curl --unix-socket "$CTL" -X POST http://x/tokens/expire */
  control: string;
  /** imageio-nbd arguments that log in to this engine (HTTPS verified with the test CA); add --engine-timeout. */
  args: string[];
  /** The CA file that verifies the engine. */
  ca: string;
  stop(): Promise<void>;
}

export async function startTestEngine(dir: TmpDir, pki: TestPki, opts: Partial<FakeEngineOptions> = {}): Promise<TestEngine> {
  const engine = new FakeEngine({ dir: dir.file('engine'), tls: { cert: pki.cert, key: pki.key }, stepMs: 50, ...opts });
  await engine.start();
  const control = new EngineControlServer(engine, dir.file('engine-ctl.sock'));
  await control.start();
  const pw = dir.file('password');
  writeFileSync(pw, `${engine.password}\n`);
  return {
    engine,
    control: control.path,
    args: ['--engine', engine.apiUrl, '--username', engine.username, '--password-file', pw, '--cafile', pki.ca],
    ca: pki.ca,
    stop: async () => {
      await control.close().catch(() => undefined);
      await engine.close();
    },
  };
}

/**
 * For a test file: the suite's test CA (made once), and `engine()`, which starts a fake engine
 * for the current test and stops it after the test.
 */
export function useTestEngine(suite: E2eSuite): (opts?: Partial<FakeEngineOptions>) => Promise<TestEngine> {
  let pki: TestPki | undefined;
  let current: TestEngine | undefined;
  beforeAll(() => {
    pki = makePki(suite.shared.path);
  });
  afterEach(async () => {
    await current?.stop();
    current = undefined;
  });
  return async (opts = {}) => {
    current = await startTestEngine(suite.dir, pki!, opts);
    return current;
  };
}

/** A transfer is settled once the engine has ended it (finished_cleanup is followed by finished_failure). */
const SETTLED = new Set(['finished_success', 'finished_failure']);

/**
 * Wait (bounded) until every transfer has ended and no disk is locked, and check that none of
 * `goneDiskNames` exists any more. Returns the transfers.
 */
export async function expectNothingLeft(engine: FakeEngine, goneDiskNames: string[] = []): Promise<TransferState[]> {
  await waitFor(
    () => {
      const st = engine.state();
      return st.transfers.every((t) => SETTLED.has(t.phase)) && st.disks.every((d) => d.status !== 'locked');
    },
    'every transfer to end and every disk to unlock',
    10_000,
  ).catch(() => {
    throw new Error(`left behind: ${JSON.stringify(engine.state().transfers.map((t) => t.phase))} ${JSON.stringify(engine.state().disks.map((d) => [d.name, d.status]))}`);
  });
  const st = engine.state();
  expect(st.disks.filter((d) => goneDiskNames.includes(d.name)).map((d) => d.name)).toEqual([]);
  return st.transfers;
}

/**
 * Environment for imageio-nbd: this machine's vdsm id comes from `vdsmIdFile` (default: none,
 * not an oVirt host). The SMBIOS UUID file is pointed at nothing too (older versions read it).
 */
export function engineEnv(extra: NodeJS.ProcessEnv = {}, vdsmIdFile = '/nonexistent/vdsm.id'): NodeJS.ProcessEnv {
  return { ...process.env, IMAGEIO_NBD_VDSM_ID_FILE: vdsmIdFile, IMAGEIO_NBD_PRODUCT_UUID_FILE: '/nonexistent/product_uuid', ...extra };
}
