/**
 * The performance benchmark (npm run bench). Every row runs imageio-nbd against the built-in
 * imageio server on loopback, with real clients, and prints wall time, data MiB/s,
 * imageio-nbd's own CPU seconds (per GiB of data too) and peak RSS, HTTP requests, bytes sent
 * or fetched against the data bytes, and a byte-compare verdict, then a summary of the targets.
 *
 * Sections (each row's label starts with its section; --only REGEX selects rows by label):
 *   upload        four client configurations x coalescing on/off x 4/1 HTTP connections
 *   hint          the upload clients under several advertised preferred block sizes (--hints)
 *   download      nbdcopy and qemu-img reading through imageio-nbd --readonly
 *   backpressure  4 NBD connections x 64 x 256 KiB writes in flight, 50 ms PUT latency,
 *                 default --coalesce-idle against --coalesce-idle 1
 *   startup       spawn to listening (pidfile) and spawn to exit of --run true
 *   https         the upload and download clients over HTTPS (--unix-socket never, as from a
 *                 conversion host that is not an oVirt host), default options
 *   bridges       10 imageio-nbd processes at once (one per disk, as virt-v2v runs them), each
 *                 uploading a small disk into its own region of one built-in server's image:
 *                 the sum of their peak RSS and CPU
 *
 *   node dist/bench/bench.js [--quick] [--size 4G] [--repeat N] [--only REGEX] [--json FILE] ...
 *   node dist/bench/bench.js --help
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { writeSparseImage, type SparseImageSummary } from '../sim/sparse-image';
import { parseSize } from '../src/core/size';
import {
  CLI, GNU_TIME, ROOT, ServerStartError, emptyTarget, formatMiB, makeTempDir, median, removeTempDir, runBench,
  sameBytes, startImageioServer, table, timed, type ImageioServerCounters, type ImageioServerProcess,
} from './lib';
import { runThroughImageioNbd, startupPidfile, startupRunTrue, type NbdRun, type StartupSample } from './measure';

const GiB = 2 ** 30;
const MiB = 2 ** 20;
const PYTHON = '/usr/bin/python3';
const STREAMS = path.join(ROOT, 'bench', 'streams.py');

/** The targets, as numbers. */
const TARGET = {
  cpuPerGiB: 0.35,
  rssMiB: 100,
  startupSeconds: 0.1,
  bytesRatio: 1.02,
  backpressureShare: 0.8,
};

// ---------------------------------------------------------------------------------------------
// Options

const USAGE = `npm run bench -- [options]

  --quick            a short run: --size 1G, 4 HTTP connections only, hint rows for qemu-img convert -n
                     and nbdcopy only, --bp-size 256M, --startup-n 5
  --size SIZE        virtual size of the seeded sparse image (default 4G; about 1/3 of it is data)
  --fraction F       fraction of the image that is random data (default 0.333)
  --repeat N         run every row N times and print medians (default 1)
  --only REGEX       run only rows whose label matches, e.g. 'download', 'upload \\| nbdcopy',
                     'upload .* \\| on \\| 4', 'hint \\| 4K', 'backpressure', 'startup'
  --block-size SIZE  preferred block size imageio-nbd advertises in upload and download rows
                     (default: imageio-nbd's own)
  --hints LIST       block sizes for the hint rows (default 4K,64K,8M,none)
  --bp-size SIZE     data written in the backpressure rows, over 4 connections (default 1G)
  --latency MS       PUT latency of the server in the backpressure rows (default 50)
  --startup-n N      start-up samples per measure (default 11)
  --bridges N        imageio-nbd processes in the bridges row (default 10)
  --bridge-size SIZE virtual size of each disk in the bridges row (default 256M, --quick 128M)
  --dir DIR          where the temporary directory goes (default ${os.tmpdir()})
  --json FILE        also write every row (all runs) as JSON
`;

interface Options {
  quick: boolean;
  size: number;
  fraction: number;
  repeat: number;
  only: RegExp;
  blockSize?: string;
  hints: string[];
  bpSize: number;
  latencyMs: number;
  startupN: number;
  bridges: number;
  bridgeSize: number;
  dir: string;
  json?: string;
}

class UsageError extends Error {}

function parseOptions(argv: string[]): Options {
  const values = new Map<string, string>();
  const flags = new Set<string>();
  const takesValue = new Set(['size', 'fraction', 'repeat', 'only', 'block-size', 'hints', 'bp-size', 'latency', 'startup-n', 'dir', 'json', 'bridges', 'bridge-size']);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const m = /^--([a-z-]+)(?:=(.*))?$/s.exec(a);
    if (!m) throw new UsageError(`unexpected argument '${a}'`);
    const [, name, inline] = m;
    if (name === 'quick' || name === 'help') {
      flags.add(name);
    } else if (takesValue.has(name)) {
      const v = inline ?? argv[++i];
      if (v === undefined) throw new UsageError(`--${name} needs a value`);
      values.set(name, v);
    } else {
      throw new UsageError(`unknown option --${name}`);
    }
  }
  if (flags.has('help')) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  const quick = flags.has('quick');
  const num = (name: string, def: number, ok: (n: number) => boolean): number => {
    const v = values.get(name);
    if (v === undefined) return def;
    const n = Number(v);
    if (!ok(n)) throw new UsageError(`invalid --${name} '${v}'`);
    return n;
  };
  return {
    quick,
    size: parseSize(values.get('size') ?? (quick ? '1G' : '4G')),
    fraction: num('fraction', 1 / 3, (n) => n > 0 && n <= 1),
    repeat: num('repeat', 1, (n) => Number.isInteger(n) && n >= 1),
    only: new RegExp(values.get('only') ?? '.'),
    blockSize: values.get('block-size'),
    hints: (values.get('hints') ?? '4K,64K,8M,none').split(',').map((s) => s.trim()).filter(Boolean),
    bpSize: parseSize(values.get('bp-size') ?? (quick ? '256M' : '1G')),
    latencyMs: num('latency', 50, (n) => n >= 0),
    startupN: num('startup-n', quick ? 5 : 11, (n) => Number.isInteger(n) && n >= 1),
    bridges: num('bridges', 10, (n) => Number.isInteger(n) && n >= 1),
    bridgeSize: parseSize(values.get('bridge-size') ?? (quick ? '128M' : '256M')),
    dir: values.get('dir') ?? os.tmpdir(),
    json: values.get('json'),
  };
}

// ---------------------------------------------------------------------------------------------
// Rows

type Section = 'upload' | 'hint' | 'download' | 'backpressure' | 'startup' | 'https-upload' | 'https-download' | 'bridges';
type Verdict = 'same' | 'DIFFERENT' | 'FAILED' | 'n/a';

/** What one run of a row measured. */
interface RunFigures {
  ok: boolean;
  error?: string;
  wallSeconds: number;
  listenSeconds?: number;
  /** imageio-nbd's CPU and peak RSS, measured outside it (GNU time, or the wrapper). */
  cpuSeconds?: number;
  peakRssMiB?: number;
  rusageSource?: string;
  /** The same, from the `process:` line of --stats=FILE. */
  statsCpuSeconds?: number;
  statsPeakRssMiB?: number;
  /** imageio-nbd's HTTP requests by kind ("PUT" -> count, bytes), from --stats. */
  http?: Record<string, { count: number; bytes: number }>;
  /** NBD requests by kind, from --stats. */
  nbd?: Record<string, { count: number; bytes: number }>;
  /** The imageio server's own counters (exact). */
  server?: Pick<ImageioServerCounters, 'ops' | 'bytesRead' | 'bytesWritten' | 'bytesZeroed' | 'flushes'>;
  /** imageio-nbd's exit status (start-up rows). */
  exitStatus?: number;
  /** Backpressure: the streams' own MiB/s (first write to last FLUSH reply). */
  streamMiBps?: number;
  /** Bridges: the largest peak RSS of one process (peakRssMiB is their sum). */
  maxPeakRssMiB?: number;
  verdict: Verdict;
}

