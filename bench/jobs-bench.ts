/**
 * The --jobs benchmark (BENCH=jobs npm run bench, or node dist/bench/jobs-bench.js): what many
 * transfers in one imageio-nbd process cost, and what balancing them over hosts buys. The fake
 * engine runs in this process (plain HTTP, every transfer served by a built-in imageio server);
 * imageio-nbd is the real command with --jobs, its CPU and peak RSS its own (the summary record
 * it prints: process.resourceUsage(), not the copying programs').
 *
 *   cost     1 upload alone, then 8 concurrent uploads on one host (--per-host 8): aggregate data
 *            MiB/s, CPU seconds per GiB of data, peak RSS (goal: CPU per GiB no worse than one
 *            upload; RSS below 64 MiB per additional transfer)
 *   balance  12 uploads over 4 hosts whose networks carry --host-rate each (default 200M):
 *            --per-host 3 against all 12 forced onto one host (--host host1 --per-host 12):
 *            wall time and aggregate rate (goal: within 1.2x of the 4 hosts' combined limit)
 *
 *   node dist/bench/jobs-bench.js [--size 256M] [--fraction 0.333] [--host-rate 200M] [--only cost|balance]
 */
import { spawn } from 'node:child_process';
import * as os from 'node:os';
import * as path from 'node:path';
import { writeFileSync } from 'node:fs';
import { writeSparseImage } from '../sim/sparse-image';
import { parseSize } from '../src/core/size';
import { FakeEngine, type FakeHostSpec } from '../sim/engine-server/fake-engine';
import { CLI, arg, makeTempDir, removeTempDir, runBench, table } from './lib';

const GiB = 2 ** 30;
const MiB = 2 ** 20;

interface Summary {
  jobs: number;
  ok: number;
  bytes: number;
  seconds: number;
  cpuSeconds: number;
  peakRssMiB: number;
}

interface Figures {
  label: string;
  jobs: number;
  wall: number;
  dataMiBs: number;
  cpuPerGiB: number;
  rssMiB: number;
  ok: boolean;
}

/** One imageio-nbd --jobs run against `engine`; the figures from its summary record. */
async function runJobs(engine: FakeEngine, dir: string, label: string, image: string, dataBytes: number, n: number, extra: string[]): Promise<Figures> {
  const list = path.join(dir, `${label.replace(/\W+/g, '-')}.jobs`);
  writeFileSync(list, Array.from({ length: n }, () => `upload ${image}`).join('\n') + '\n');
  const pw = path.join(dir, 'pw');
  writeFileSync(pw, `${engine.password}\n`);
  const args = [CLI, '--engine', engine.apiUrl, '--username', engine.username, '--password-file', pw, '--storage-domain', 'data', '--jobs', list, '--log-format', 'json', ...extra];
  const started = process.hrtime.bigint();
  const { code, stdout, stderr } = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, IMAGEIO_NBD_VDSM_ID_FILE: '/nonexistent' } });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('close', (c) => resolve({ code: c, stdout: out, stderr: err }));
  });
  const wall = Number(process.hrtime.bigint() - started) / 1e9;
  const last = stdout.trim().split('\n').pop() ?? '{}';
  const summary = (JSON.parse(last) as { summary?: Summary }).summary;
  if (code !== 0 || !summary) process.stderr.write(`bench: ${label}: exit ${code}\n${stderr.split('\n').slice(-5).join('\n')}\n`);
  const data = dataBytes * n;
  return {
    label,
    jobs: n,
    wall,
    dataMiBs: data / MiB / wall,
    cpuPerGiB: summary ? summary.cpuSeconds / (data / GiB) : NaN,
    rssMiB: summary?.peakRssMiB ?? NaN,
    ok: code === 0 && summary?.ok === n,
  };
}

