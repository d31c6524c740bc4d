/**
 * Every example in examples/ runs against the built-in imageio server (in this process), and
 * its result is compared byte for byte: what the README shows works as shown.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import net from 'node:net';
import {
  commandEnv,
  compareFiles,
  makeSource,
  MiB,
  ROOT,
  spawnTracked,
  type StartImageioOptions,
  type TestImageio,
  e2eSuite,
  waitAllClosed,
} from '../helpers/cli';
import { runOk } from '../helpers/run';

const SIZE = 32 * MiB;

const suite = e2eSuite({ name: 'examples', size: SIZE, seed: 11 });
const imageio = (opts: Partial<StartImageioOptions> = {}) => suite.imageio(opts);

/** Runs an example as a user would after installing: `imageio-nbd` on PATH. */
function exampleProcess(args: string[], env: NodeJS.ProcessEnv = {}) {
  const [script, ...rest] = args;
  const e = commandEnv(suite.dir, { env: { ...process.env, ...env } });
  return script.endsWith('.ts')
    ? spawnTracked(path.join(ROOT, 'node_modules', '.bin', 'tsx'), [path.join(ROOT, 'examples', script), ...rest], { env: e })
    : spawnTracked('bash', [path.join(ROOT, 'examples', script), ...rest], { env: e });
}

async function example(args: string[], env: NodeJS.ProcessEnv = {}) {
  const r = await exampleProcess(args, env).exited;
  if (r.code !== 0) throw new Error(`${args[0]} exited ${r.code ?? r.signal}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

const dataServices = (s: TestImageio) => [
  ...new Set(s.server.stats().connections.filter((c) => c.writes + c.reads + c.zeros > 0).map((c) => c.service)),
];

test('upload-qemu-img.sh DISK URL [options]', async () => {
  const s = await imageio();
  const r = await example(['upload-qemu-img.sh', suite.source, s.url]);
  expect(r.stderr).toBe('');
  expect(compareFiles(suite.source, s.image)).toBe('equal');
  expect(dataServices(s)).toEqual(['unix']);

  // Extra arguments are imageio-nbd options.
  const s2 = await imageio({ name: 'b' });
  await example(['upload-qemu-img.sh', suite.source, s2.url, '--unix-socket', 'never']);
  expect(compareFiles(suite.source, s2.image)).toBe('equal');
  expect(dataServices(s2)).toEqual(['tcp']);
});

test('nbdcopy-from-nbdkit.sh URL SIZE SEED equals nbdkit sparse-random read back with nbdcopy', async () => {
  // sparse-random makes 16 MiB runs on average: 128 MiB with seed 2 holds about 24% data.
  const size = 128 * MiB;
  const s = await imageio({ imageSize: size });
  await example(['nbdcopy-from-nbdkit.sh', s.url, String(size), '2']);
  const ref = suite.dir.file('reference.raw');
  await runOk('nbdkit', ['-U', '-', 'sparse-random', `size=${size}`, 'seed=2', 'percent=20', '--run', 'nbdcopy "$uri" "$REF"'], {
    env: { ...process.env, REF: ref },
  });
  expect(compareFiles(ref, s.image)).toBe('equal');
  expect(s.server.stats().bytesWritten).toBeGreaterThan(16 * MiB);
});

test('virt-v2v-style.sh DISK URL: copied, and every HTTP connection closed at the end', async () => {
  const s = await imageio();
  const r = await example(['virt-v2v-style.sh', suite.source, s.url]);
  expect(r.stderr).toBe('');
  expect(compareFiles(suite.source, s.image)).toBe('equal');
  await waitAllClosed(s.server);
  expect(s.server.stats().connections.every((c) => c.unflushedWrites === 0)).toBe(true);
});

test('backup-download.sh URL OUT: the map, then a byte-exact backup that skipped the holes', async () => {
  // Sparser and larger than the other sources, so that some whole 8 MiB requests are holes.
  const image = suite.dir.file('served.raw');
  makeSource(image, 64 * MiB, 12, 0.15);
  const copy = suite.dir.file('expected.raw');
  await runOk('cp', ['--sparse=always', image, copy]);
  const s = await imageio({ image, readonly: true });
  const out = suite.dir.file('backup.raw');
  const r = await example(['backup-download.sh', s.url, out]);
  expect(compareFiles(copy, out)).toBe('equal');
  expect(r.stdout).toMatch(/^\s*\d+\s+\d+\s+0\s+data$/m);
  expect(r.stdout).toMatch(/\s3\s+hole,zero$/m);
  expect(s.server.stats().bytesRead).toBeLessThan(64 * MiB); // whole 8 MiB holes were not read
  // The data extents of the map were fetched, and little around them: zero gaps under 256 KiB
  // inside one read are fetched with it rather than split into more GETs (measured 1.05x here).
  const dataBytes = [...r.stdout.matchAll(/^\s*\d+\s+(\d+)\s+0\s+data$/gm)].reduce((sum, m) => sum + Number(m[1]), 0);
  expect(s.server.stats().bytesRead).toBeGreaterThanOrEqual(dataBytes);
  expect(s.server.stats().bytesRead).toBeLessThanOrEqual(1.1 * dataBytes);
});

test('library.ts URL: backend I/O, then the same bytes through NBD', async () => {
  const s = await imageio();
  const r = await example(['library.ts', s.url]);
  expect(r.stdout).toContain(`size ${SIZE}, capabilities {"canWrite":true`);
  expect(r.stdout).toContain('read back: hello from imageio-nbd\n');
  expect(r.stdout).toContain('read through NBD: hello from imageio-nbd\n');
  const img = readFileSync(s.image);
  expect(img.subarray(MiB, MiB + 22).toString()).toBe('hello from imageio-nbd');
  await waitAllClosed(s.server);
});

test.each(['upload-qemu-img.sh', 'nbdcopy-from-nbdkit.sh', 'virt-v2v-style.sh', 'backup-download.sh', 'library.ts'])(
  '%s without arguments prints a usage line',
  async (script) => {
    const r = await exampleProcess([script]).exited;
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^usage: \S*(npx tsx )?\S*examples\/\S+ [A-Z]/)]);
  },
);

test('virt-v2v-style.sh stops waiting as soon as imageio-nbd has exited', async () => {
  // A port nothing listens on: imageio-nbd fails to start within a second or two.
  const port = await new Promise<number>((resolve) => {
    const srv = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(p));
    });
  });
  const t0 = Date.now();
  const r = await exampleProcess(['virt-v2v-style.sh', suite.source, `http://127.0.0.1:${port}/images/t`]).exited;
  expect(r.code).toBe(1);
  expect(Date.now() - t0).toBeLessThan(15000); // not the 30 s of waiting for a pidfile
  expect(r.stderr).toMatch(/^imageio-nbd: cannot open the transfer: imageio refused connection 0 for OPTIONS \(ECONNREFUSED\)/m);
  expect(r.stderr).toMatch(/^imageio-nbd exited \(status 1\) before it was ready$/m);
});