interface Row {
  section: Section;
  label: string;
  /** Column values that identify the row (client, coalesce, conns, hint, ...). */
  params: Record<string, string>;
  /** imageio-nbd ran with its default options (the RSS target applies). */
  defaults: boolean;
  /** Bytes of data the row moves (CPU per GiB and MiB/s are per these). */
  dataBytes: number;
  runs: RunFigures[];
  /** When the row could not run at all. */
  note?: string;
  missed: string[];
}

interface Job {
  section: Section;
  label: string;
  run: () => Promise<Row>;
}

interface Client {
  name: string;
  cmd: string;
}

const UPLOAD_CLIENTS: Client[] = [
  { name: 'qemu-img convert -n', cmd: 'qemu-img convert -n -f raw -O raw "$SRC" "$uri"' },
  { name: 'qemu-img convert -n -W -m 16', cmd: 'qemu-img convert -n -W -m 16 -f raw -O raw "$SRC" "$uri"' },
  { name: 'nbdcopy', cmd: 'nbdcopy "$SRC" "$uri"' },
  { name: 'nbdcopy 4M x16 --flush', cmd: 'nbdcopy --request-size=4194304 --requests=16 --flush "$SRC" "$uri"' },
];

const DOWNLOAD_CLIENTS: Client[] = [
  { name: 'nbdcopy', cmd: 'nbdcopy "$uri" "$OUT"' },
  { name: 'nbdcopy 4M x16', cmd: 'nbdcopy --request-size=4194304 --requests=16 "$uri" "$OUT"' },
  { name: 'qemu-img convert', cmd: 'qemu-img convert -f raw -O raw "$uri" "$OUT"' },
  { name: 'qemu-img convert -W', cmd: 'qemu-img convert -W -f raw -O raw "$uri" "$OUT"' },
];

const med = (xs: Array<number | undefined>): number | undefined => {
  const v = xs.filter((x): x is number => x !== undefined && Number.isFinite(x));
  return v.length ? median(v) : undefined;
};

/** Medians of a row's runs. */
function summary(row: Row) {
  const r = row.runs;
  const wall = med(r.map((x) => x.wallSeconds));
  const cpu = med(r.map((x) => x.cpuSeconds ?? x.statsCpuSeconds));
  const rss = med(r.map((x) => x.peakRssMiB ?? x.statsPeakRssMiB));
  const statsCpu = med(r.map((x) => x.statsCpuSeconds));
  const statsRss = med(r.map((x) => x.statsPeakRssMiB));
  const writes = row.section === 'upload' || row.section === 'hint' || row.section === 'backpressure' || row.section === 'https-upload' || row.section === 'bridges';
  const put = writes ? med(r.map((x) => x.server?.bytesWritten ?? x.http?.PUT?.bytes)) : undefined;
  const get = row.section === 'download' || row.section === 'https-download' ? med(r.map((x) => x.server?.bytesRead ?? x.http?.GET?.bytes)) : undefined;
  const stream = med(r.map((x) => x.streamMiBps));
  const verdicts = new Set(r.map((x) => x.verdict));
  const verdict: Verdict = verdicts.has('FAILED') ? 'FAILED' : verdicts.has('DIFFERENT') ? 'DIFFERENT' : verdicts.has('same') ? 'same' : 'n/a';
  return {
    wall,
    mibps: wall ? row.dataBytes / MiB / wall : undefined,
    cpu,
    cpuPerGiB: cpu !== undefined ? cpu / (row.dataBytes / GiB) : undefined,
    rss,
    statsCpu,
    statsRss,
    noStats: r.some((x) => x.ok && x.statsCpuSeconds === undefined),
    noRusage: r.some((x) => x.ok && x.cpuSeconds === undefined),
    putRatio: put !== undefined ? put / row.dataBytes : undefined,
    getRatio: get !== undefined ? get / row.dataBytes : undefined,
    stream,
    verdict,
  };
}

const f = (n: number | undefined, digits = 2): string => (n === undefined ? '?' : n.toFixed(digits));

/** "2.41", with the --stats figure beside it when the two disagree or one is missing. */
function cpuCell(row: Row): string {
  const s = summary(row);
  if (s.cpu === undefined) return '?';
  let text = f(s.cpu);
  if (s.noRusage) text += ' (stats only)';
  else if (s.noStats) text += ' (no stats line)';
  else if (s.statsCpu !== undefined && Math.abs(s.statsCpu - s.cpu) > Math.max(0.05, 0.1 * s.cpu)) text += ` (stats ${f(s.statsCpu)})`;
  return text;
}

function rssCell(row: Row): string {
  const s = summary(row);
  if (s.rss === undefined) return '?';
  let text = f(s.rss, 0);
  if (!s.noStats && !s.noRusage && s.statsRss !== undefined && Math.abs(s.statsRss - s.rss) > Math.max(2, 0.05 * s.rss)) text += ` (stats ${f(s.statsRss, 0)})`;
  return text;
}

/** "PUT 34x8.00M, PATCH zero 7x34M, ..." from imageio-nbd's --stats, else from the server's counters. */
function httpCell(run: RunFigures | undefined): string {
  if (!run) return '';
  if (run.http && Object.keys(run.http).length) {
    return Object.entries(run.http)
      .map(([k, v]) => (v.bytes ? `${k} ${v.count}x${formatMiB(v.bytes / v.count)}M` : `${k} ${v.count}`))
      .join(', ');
  }
  const s = run.server;
  if (!s) return '';
  const parts: string[] = [];
  if (s.ops.write) parts.push(`PUT ${s.ops.write}x${formatMiB(s.bytesWritten / s.ops.write)}M`);
  if (s.ops.read) parts.push(`GET ${s.ops.read}x${formatMiB(s.bytesRead / s.ops.read)}M`);
  if (s.ops.zero) parts.push(`PATCH zero ${s.ops.zero}`);
  if (s.ops.flush) parts.push(`PATCH flush ${s.ops.flush}`);
  return parts.length ? `server: ${parts.join(', ')}` : '';
}

function countMean(count: number | undefined, bytes: number | undefined, unit: number, suffix: string): string {
  if (!count || bytes === undefined) return '-';
  return `${count}x${(bytes / count / unit).toFixed(unit === MiB ? 2 : 0)}${suffix}`;
}

/** "0 x11", or "0 x9, 143 x2". */
function exitStatuses(row: Row): string {
  const n = new Map<string, number>();
  for (const x of row.runs) {
    const k = x.exitStatus === undefined ? '?' : String(x.exitStatus);
    n.set(k, (n.get(k) ?? 0) + 1);
  }
  return [...n].map(([k, c]) => `${k} x${c}`).join(', ');
}

const missedCell = (row: Row): string => (row.note ? 'not run' : row.missed.length ? row.missed.join(' ') : '-');

const MISSED_LEGEND =
  `"targets missed": cpu = CPU > ${TARGET.cpuPerGiB} s per GiB of data; rss = peak RSS > ${TARGET.rssMiB} MiB with default options; ` +
  `put/get = PUT/GET bytes > ${TARGET.bytesRatio}x the data; on>off = coalescing on slower than off; ` +
  `idle = default --coalesce-idle below ${TARGET.backpressureShare * 100}% of --coalesce-idle 1; ` +
  `start-up = median > ${TARGET.startupSeconds * 1000} ms; cmp = output differs or the run failed; - = all met.`;

// ---------------------------------------------------------------------------------------------
// Running rows

interface Context {
  opts: Options;
  dir: string;
  src: string;
  layout?: SparseImageSummary;
  /** How to say "advertise no preferred block size", if the CLI can. */
  noHint?: { args: string[] } | { why: string };
  /** Whether the built-in server takes --latency. */
  latency?: { supported: true } | { supported: false; why: string };
  progress: { done: number; total: number };
  /** A CA and a server certificate for the HTTPS rows, made on first use. */
  pki?: { ca: string; cert: string; key: string };
}