async function withEngine<T>(dir: string, hosts: FakeHostSpec[], f: (e: FakeEngine) => Promise<T>): Promise<T> {
  const engine = new FakeEngine({ dir: path.join(dir, `engine-${Date.now()}`), hosts, stepMs: 20, monitorMs: 250 });
  await engine.start();
  try {
    return await f(engine);
  } finally {
    await engine.close();
  }
}

async function main(): Promise<number> {
  const size = parseSize(arg('size', '256M'), 'size');
  const fraction = Number(arg('fraction', '0.333'));
  const hostRate = parseSize(arg('host-rate', '200M'), 'host rate');
  const only = arg('only', '');
  const dir = makeTempDir(os.tmpdir(), 'imageio-nbd-jobs-bench-');
  try {
    const image = path.join(dir, 'image.raw');
    const img = writeSparseImage(image, { size, dataFraction: fraction, seed: 7 });
    process.stdout.write(`image: ${(size / MiB).toFixed(0)} MiB, ${(img.dataBytes / MiB).toFixed(1)} MiB of data; ${os.cpus().length} CPUs, load ${os.loadavg()[0].toFixed(2)}\n\n`);
    const cell = (f: Figures) => [f.label, String(f.jobs), f.wall.toFixed(2), f.dataMiBs.toFixed(0), f.cpuPerGiB.toFixed(2), f.rssMiB.toFixed(0), f.ok ? 'ok' : 'FAILED'];
    const headers = ['run', 'jobs', 'wall s', 'data MiB/s', 'CPU s/GiB', 'peak RSS MiB', 'outcome'];
    let failed = false;

    if (!only || only === 'cost') {
      const rows = await withEngine(dir, [{ name: 'host1' }], async (e) => [
        await runJobs(e, dir, 'cost | 1 upload alone', image, img.dataBytes, 1, ['--per-host', '8']),
        await runJobs(e, dir, 'cost | 8 concurrent uploads', image, img.dataBytes, 8, ['--per-host', '8']),
      ]);
      const [one, eight] = rows;
      process.stdout.write(`${table(headers, rows.map(cell))}\n\n`);
      process.stdout.write(
        `cost: 8 uploads ${(eight.dataMiBs / one.dataMiBs).toFixed(2)}x the rate of one; CPU per GiB ${(eight.cpuPerGiB / one.cpuPerGiB).toFixed(2)}x one upload's (goal <= 1); ` +
          `RSS ${((eight.rssMiB - one.rssMiB) / 7).toFixed(1)} MiB per additional transfer (goal < 64)\n\n`,
      );
      failed ||= !rows.every((r) => r.ok);
    }

    if (!only || only === 'balance') {
      const hosts = () => [1, 2, 3, 4].map((i) => ({ name: `host${i}`, rate: hostRate }));
      const balanced = await withEngine(dir, hosts(), (e) => runJobs(e, dir, `balance | 12 over 4 hosts, --per-host 3`, image, img.dataBytes, 12, ['--per-host', '3']));
      const forced = await withEngine(dir, hosts(), (e) => runJobs(e, dir, `balance | 12 forced onto host1`, image, img.dataBytes, 12, ['--host', 'host1', '--per-host', '12']));
      process.stdout.write(`${table(headers, [balanced, forced].map(cell))}\n\n`);
      const limit = (4 * hostRate) / MiB;
      process.stdout.write(
        `balance: --per-host 3 over 4 hosts ${(forced.wall / balanced.wall).toFixed(2)}x faster than one host; ` +
          `${balanced.dataMiBs.toFixed(0)} MiB/s of data against the 4 hosts' ${limit.toFixed(0)} MiB/s (${(limit / balanced.dataMiBs).toFixed(2)}x from it; goal <= 1.2x). ` +
          `The link also carries HTTP headers and zero requests, so data MiB/s is a little below the wire's.\n`,
      );
      failed ||= !balanced.ok || !forced.ok;
    }
    return failed ? 1 : 0;
  } finally {
    removeTempDir(dir);
  }
}

runBench(main);