/** A test CA and a certificate for 127.0.0.1 signed by it (openssl), in ctx.dir. */
function pki(ctx: Context): { ca: string; cert: string; key: string } {
  if (ctx.pki) return ctx.pki;
  const dir = path.join(ctx.dir, 'pki');
  fs.mkdirSync(dir, { recursive: true });
  const run = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  run('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=imageio-nbd bench CA');
  run('req', ...ec, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=localhost');
  fs.writeFileSync(path.join(dir, 'ext.cnf'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\n');
  run('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '2', '-extfile', 'ext.cnf');
  ctx.pki = { ca: path.join(dir, 'ca.pem'), cert: path.join(dir, 'server.pem'), key: path.join(dir, 'server.key') };
  return ctx.pki;
}

/** Server options and imageio-nbd options for a row over HTTPS: TLS on, imageio's unix socket never used. */
function tlsArgs(ctx: Context, tls: boolean): { server: string[]; nbd: string[] } {
  if (!tls) return { server: [], nbd: [] };
  const p = pki(ctx);
  return { server: ['--tls-cert', p.cert, '--tls-key', p.key], nbd: ['--cafile', p.ca, '--unix-socket', 'never'] };
}

function progressLine(ctx: Context, label: string, i: number, fig: RunFigures, extra = ''): void {
  const rep = ctx.opts.repeat > 1 ? ` (run ${i + 1}/${ctx.opts.repeat})` : '';
  const cpu = fig.cpuSeconds ?? fig.statsCpuSeconds;
  const rss = fig.peakRssMiB ?? fig.statsPeakRssMiB;
  process.stderr.write(
    `bench: [${ctx.progress.done + 1}/${ctx.progress.total}] ${label}${rep}: ${fig.wallSeconds.toFixed(2)} s wall, ` +
      `${cpu !== undefined ? cpu.toFixed(2) : '?'} cpu s, ${rss !== undefined ? rss.toFixed(0) : '?'} MiB RSS${extra ? `, ${extra.trim()}` : ''}, ${fig.verdict}` +
      (fig.error ? ` (${fig.error})` : '') +
      '\n',
  );
}

function reportFailure(label: string, run: NbdRun): void {
  const tail = (s: string) => s.trim().split('\n').slice(-15).join('\n');
  process.stderr.write(`bench: ${label}: ${run.error ?? 'output differs'}\n`);
  if (run.clientStderr.trim()) process.stderr.write(`  client stderr:\n${tail(run.clientStderr)}\n`);
  if (run.nbdStderr.trim()) process.stderr.write(`  imageio-nbd stderr:\n${tail(run.nbdStderr)}\n`);
}

function figures(run: NbdRun, counters: ImageioServerCounters | undefined, verdict: Verdict): RunFigures {
  return {
    ok: run.ok && verdict !== 'DIFFERENT',
    error: run.error,
    wallSeconds: run.wallSeconds,
    listenSeconds: run.listenSeconds,
    cpuSeconds: run.rusage?.cpuSeconds,
    peakRssMiB: run.rusage?.peakRssMiB,
    rusageSource: run.rusage?.source,
    statsCpuSeconds: run.stats.cpuSeconds,
    statsPeakRssMiB: run.stats.peakRssMiB,
    http: run.stats.http,
    nbd: run.stats.nbd,
    server: counters && {
      ops: counters.ops,
      bytesRead: counters.bytesRead,
      bytesWritten: counters.bytesWritten,
      bytesZeroed: counters.bytesZeroed,
      flushes: counters.flushes,
    },
    verdict,
  };
}

async function withServer<T>(
  image: string,
  ctx: Context,
  extra: string[],
  body: (server: ImageioServerProcess) => Promise<T>,
): Promise<T> {
  const server = await startImageioServer(image, path.join(ctx.dir, 'imageio.sock'), extra, path.join(ctx.dir, 'control.sock'));
  try {
    return await body(server);
  } finally {
    await server.stop();
  }
}

/** Upload SRC into an empty target through imageio-nbd with `nbdArgs`; verify with cmp. */
async function uploadOnce(ctx: Context, label: string, client: Client, nbdArgs: string[], tls = false): Promise<RunFigures> {
  const dst = path.join(ctx.dir, 'target.raw');
  emptyTarget(dst, ctx.opts.size);
  const t = tlsArgs(ctx, tls);
  try {
    return await withServer(dst, ctx, t.server, async (server) => {
      const run = await runThroughImageioNbd({ dir: ctx.dir, url: server.url, nbdArgs: [...t.nbd, ...nbdArgs], client: client.cmd, env: { SRC: ctx.src } });
      const counters = await server.stats();
      await server.stop();
      const verdict: Verdict = run.ok ? (sameBytes(ctx.src, dst) ? 'same' : 'DIFFERENT') : 'FAILED';
      if (verdict !== 'same') reportFailure(label, run);
      return figures(run, counters, verdict);
    });
  } finally {
    fs.rmSync(dst, { force: true });
  }
}

async function downloadOnce(ctx: Context, label: string, client: Client, nbdArgs: string[], tls = false): Promise<RunFigures> {
  const out = path.join(ctx.dir, 'out.raw');
  fs.rmSync(out, { force: true });
  const t = tlsArgs(ctx, tls);
  try {
    return await withServer(ctx.src, ctx, ['--readonly', ...t.server], async (server) => {
      const run = await runThroughImageioNbd({ dir: ctx.dir, url: server.url, nbdArgs: ['--readonly', ...t.nbd, ...nbdArgs], client: client.cmd, env: { OUT: out } });
      const counters = await server.stats();
      await server.stop();
      const verdict: Verdict = run.ok ? (fs.existsSync(out) && sameBytes(ctx.src, out) ? 'same' : 'DIFFERENT') : 'FAILED';
      if (verdict !== 'same') reportFailure(label, run);
      return figures(run, counters, verdict);
    });
  } finally {
    fs.rmSync(out, { force: true });
  }
}

async function repeatRow(ctx: Context, row: Row, once: () => Promise<RunFigures>, extra?: (fig: RunFigures) => string): Promise<Row> {
  for (let i = 0; i < ctx.opts.repeat; i++) {
    const fig = await once();
    row.runs.push(fig);
    progressLine(ctx, row.label, i, fig, extra ? extra(fig) : '');
  }
  return row;
}

function blockSizeArgs(opts: Options): string[] {
  return opts.blockSize ? ['--block-size', opts.blockSize] : [];
}

function uploadJobs(ctx: Context): Job[] {
  const jobs: Job[] = [];
  for (const client of UPLOAD_CLIENTS) {
    for (const coalesce of ['on', 'off']) {
      for (const conns of ctx.opts.quick ? [4] : [4, 1]) {
        const label = `upload | ${client.name} | ${coalesce} | ${conns}`;
        const nbdArgs = [...(coalesce === 'off' ? ['--request-size', '0'] : []), ...(conns !== 4 ? ['--connections', String(conns)] : []), ...blockSizeArgs(ctx.opts)];
        jobs.push({
          section: 'upload',
          label,
          run: () =>
            repeatRow(
              ctx,
              {
                section: 'upload', label, params: { client: client.name, coalesce, conns: String(conns) },
                defaults: nbdArgs.length === 0, dataBytes: ctx.layout!.dataBytes, runs: [], missed: [],
              },
              () => uploadOnce(ctx, label, client, nbdArgs),
              (fig) => ` PUT/data ${fig.server ? (fig.server.bytesWritten / ctx.layout!.dataBytes).toFixed(3) : '?'}`,
            ),
        });
      }
    }
  }
  return jobs;
}

/** Find how to make imageio-nbd advertise no preferred block size; check it with nbdinfo. */
async function probeNoHint(): Promise<{ args: string[] } | { why: string }> {
  const tried: string[] = [];
  for (const spelling of ['none', '0']) {
    const r = await timed([process.execPath, CLI, '--block-size', spelling, '-U', '-', 'memory:1M', '--run', 'nbdinfo "$uri" >&2']);
    if (r.status !== 0 || !r.stderr.includes('export-size')) {
      tried.push(`--block-size ${spelling}: ${r.stderr.trim().split('\n')[0]}`);
      continue;
    }
    const pref = /block_size_preferred: (\d+)/.exec(r.stderr);
    if (pref) {
      tried.push(`--block-size ${spelling} is accepted but still advertises ${pref[1]}`);
      continue;
    }
    return { args: ['--block-size', spelling] };
  }
  return { why: tried.join('; ') };
}

function hintJobs(ctx: Context): Job[] {
  const jobs: Job[] = [];
  // --quick: the two clients that keep their own request sizes most differently.
  const clients = ctx.opts.quick ? UPLOAD_CLIENTS.filter((c) => c.name === 'qemu-img convert -n' || c.name === 'nbdcopy') : UPLOAD_CLIENTS;
  for (const hint of ctx.opts.hints) {
    for (const client of clients) {
      const label = `hint | ${hint} | ${client.name}`;
      jobs.push({
        section: 'hint',
        label,
        run: async () => {
          const row: Row = { section: 'hint', label, params: { hint, client: client.name }, defaults: false, dataBytes: ctx.layout!.dataBytes, runs: [], missed: [] };
          let args: string[];
          if (hint === 'none') {
            ctx.noHint ??= await probeNoHint();
            if ('why' in ctx.noHint) {
              row.note = 'the CLI cannot advertise no preferred block size';
              process.stderr.write(`bench: ${label}: not run: ${row.note} (${ctx.noHint.why})\n`);
              return row;
            }
            args = ctx.noHint.args;
          } else {
            args = ['--block-size', hint];
          }
          return repeatRow(ctx, row, () => uploadOnce(ctx, label, client, args), (fig) =>
            ` PUT/data ${fig.server ? (fig.server.bytesWritten / ctx.layout!.dataBytes).toFixed(3) : '?'}`,
          );
        },
      });
    }
  }
  return jobs;
}

function downloadJobs(ctx: Context): Job[] {
  return DOWNLOAD_CLIENTS.map((client) => {
    const label = `download | ${client.name}`;
    const nbdArgs = blockSizeArgs(ctx.opts);
    return {
      section: 'download' as const,
      label,
      run: () =>
        repeatRow(
          ctx,
          { section: 'download', label, params: { client: client.name }, defaults: nbdArgs.length === 0, dataBytes: ctx.layout!.dataBytes, runs: [], missed: [] },
          () => downloadOnce(ctx, label, client, nbdArgs),
          (fig) => ` GET/data ${fig.server ? (fig.server.bytesRead / ctx.layout!.dataBytes).toFixed(3) : '?'}`,
        ),
    };
  });
}

/** HTTPS rows: every upload and download client, default options (--quick: nbdcopy's two). */
function httpsJobs(ctx: Context): Job[] {
  const pick = (cs: Client[]) => (ctx.opts.quick ? cs.filter((c) => c.name.startsWith('nbdcopy')) : cs);
  const jobs: Job[] = [];
  for (const client of pick(UPLOAD_CLIENTS)) {
    const label = `https-upload | ${client.name}`;
    const nbdArgs = blockSizeArgs(ctx.opts);
    jobs.push({
      section: 'https-upload',
      label,
      run: () =>
        repeatRow(
          ctx,
          { section: 'https-upload', label, params: { client: client.name }, defaults: nbdArgs.length === 0, dataBytes: ctx.layout!.dataBytes, runs: [], missed: [] },
          () => uploadOnce(ctx, label, client, nbdArgs, true),
          (fig) => ` PUT/data ${fig.server ? (fig.server.bytesWritten / ctx.layout!.dataBytes).toFixed(3) : '?'}`,
        ),
    });
  }
  for (const client of pick(DOWNLOAD_CLIENTS)) {
    const label = `https-download | ${client.name}`;
    const nbdArgs = blockSizeArgs(ctx.opts);
    jobs.push({
      section: 'https-download',
      label,
      run: () =>
        repeatRow(
          ctx,
          { section: 'https-download', label, params: { client: client.name }, defaults: nbdArgs.length === 0, dataBytes: ctx.layout!.dataBytes, runs: [], missed: [] },
          () => downloadOnce(ctx, label, client, nbdArgs, true),
          (fig) => ` GET/data ${fig.server ? (fig.server.bytesRead / ctx.layout!.dataBytes).toFixed(3) : '?'}`,
        ),
    });
  }
  return jobs;
}

// ---------------------------------------------------------------------------------------------
// Bridges: N imageio-nbd processes at once, one per disk, into one server.

/** virt-v2v's nbdcopy flags; --target-is-zero so that a disk's holes are not written over its neighbours' regions. */
const BRIDGE_CLIENT = 'nbdcopy --request-size=4194304 --requests=16 --flush --target-is-zero "$SRC" "$uri"';

/**
 * The built-in server serves one image, so the N disks are regions of it: disk i is a source
 * as large as the whole image, with data only in region i (a small seeded image placed there,
 * its zero blocks left as holes). Each bridge exports the whole ticket; nbdcopy with
 * --target-is-zero writes only disk i's data, so the N copies never overlap.
 */
function bridgeJobs(ctx: Context): Job[] {
  const n = ctx.opts.bridges;
  const disk = Math.floor(ctx.opts.bridgeSize / (4 * MiB)) * 4 * MiB;
  const label = `bridges | ${n} x nbdcopy 4M x16 --flush | ${formatMiB(disk)} MiB disks`;
  return [
    {
      section: 'bridges',
      label,
      run: async () => {
        const row: Row = { section: 'bridges', label, params: { n: String(n), disk: formatMiB(disk) }, defaults: false, dataBytes: 0, runs: [], missed: [] };
        const small: string[] = [];
        const sources: string[] = [];
        for (let i = 0; i < n; i++) {
          small.push(path.join(ctx.dir, `disk-${i}.small.raw`));
          sources.push(path.join(ctx.dir, `disk-${i}.raw`));
          row.dataBytes += writeSparseImage(small[i], { size: disk, dataFraction: ctx.opts.fraction, seed: 100 + i }).dataBytes;
          emptyTarget(sources[i], disk * n);
          execFileSync('dd', [`if=${small[i]}`, `of=${sources[i]}`, 'bs=1M', `seek=${(i * disk) / MiB}`, 'conv=sparse,notrunc', 'status=none']);
        }
        try {
          return await repeatRow(ctx, row, () => bridgesOnce(ctx, label, small, sources, disk));
        } finally {
          for (const f of [...small, ...sources]) fs.rmSync(f, { force: true });
        }
      },
    },
  ];
}

async function bridgesOnce(ctx: Context, label: string, small: string[], sources: string[], disk: number): Promise<RunFigures> {
  const n = sources.length;
  const dst = path.join(ctx.dir, 'bridges-target.raw');
  emptyTarget(dst, disk * n);
  try {
    return await withServer(dst, ctx, [], async (server) => {
      const runs = await Promise.all(
        sources.map((src, i) => {
          const dir = path.join(ctx.dir, `bridge-${i}`);
          fs.mkdirSync(dir, { recursive: true });
          return runThroughImageioNbd({ dir, url: server.url, nbdArgs: [], client: BRIDGE_CLIENT, env: { SRC: src } });
        }),
      );
      const counters = await server.stats();
      await server.stop();
      let verdict: Verdict = runs.every((r) => r.ok) ? 'same' : 'FAILED';
      for (let i = 0; i < n && verdict === 'same'; i++) {
        // Region i of the target against disk i's own image.
        const c = spawnSync('cmp', ['-s', '-n', String(disk), '-i', `0:${i * disk}`, small[i], dst]);
        if (c.status !== 0) verdict = 'DIFFERENT';
      }
      runs.forEach((r, i) => {
        if (!r.ok || verdict === 'DIFFERENT') reportFailure(`${label} (bridge ${i})`, r);
      });
      const sum = (xs: Array<number | undefined>) => (xs.every((x) => x !== undefined) ? (xs as number[]).reduce((a, b) => a + b, 0) : undefined);
      const fig = figures(runs[0], counters, verdict);
      fig.ok = verdict === 'same';
      fig.error = runs.find((r) => r.error)?.error;
      fig.wallSeconds = Math.max(...runs.map((r) => r.wallSeconds));
      fig.cpuSeconds = sum(runs.map((r) => r.rusage?.cpuSeconds));
      fig.peakRssMiB = sum(runs.map((r) => r.rusage?.peakRssMiB));
      fig.maxPeakRssMiB = runs.every((r) => r.rusage) ? Math.max(...runs.map((r) => r.rusage!.peakRssMiB)) : undefined;
      fig.statsCpuSeconds = sum(runs.map((r) => r.stats.cpuSeconds));
      fig.statsPeakRssMiB = sum(runs.map((r) => r.stats.peakRssMiB));
      fig.http = undefined;
      fig.nbd = undefined;
      return fig;
    });
  } finally {
    fs.rmSync(dst, { force: true });
  }
}

const BP_CONNS = 4;
const BP_DEPTH = 64;
const BP_WRITE = 256 * 1024;

/** Does the built-in server take --latency MS? (Start one and see.) */
async function probeLatency(ctx: Context): Promise<{ supported: true } | { supported: false; why: string }> {
  const img = path.join(ctx.dir, 'probe.raw');
  emptyTarget(img, MiB);
  try {
    const s = await startImageioServer(img, undefined, ['--latency', String(ctx.opts.latencyMs)], undefined, false);
    await s.stop();
    return { supported: true };
  } catch (err) {
    const text = err instanceof ServerStartError ? err.stderr : String(err);
    return { supported: false, why: text.trim().split('\n').find((l) => /latency|unknown|invalid/i.test(l)) ?? text.trim().split('\n')[0] };
  } finally {
    fs.rmSync(img, { force: true });
  }
}

function backpressureJobs(ctx: Context): Job[] {
  const region = Math.floor(ctx.opts.bpSize / BP_CONNS / BP_WRITE) * BP_WRITE;
  const total = region * BP_CONNS;
  const jobs: Job[] = [];
  // "server": the server's --latency option; "fault": the same delay, emulated with a fault rule
  // on the control socket (a PUT waits before it is handled), for servers without --latency.
  for (const mode of ['server', 'fault'] as const) {
    for (const idle of ['default', '1']) {
      const label = `backpressure | ${mode === 'server' ? '--latency' : 'PUT delay fault'} ${ctx.opts.latencyMs} ms | idle ${idle}`;
      const nbdArgs = idle === 'default' ? [] : ['--coalesce-idle', idle];
      jobs.push({
        section: 'backpressure',
        label,
        run: async () => {
          const row: Row = {
            section: 'backpressure', label, params: { latency: mode === 'server' ? `--latency ${ctx.opts.latencyMs}` : `PUT delay fault ${ctx.opts.latencyMs} ms`, idle },
            defaults: nbdArgs.length === 0, dataBytes: total, runs: [], missed: [],
          };
          ctx.latency ??= await probeLatency(ctx);
          if (mode === 'server' && !ctx.latency.supported) {
            row.note = `server has no latency option (${ctx.latency.why})`;
            process.stderr.write(`bench: ${label}: not run: ${row.note}\n`);
            return row;
          }
          if (mode === 'fault' && ctx.latency.supported) {
            row.note = 'not needed: the server has --latency';
            return row;
          }
          return repeatRow(ctx, row, () => backpressureOnce(ctx, label, mode, nbdArgs, region), (fig) => ` ${f(fig.streamMiBps, 0)} MiB/s streamed`);
        },
      });
    }
  }
  return jobs;
}

async function backpressureOnce(ctx: Context, label: string, mode: 'server' | 'fault', nbdArgs: string[], region: number): Promise<RunFigures> {
  const dst = path.join(ctx.dir, 'bp.raw');
  emptyTarget(dst, region * BP_CONNS);
  try {
    const extra = mode === 'server' ? ['--latency', String(ctx.opts.latencyMs)] : [];
    return await withServer(dst, ctx, extra, async (server) => {
      if (mode === 'fault') await server.controlRequest('POST', '/faults', { method: 'PUT', times: -1, action: { delayMs: ctx.opts.latencyMs } });
      const client = `${PYTHON} ${STREAMS} "$uri" ${region} ${BP_CONNS} ${BP_DEPTH} ${BP_WRITE}`;
      const run = await runThroughImageioNbd({ dir: ctx.dir, url: server.url, nbdArgs, client });
      const counters = await server.stats();
      await server.stop();
      let verdict: Verdict = 'FAILED';
      if (run.ok) {
        const v = spawnSync(PYTHON, [STREAMS, '--verify', dst, String(region), String(BP_CONNS), String(BP_WRITE)], { encoding: 'utf8' });
        verdict = v.status === 0 ? 'same' : 'DIFFERENT';
        if (v.status !== 0) process.stderr.write(`bench: ${label}: ${v.stderr.trim()}\n`);
      }
      if (verdict !== 'same') reportFailure(label, run);
      const fig = figures(run, counters, verdict);
      try {
        const out = JSON.parse(run.clientStdout.trim().split('\n').pop() ?? '') as { bytes: number; seconds: number };
        fig.streamMiBps = out.bytes / MiB / out.seconds;
      } catch {
        /* the client failed; verdict says so */
      }
      return fig;
    });
  } finally {
    fs.rmSync(dst, { force: true });
  }
}

interface StartupRow extends Row {
  samples: StartupSample[];
}

function startupJobs(ctx: Context): Job[] {
  const kinds = [
    { how: 'pidfile', export: 'memory:1G' },
    { how: 'pidfile', export: 'imageio URL' },
    { how: '--run true', export: 'memory:1G' },
    { how: '--run true', export: 'imageio URL' },
  ];
  const selected = kinds.filter((k) => ctx.opts.only.test(`startup | ${k.how} | ${k.export}`));
  if (selected.length === 0) return [];
  // One job: the measures are interleaved so that load changes hit them alike.
  return [
    {
      section: 'startup',
      label: `startup | ${selected.map((k) => `${k.how} | ${k.export}`).join(' + ')}`,
      run: async () => {
        const img = path.join(ctx.dir, 'startup.raw');
        emptyTarget(img, GiB);
        const rows: StartupRow[] = selected.map((k) => ({
          section: 'startup', label: `startup | ${k.how} | ${k.export}`, params: { measure: k.how, export: k.export },
          defaults: true, dataBytes: 0, runs: [], missed: [], samples: [],
        }));
        try {
          await withServer(img, ctx, [], async (server) => {
            for (let i = 0; i < ctx.opts.startupN; i++) {
              for (let j = 0; j < selected.length; j++) {
                const k = selected[j];
                const url = k.export === 'memory:1G' ? 'memory:1G' : server.url;
                const s = k.how === 'pidfile' ? await startupPidfile(ctx.dir, url) : await startupRunTrue(ctx.dir, url);
                rows[j].samples.push(s);
                rows[j].runs.push({
                  ok: s.ok, error: s.error, wallSeconds: s.seconds, cpuSeconds: s.rusage?.cpuSeconds, peakRssMiB: s.rusage?.peakRssMiB,
                  rusageSource: s.rusage?.source, exitStatus: s.exitStatus, verdict: 'n/a',
                });
                if (!s.ok) process.stderr.write(`bench: ${rows[j].label}: ${s.error}\n`);
              }
            }
          });
        } finally {
          fs.rmSync(img, { force: true });
        }
        for (const r of rows) {
          const ms = r.samples.filter((s) => s.ok).map((s) => s.seconds * 1000);
          process.stderr.write(
            `bench: [${ctx.progress.done + 1}/${ctx.progress.total}] ${r.label}: median ${ms.length ? median(ms).toFixed(0) : '?'} ms of ${ms.length}\n`,
          );
        }
        startupRows.push(...rows);
        return rows[0];
      },
    },
  ];
}

/** The start-up job makes several rows; they are collected here. */
const startupRows: StartupRow[] = [];

// ---------------------------------------------------------------------------------------------
// Targets

function evaluate(rows: Row[]): void {
  for (const row of rows) {
    if (row.note || row.runs.length === 0) continue;
    const s = summary(row);
    const m: string[] = [];
    if (row.section === 'startup') {
      if (s.wall === undefined || s.wall > TARGET.startupSeconds) m.push('start-up');
      if (row.defaults && (s.rss === undefined || s.rss > TARGET.rssMiB)) m.push('rss');
      row.missed = m;
      continue;
    }
    if (s.verdict !== 'same') m.push('cmp');
    if (s.cpuPerGiB === undefined || s.cpuPerGiB > TARGET.cpuPerGiB) m.push('cpu');
    if (row.defaults && (s.rss === undefined || s.rss > TARGET.rssMiB)) m.push('rss');
    if ((row.section === 'upload' || row.section === 'hint' || row.section === 'https-upload') && (s.putRatio === undefined || s.putRatio > TARGET.bytesRatio)) m.push('put');
    if ((row.section === 'download' || row.section === 'https-download') && (s.getRatio === undefined || s.getRatio > TARGET.bytesRatio)) m.push('get');
    row.missed = m;
  }
  // Coalescing on never slower than off (same client, same connections).
  for (const on of rows.filter((r) => r.section === 'upload' && r.params.coalesce === 'on')) {
    const off = rows.find((r) => r.section === 'upload' && r.params.coalesce === 'off' && r.params.client === on.params.client && r.params.conns === on.params.conns);
    const a = summary(on).wall;
    const b = off && summary(off).wall;
    if (a !== undefined && b !== undefined && a > b) on.missed.push('on>off');
  }
  // Backpressure: default --coalesce-idle at least 80% of --coalesce-idle 1.
  for (const def of rows.filter((r) => r.section === 'backpressure' && r.params.idle === 'default' && !r.note)) {
    const one = rows.find((r) => r.section === 'backpressure' && r.params.idle === '1' && r.params.latency === def.params.latency && !r.note);
    const a = summary(def).stream;
    const b = one && summary(one).stream;
    if (a === undefined || b === undefined || a < TARGET.backpressureShare * b) def.missed.push('idle');
  }
}

interface TargetLine {
  target: string;
  measured: string;
  met: 'yes' | 'no' | 'not measured';
}

function worst(rows: Row[], value: (r: Row) => number | undefined, higherIsWorse = true): { row: Row; v: number } | undefined {
  let best: { row: Row; v: number } | undefined;
  for (const r of rows) {
    const v = value(r);
    if (v === undefined) continue;
    if (!best || (higherIsWorse ? v > best.v : v < best.v)) best = { row: r, v };
  }
  return best;
}

function rangeText(rows: Row[], value: (r: Row) => number | undefined, digits: number, unit = ''): string {
  const vs = rows.map(value).filter((v): v is number => v !== undefined);
  if (!vs.length) return '?';
  const lo = Math.min(...vs);
  const hi = Math.max(...vs);
  return lo === hi ? `${hi.toFixed(digits)}${unit}` : `${lo.toFixed(digits)}–${hi.toFixed(digits)}${unit}`;
}

function shortLabel(r: Row): string {
  return r.label.replace(/^[a-z]+ \| /, '');
}

function targetLines(rows: Row[]): TargetLine[] {
  const measured = rows.filter((r) => !r.note && r.runs.length > 0);
  const lines: TargetLine[] = [];
  const add = (target: string, subset: Row[], value: (r: Row) => number | undefined, limit: number, digits: number, unit: string, higherIsWorse = true) => {
    const w = worst(subset, value, higherIsWorse);
    if (!w) return lines.push({ target, measured: '-', met: 'not measured' });
    const ok = subset.every((r) => {
      const v = value(r);
      return v !== undefined && (higherIsWorse ? v <= limit : v >= limit);
    });
    lines.push({ target, measured: `${rangeText(subset, value, digits, unit)} over ${subset.length} row${subset.length === 1 ? '' : 's'}; worst: ${shortLabel(w.row)}`, met: ok ? 'yes' : 'no' });
  };
  const sec = (...s: Section[]) => measured.filter((r) => s.includes(r.section));
  add(`imageio-nbd CPU <= ${TARGET.cpuPerGiB} s per GiB of data, uploads (every client configuration)`, sec('upload', 'backpressure'), (r) => summary(r).cpuPerGiB, TARGET.cpuPerGiB, 2, ' s/GiB');
  add(`imageio-nbd CPU <= ${TARGET.cpuPerGiB} s per GiB of data, downloads`, sec('download'), (r) => summary(r).cpuPerGiB, TARGET.cpuPerGiB, 2, ' s/GiB');
  add(`imageio-nbd CPU <= ${TARGET.cpuPerGiB} s per GiB of data, HTTPS uploads and downloads`, sec('https-upload', 'https-download'), (r) => summary(r).cpuPerGiB, TARGET.cpuPerGiB, 2, ' s/GiB');
  add(`peak RSS <= ${TARGET.rssMiB} MiB with default options, every row`, measured.filter((r) => r.defaults), (r) => summary(r).rss, TARGET.rssMiB, 0, ' MiB');
  // Coalescing on against off.
  const pairs: Array<{ on: Row; ratio: number }> = [];
  for (const on of sec('upload').filter((r) => r.params.coalesce === 'on')) {
    const off = sec('upload').find((r) => r.params.coalesce === 'off' && r.params.client === on.params.client && r.params.conns === on.params.conns);
    const a = summary(on).wall;
    const b = off && summary(off).wall;
    if (a !== undefined && b !== undefined) pairs.push({ on, ratio: a / b });
  }
  if (pairs.length) {
    const w = pairs.reduce((x, y) => (y.ratio > x.ratio ? y : x));
    lines.push({
      target: 'coalescing on never slower than off (wall, same client and connections)',
      measured: `on/off wall ${Math.min(...pairs.map((p) => p.ratio)).toFixed(2)}–${w.ratio.toFixed(2)}x over ${pairs.length} pairs; worst: ${shortLabel(w.on).replace(/ \| on \|/, ' |')}`,
      met: pairs.every((p) => p.ratio <= 1) ? 'yes' : 'no',
    });
  } else {
    lines.push({ target: 'coalescing on never slower than off', measured: '-', met: 'not measured' });
  }
  const ms = (r: Row) => {
    const w = summary(r).wall;
    return w === undefined ? undefined : w * 1000;
  };
  add(`start-up to listening <= ${TARGET.startupSeconds * 1000} ms (spawn to pidfile, median)`, sec('startup').filter((r) => r.params.measure === 'pidfile'), ms, TARGET.startupSeconds * 1000, 0, ' ms');
  add(`start-up, spawn to exit of --run true <= ${TARGET.startupSeconds * 1000} ms (median)`, sec('startup').filter((r) => r.params.measure === '--run true'), ms, TARGET.startupSeconds * 1000, 0, ' ms');
  add(`PUT bytes <= ${TARGET.bytesRatio}x the source's data bytes (upload rows)`, sec('upload'), (r) => summary(r).putRatio, TARGET.bytesRatio, 3, 'x');
  add(`GET bytes <= ${TARGET.bytesRatio}x the source's data bytes (download rows)`, sec('download'), (r) => summary(r).getRatio, TARGET.bytesRatio, 3, 'x');
  // Backpressure.
  const bp = sec('backpressure').filter((r) => r.params.idle === 'default');
  const shares = bp
    .map((def) => {
      const one = sec('backpressure').find((r) => r.params.idle === '1' && r.params.latency === def.params.latency);
      const a = summary(def).stream;
      const b = one && summary(one).stream;
      return a !== undefined && b !== undefined ? { def, share: a / b } : undefined;
    })
    .filter((x): x is { def: Row; share: number } => x !== undefined);
  const bpNote = rows.find((r) => r.section === 'backpressure' && r.params.idle === 'default' && r.note && r.note.startsWith('server has no'));
  if (shares.length) {
    lines.push({
      target: `backpressure: default --coalesce-idle >= ${TARGET.backpressureShare * 100}% of --coalesce-idle 1 (MiB/s)`,
      measured: shares.map((s) => `${(s.share * 100).toFixed(0)}% (${s.def.params.latency})`).join('; ') + (bpNote ? '; server has no latency option' : ''),
      met: shares.every((s) => s.share >= TARGET.backpressureShare) ? 'yes' : 'no',
    });
  } else {
    lines.push({ target: `backpressure: default --coalesce-idle >= ${TARGET.backpressureShare * 100}% of --coalesce-idle 1`, measured: bpNote ? 'server has no latency option' : '-', met: 'not measured' });
  }
  return lines;
}

// ---------------------------------------------------------------------------------------------
// Output

function sectionText(ctx: Context, rows: Row[]): string {
  const out: string[] = [];
  const of = (s: Section) => rows.filter((r) => r.section === s);
  const rep = ctx.opts.repeat > 1 ? `, median of ${ctx.opts.repeat} runs` : '';
  const first = (r: Row) => r.runs.find((x) => x.ok) ?? r.runs[0];
  const notRun = (r: Row, n: number) => Array(n).fill('-');

  const up = of('upload');
  if (up.length) {
    out.push(`### Upload (imageio-nbd into the built-in imageio server${rep}; advertised block size ${ctx.opts.blockSize ?? 'default'})`, '');
    out.push(
      table(
        ['client', 'coalesce', 'conns', 'wall s', 'data MiB/s', 'cpu s', 'cpu s/GiB', 'peak RSS MiB', 'PUT/data', 'HTTP requests (count x mean MiB)', 'cmp', 'targets missed'],
        up.map((r) => {
          const s = summary(r);
          return [r.params.client, r.params.coalesce, r.params.conns, f(s.wall), f(s.mibps, 0), cpuCell(r), f(s.cpuPerGiB), rssCell(r), f(s.putRatio, 3), httpCell(first(r)), s.verdict, missedCell(r)];
        }),
      ),
      '',
    );
  }

  const hi = of('hint');
  if (hi.length) {
    out.push(`### Advertised preferred block size (upload rows, coalescing on, 4 connections${rep})`, '');
    out.push(
      table(
        ['hint', 'client', 'wall s', 'data MiB/s', 'cpu s', 'cpu s/GiB', 'peak RSS MiB', 'NBD writes (count x mean KiB)', 'PUT (count x mean MiB)', 'PUT/data', 'cmp', 'targets missed'],
        hi.map((r) => {
          if (r.note) return [r.params.hint, r.params.client, ...notRun(r, 8), 'not run', r.note];
          const s = summary(r);
          const run = first(r);
          return [
            r.params.hint, r.params.client, f(s.wall), f(s.mibps, 0), cpuCell(r), f(s.cpuPerGiB), rssCell(r),
            countMean(run?.nbd?.write?.count, run?.nbd?.write?.bytes, 1024, 'K'),
            countMean(run?.server?.ops.write ?? run?.http?.PUT?.count, run?.server?.bytesWritten ?? run?.http?.PUT?.bytes, MiB, 'M'),
            f(s.putRatio, 3), s.verdict, missedCell(r),
          ];
        }),
      ),
      '',
    );
    if (ctx.noHint && 'why' in ctx.noHint) out.push(`Hint "none" not run: ${ctx.noHint.why}.`, '');
    // Per hint, over the clients: what choosing it as the default would give.
    const hints = [...new Set(hi.map((r) => r.params.hint))];
    out.push(
      table(
        ['hint', 'worst PUT/data', 'worst cpu s/GiB', 'max peak RSS MiB', 'sum of wall s', 'clients'],
        hints.map((h) => {
          const rs = hi.filter((r) => r.params.hint === h && !r.note && r.runs.length);
          if (!rs.length) return [h, '-', '-', '-', '-', 'not run'];
          const ss = rs.map(summary);
          const mx = (xs: Array<number | undefined>) => (xs.some((x) => x === undefined) ? undefined : Math.max(...(xs as number[])));
          const sum = ss.every((s) => s.wall !== undefined) ? ss.reduce((a, s) => a + s.wall!, 0) : undefined;
          return [h, f(mx(ss.map((s) => s.putRatio)), 3), f(mx(ss.map((s) => s.cpuPerGiB))), f(mx(ss.map((s) => s.rss)), 0), f(sum), String(rs.length)];
        }),
      ),
      '',
    );
  }

  const down = of('download');
  if (down.length) {
    out.push(`### Download (imageio-nbd --readonly from the built-in server serving the source image --readonly${rep})`, '');
    out.push(
      table(
        ['client', 'wall s', 'data MiB/s', 'cpu s', 'cpu s/GiB', 'peak RSS MiB', 'GET/data', 'HTTP requests (count x mean MiB)', 'cmp', 'targets missed'],
        down.map((r) => {
          const s = summary(r);
          return [r.params.client, f(s.wall), f(s.mibps, 0), cpuCell(r), f(s.cpuPerGiB), rssCell(r), f(s.getRatio, 3), httpCell(first(r)), s.verdict, missedCell(r)];
        }),
      ),
      '',
    );
  }

  for (const [sec, what] of [['https-upload', 'Upload over HTTPS'], ['https-download', 'Download over HTTPS']] as const) {
    const rs = of(sec);
    if (!rs.length) continue;
    out.push(`### ${what} (the built-in server with a certificate, imageio-nbd --cafile CA --unix-socket never, default options${rep})`, '');
    out.push(
      table(
        ['client', 'wall s', 'data MiB/s', 'cpu s', 'cpu s/GiB', 'peak RSS MiB', sec === 'https-upload' ? 'PUT/data' : 'GET/data', 'HTTP requests (count x mean MiB)', 'cmp', 'targets missed'],
        rs.map((r) => {
          const s = summary(r);
          return [r.params.client, f(s.wall), f(s.mibps, 0), cpuCell(r), f(s.cpuPerGiB), rssCell(r), f(sec === 'https-upload' ? s.putRatio : s.getRatio, 3), httpCell(first(r)), s.verdict, missedCell(r)];
        }),
      ),
      '',
    );
  }

  const br = of('bridges');
  if (br.length) {
    out.push(
      `### Bridges (${ctx.opts.bridges} imageio-nbd processes at once, one per disk, each running \`${BRIDGE_CLIENT.replace(/ "\$SRC" "\$uri"/, '')}\` into its own region of one built-in server's image${rep})`,
      '',
    );
    out.push(
      table(
        ['bridges', 'disk MiB', 'data MiB (all)', 'wall s (last exit)', 'total cpu s', 'cpu s/GiB', 'total peak RSS MiB', 'largest peak RSS MiB', 'PUT/data', 'cmp'],
        br.map((r) => {
          const s = summary(r);
          return [r.params.n, r.params.disk, formatMiB(r.dataBytes), f(s.wall), cpuCell(r), f(s.cpuPerGiB), rssCell(r), f(med(r.runs.map((x) => x.maxPeakRssMiB)), 0), f(s.putRatio, 3), s.verdict];
        }),
      ),
      '',
    );
  }

  const bp = of('backpressure').filter((r) => r.note !== 'not needed: the server has --latency');
  if (bp.length) {
    const total = bp[0].dataBytes;
    out.push(
      `### Backpressure (${BP_CONNS} NBD connections, each streaming ${formatMiB(total / BP_CONNS)} MiB into its own region, ` +
        `${BP_DEPTH} x ${BP_WRITE / 1024} KiB writes in flight each, then FLUSH${rep})`,
      '',
    );
    out.push(
      table(
        ['PUT latency', 'coalesce-idle', 'streamed MiB/s', 'wall s', 'cpu s', 'cpu s/GiB', 'peak RSS MiB', 'PUT (count x mean MiB)', 'HTTP requests (count x mean MiB)', 'cmp', 'targets missed'],
        bp.map((r) => {
          if (r.note) return [r.params.latency, r.params.idle, ...notRun(r, 7), 'not run', r.note];
          const s = summary(r);
          const run = first(r);
          return [
            r.params.latency, r.params.idle, f(s.stream, 0), f(s.wall), cpuCell(r), f(s.cpuPerGiB), rssCell(r),
            countMean(run?.server?.ops.write, run?.server?.bytesWritten, MiB, 'M'), httpCell(run), s.verdict, missedCell(r),
          ];
        }),
      ),
      '',
    );
  }

  const st = of('startup');
  if (st.length) {
    out.push(`### Start-up (median of ${ctx.opts.startupN} samples each, interleaved)`, '');
    out.push(
      table(
        ['measure', 'export', 'median ms', 'min ms', 'max ms', 'cpu s (median)', 'peak RSS MiB', 'failed', 'exit statuses', 'targets missed'],
        st.map((r) => {
          const ok = r.runs.filter((x) => x.ok);
          const ms = ok.map((x) => x.wallSeconds * 1000);
          return [
            r.params.measure === 'pidfile' ? 'spawn to pidfile (-f -U S -P F)' : 'spawn to exit (--run true)', r.params.export,
            ms.length ? median(ms).toFixed(0) : '?', ms.length ? Math.min(...ms).toFixed(0) : '?', ms.length ? Math.max(...ms).toFixed(0) : '?',
            f(med(ok.map((x) => x.cpuSeconds))), f(med(ok.map((x) => x.peakRssMiB)), 0), String(r.runs.length - ok.length), exitStatuses(r), missedCell(r),
          ];
        }),
      ),
      '',
    );
  }

  out.push('### Targets', '');
  out.push(table(['target', 'measured', 'met?'], targetLines(rows).map((t) => [t.target, t.measured, t.met])), '');
  out.push(MISSED_LEGEND, '');
  return out.join('\n');
}

// ---------------------------------------------------------------------------------------------

function describeHost(): Record<string, unknown> {
  const git = spawnSync('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' });
  const dirty = spawnSync('git', ['-C', ROOT, 'status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8' });
  const version = spawnSync(process.execPath, [CLI, '--version'], { encoding: 'utf8' });
  return {
    node: process.version,
    cores: os.cpus().length,
    cpu: os.cpus()[0]?.model,
    memGiB: +(os.totalmem() / GiB).toFixed(1),
    loadavg: os.loadavg().map((x) => +x.toFixed(2)),
    imageioNbd: version.stdout.trim() || undefined,
    commit: git.status === 0 ? git.stdout.trim() + (dirty.stdout.trim() ? '+dirty' : '') : undefined,
    rusage: GNU_TIME ? 'GNU time (wait4)' : 'in-process wrapper (process.resourceUsage)',
  };
}

async function main(): Promise<number> {
  let opts: Options;
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`bench: ${err.message}\n\n${USAGE}`);
    return 2;
  }
  if (!fs.existsSync(PYTHON)) process.stderr.write(`bench: ${PYTHON} missing: the backpressure rows will fail\n`);
  if (!GNU_TIME) process.stderr.write('bench: /usr/bin/time missing (Debian package `time`): rusage comes from an in-process wrapper\n');

  const dir = makeTempDir(opts.dir, 'imageio-nbd-bench-');
  // Children's own temporary files (imageio-nbd's private socket directory with --run) go
  // inside ours, so that a child killed on the way leaves nothing behind.
  process.env.TMPDIR = dir;
  const ctx: Context = { opts, dir, src: path.join(dir, 'source.raw'), progress: { done: 0, total: 0 } };
  const started = Date.now();
  const host = describeHost();
  try {
    // Jobs are listed before the image exists; the image is made only if a job needs it.
    const sizeRows = (): Job[] => [...uploadJobs(ctx), ...hintJobs(ctx), ...downloadJobs(ctx), ...httpsJobs(ctx)];
    const jobs = [...sizeRows(), ...backpressureJobs(ctx), ...bridgeJobs(ctx)].filter((j) => opts.only.test(j.label));
    jobs.push(...startupJobs(ctx));
    if (jobs.length === 0) {
      process.stderr.write(`bench: no row matches --only ${opts.only.source}\n`);
      return 2;
    }
    ctx.progress.total = jobs.length;
    if (jobs.some((j) => ['upload', 'hint', 'download', 'https-upload', 'https-download'].includes(j.section))) {
      process.stderr.write(`bench: writing the ${formatMiB(opts.size)} MiB source image\n`);
      ctx.layout = writeSparseImage(ctx.src, { size: opts.size, dataFraction: opts.fraction, seed: 42 });
    }
    const l = ctx.layout;
    const machine =
      `${String(host.imageioNbd ?? 'imageio-nbd')} (${String(host.commit ?? '?')}), Node ${process.version}, ${os.cpus().length} cores, ` +
      `load ${os.loadavg().map((x) => x.toFixed(2)).join(' ')} at start`;
    const notes = [
      ...(l
        ? [`image: ${formatMiB(l.size)} MiB virtual, ${formatMiB(l.dataBytes)} MiB random data, ${formatMiB(l.zeroBytes)} MiB written zeroes, ${l.extents} extents (seed 42); uploads write it into an empty target, downloads read it back`]
        : []),
      `cpu s and peak RSS are imageio-nbd's own, spawn to exit, from ${GNU_TIME ? 'GNU time (wait4)' : 'process.resourceUsage() in a wrapper'}; ` +
        '"(stats X)" when the `process:` line of its --stats disagrees; cpu s/GiB and MiB/s are per GiB/MiB of data moved',
      'imageio-nbd runs as `-f -U SOCK -P PIDFILE`, the client against it, then SIGTERM (as virt-v2v does); wall s is spawn to exit',
    ];
    process.stderr.write(`bench: ${machine}; ${jobs.length} jobs\n`);

    const rows: Row[] = [];
    for (const job of jobs) {
      const row = await job.run();
      if (job.section === 'startup') rows.push(...startupRows.splice(0));
      else rows.push(row);
      ctx.progress.done++;
    }
    evaluate(rows);
    const minutes = (Date.now() - started) / 60000;
    process.stdout.write(`${machine}; took ${minutes.toFixed(1)} min.\n\n${notes.map((n) => `- ${n}`).join('\n')}\n\n${sectionText(ctx, rows)}`);

    if (opts.json) {
      const json = {
        format: 'imageio-nbd-bench/1',
        date: new Date(started).toISOString(),
        minutes: +minutes.toFixed(2),
        host: { ...host, loadavgEnd: os.loadavg().map((x) => +x.toFixed(2)) },
        options: { ...opts, only: opts.only.source },
        image: ctx.layout,
        targets: TARGET,
        summary: targetLines(rows),
        rows: rows.map((r) => ({ ...r, medians: r.runs.length ? summary(r) : undefined })),
      };
      fs.writeFileSync(opts.json, JSON.stringify(json, null, 2) + '\n');
      process.stderr.write(`bench: wrote ${opts.json}\n`);
    }
    return rows.some((r) => r.runs.some((x) => !x.ok)) ? 1 : 0;
  } finally {
    removeTempDir(dir);
  }
}

runBench(main);
