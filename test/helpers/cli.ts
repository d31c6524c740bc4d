/**
 * End-to-end helpers: run the compiled command (`node bin/imageio-nbd.js`, built by
 * scripts/test.sh before jest) as a real process with a time limit, wait for its pidfile or
 * socket, and start the built-in imageio server in this process (with an optional control
 * socket so a --run script can steer it with curl) or as a separate process.
 *
 * Every process started here is remembered; killAll() (call it in afterEach) kills what is
 * still running, with its whole process group (--run children, nbdcopy, nbdsh...).
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync, promises as fsp } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { ImageioServer, type ImageioServerOptions } from '../../sim/imageio-server/imageio-server';
import { ControlServer } from '../../sim/imageio-server/control';
import { writeSparseImage, type SparseImageSummary } from '../../sim/sparse-image';
import { tmpDir, type TmpDir } from './tmp-dir';
import type { RunResult } from './run';

export const ROOT = path.resolve(__dirname, '..', '..');
export const CLI = path.join(ROOT, 'bin', 'imageio-nbd.js');
export const MiB = 2 ** 20;

export interface CliOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** SIGKILL the process group after this long; default 60000 ms. */
  timeoutMs?: number;
  /** Start the command in its own process group (default true) so killAll() reaches its children. */
  group?: boolean;
}

export interface CliProcess {
  child: ChildProcess;
  pid: number;
  readonly stdout: string;
  readonly stderr: string;
  /** Resolves when the process has exited and its output is closed. */
  exited: Promise<RunResult>;
  signal(sig: NodeJS.Signals): void;
}

const live = new Set<ChildProcess>();

/** Start `cmd args` as a tracked process, collecting its output. */
export function spawnTracked(cmd: string, args: readonly string[], opts: CliOptions = {}): CliProcess {
  const group = opts.group ?? true;
  const child = spawn(cmd, args, {
    env: opts.env ?? process.env,
    cwd: opts.cwd ?? ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: group,
  });
  live.add(child);
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout!.on('data', (c: Buffer) => out.push(c));
  child.stderr!.on('data', (c: Buffer) => err.push(c));
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    killTree(child, 'SIGKILL');
  }, opts.timeoutMs ?? 60000);
  const exited = new Promise<RunResult>((resolve, reject) => {
    child.on('error', (e) => {
      clearTimeout(timer);
      live.delete(child);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      live.delete(child);
      resolve({
        code,
        signal,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
        timedOut,
      });
    });
  });
  return {
    child,
    pid: child.pid!,
    get stdout() {
      return Buffer.concat(out).toString('utf8');
    },
    get stderr() {
      return Buffer.concat(err).toString('utf8');
    },
    exited,
    signal: (sig) => {
      if (child.exitCode === null && child.signalCode === null) child.kill(sig);
    },
  };
}

/** Start imageio-nbd with these arguments. */
export function spawnCli(args: readonly string[], opts: CliOptions = {}): CliProcess {
  return spawnTracked(process.execPath, [CLI, ...args], opts);
}

/** Run imageio-nbd to the end; never throws on a non-zero exit. */
export function runCli(args: readonly string[], opts: CliOptions = {}): Promise<RunResult> {
  return spawnCli(args, opts).exited;
}

function killTree(child: ChildProcess, sig: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, sig); // its process group, when it has one
  } catch {
    try {
      child.kill(sig);
    } catch {
      /* gone */
    }
  }
}

const extraPids = new Set<number>();

/** Remember a process that was not started here (a daemon's pid from its pidfile) for killAll(). */
export function trackPid(pid: number): void {
  extraPids.add(pid);
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Kill every process started by this module that is still running, and wait for them. */
export async function killAll(): Promise<void> {
  for (const pid of extraPids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  extraPids.clear();
  const waits: Promise<unknown>[] = [];
  for (const child of live) {
    waits.push(new Promise((r) => child.once('close', r)));
    killTree(child, 'SIGKILL');
  }
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([Promise.all(waits), new Promise((r) => (timer = setTimeout(r, 5000)))]);
  clearTimeout(timer);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Poll `pred` every 50 ms until it returns a truthy value; throws after `timeoutMs`. */
export async function waitFor<T>(pred: () => T | Promise<T>, what: string, timeoutMs = 15000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(50);
  }
}

/**
 * Wait (up to 5 s) until the imageio server has seen every connection close. A client that
 * closed its sockets before exiting is seen closed a moment later, not at once; one that
 * leaves them open would keep them for the server's idle timeout (60 s by default).
 */
export function waitAllClosed(server: { stats(): { connectionsOpen: number } }): Promise<boolean> {
  return waitFor(() => server.stats().connectionsOpen === 0, 'every imageio connection to close', 5000);
}

/** Wait until `file` exists and is not empty; returns its content. */
export function waitForFile(file: string, timeoutMs = 15000): Promise<string> {
  return waitFor(() => {
    try {
      const s = readFileSync(file, 'utf8');
      return s.length > 0 ? s : '';
    } catch {
      return '';
    }
  }, `file ${file}`, timeoutMs);
}

/** True when something accepts connections on the unix socket `p`. */
export function socketAccepts(p: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(p);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

// ---- Images --------------------------------------------------------------------------------

/** A deterministic sparse source image (see sim/sparse-image.ts). */
export function makeSource(file: string, size: number, seed = 1, dataFraction = 1 / 3): SparseImageSummary {
  return writeSparseImage(file, { size, seed, dataFraction, maxExtent: Math.min(16 * MiB, size / 4) });
}

/** An empty sparse file of `size` bytes. */
export function makeEmpty(file: string, size: number): void {
  writeFileSync(file, '');
  execFileSync('truncate', ['-s', String(size), file]);
}

/** Byte-for-byte comparison with cmp(1); returns cmp's first line of output on a difference. */
export function compareFiles(a: string, b: string): string {
  try {
    execFileSync('cmp', [a, b], { stdio: 'pipe' });
    return 'equal';
  } catch (err) {
    const e = err as { stdout?: Buffer; stderr?: Buffer };
    return `${e.stdout?.toString() ?? ''}${e.stderr?.toString() ?? ''}`.trim() || 'differ';
  }
}

// ---- The built-in imageio server -----------------------------------------------------------

export interface TestImageio {
  server: ImageioServer;
  url: string;
  /** The local service's unix socket. */
  unix?: string;
  /** The target image file. */
  image: string;
  /** Control socket (curl --unix-socket CONTROL -X POST http://x/close-idle), when asked for. */
  control?: string;
  stop(): Promise<void>;
}

export interface StartImageioOptions extends Partial<ImageioServerOptions> {
  /** Directory for the image and sockets. */
  dir: TmpDir;
  /** Image size when `image` is not given (a sparse empty file is created). */
  imageSize?: number;
  /** Serve the local service on a unix socket in `dir` (default true). */
  withUnix?: boolean;
  /** Also start a control service on a unix socket. */
  withControl?: boolean;
  /** Name for files in `dir` (default "imageio"). */
  name?: string;
}

/** Start the built-in imageio server in this process. */
export async function startImageio(opts: StartImageioOptions): Promise<TestImageio> {
  const { dir, imageSize, withUnix = true, withControl = false, name = 'imageio', ...serverOpts } = opts;
  let image = serverOpts.image;
  if (image === undefined) {
    image = dir.file(`${name}-target.raw`);
    makeEmpty(image, imageSize ?? 64 * MiB);
  }
  const unix = withUnix ? (serverOpts.unix ?? dir.file(`${name}.sock`)) : undefined;
  const server = new ImageioServer({ ...serverOpts, image, unix });
  await server.start();
  let control: ControlServer | undefined;
  if (withControl) {
    control = new ControlServer(server, dir.file(`${name}-control.sock`));
    await control.start();
  }
  return {
    server,
    url: server.url,
    unix,
    image,
    control: control?.path,
    stop: async () => {
      await control?.close().catch(() => undefined);
      await server.close().catch(() => undefined);
    },
  };
}

/**
 * Start `imageio-nbd imageio-server` as a process; resolves with its URL once it prints it
 * (it prints it once it listens). No time limit of its own: how long the server takes to open
 * its image is not the test's business; the process's own timeout still applies.
 */
export async function startImageioProcess(
  args: readonly string[],
  opts: CliOptions = {},
): Promise<{ proc: CliProcess; url: string }> {
  const proc = spawnCli(['imageio-server', ...args], opts);
  const url = await new Promise<string>((resolve, reject) => {
    const stdout = proc.child.stdout!;
    const done = () => {
      stdout.off('data', check);
      proc.child.off('close', onClose);
    };
    // Registered after spawnCli's own listener: proc.stdout already holds the chunk.
    const check = () => {
      if (!proc.stdout.includes('\n')) return;
      done();
      resolve(proc.stdout.split('\n')[0]);
    };
    const onClose = () => {
      done();
      reject(new Error(`imageio-server exited before printing its URL: ${proc.stderr}`));
    };
    stdout.on('data', check);
    proc.child.once('close', onClose);
    check();
  });
  return { proc, url };
}

// ---- TLS -----------------------------------------------------------------------------------

export interface TestPki {
  /** The CA that signed the server certificate. */
  ca: string;
  /** A CA that did not. */
  otherCa: string;
  certFile: string;
  keyFile: string;
  cert: Buffer;
  key: Buffer;
}

/** A test CA and a server certificate for 127.0.0.1/localhost, made with openssl in `dir`. */
export function makePki(dir: string): TestPki {
  const run = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  run('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=imageio-nbd test CA');
  run('req', '-x509', ...ec, '-keyout', 'other.key', '-out', 'other.pem', '-days', '2', '-subj', '/CN=other CA');
  run('req', ...ec, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=localhost');
  writeFileSync(path.join(dir, 'ext.cnf'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\n');
  run('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
    '-out', 'server.pem', '-days', '2', '-extfile', 'ext.cnf');
  const certFile = path.join(dir, 'server.pem');
  const keyFile = path.join(dir, 'server.key');
  return {
    ca: path.join(dir, 'ca.pem'),
    otherCa: path.join(dir, 'other.pem'),
    certFile,
    keyFile,
    cert: readFileSync(certFile),
    key: readFileSync(keyFile),
  };
}

// ---- Output --------------------------------------------------------------------------------

/** The --stats text, split by kind of line. */
export interface ParsedStats {
  /** nbdkit stats lines: "write: 22 ops, ..." */
  nbd: Record<string, { ops: number; line: string }>;
  /** "http PUT: 22 requests, 89.81 MiB, mean 4.08 MiB" */
  http: Record<string, { requests: number; line: string }>;
  /** The "http: N of M connections used, ..." summary line. */
  httpSummary?: string;
  process?: string;
  lines: string[];
}

export function parseStats(text: string): ParsedStats {
  const r: ParsedStats = { nbd: {}, http: {}, lines: text.split('\n').filter(Boolean) };
  for (const line of r.lines) {
    let m: RegExpExecArray | null;
    if ((m = /^(total|read|write|zero|trim|flush|extents|cache): (\d+) ops, /.exec(line))) r.nbd[m[1]] = { ops: Number(m[2]), line };
    else if ((m = /^http ([A-Za-z ]+): (\d+) requests/.exec(line))) r.http[m[1]] = { requests: Number(m[2]), line };
    else if (line.startsWith('http: ')) r.httpSummary = line;
    else if (line.startsWith('process: ')) r.process = line;
  }
  return r;
}

/** Remove a file, ignoring a missing one. */
export async function rmf(p: string): Promise<void> {
  await fsp.rm(p, { force: true });
}

export { tmpDir, type TmpDir, existsSync };

/** What an end-to-end suite gets from e2eSuite(). */
export interface E2eSuite {
  /** Per-suite temporary directory, holding the source image. */
  readonly shared: TmpDir;
  /** The suite's seeded sparse source image, made once. */
  readonly source: string;
  /** This test's temporary directory, removed after it. */
  readonly dir: TmpDir;
  /** A built-in imageio server on an empty image of the suite's size, stopped after the test. */
  imageio(opts?: Partial<StartImageioOptions>): Promise<TestImageio>;
}

/**
 * The jest hooks every end-to-end suite needs: a seeded source image per suite, a temporary
 * directory per test, and after each test every CLI process killed and every imageio server
 * stopped, so no test leaks processes or files into the next.
 */
export function e2eSuite(opts: { name: string; size: number; seed: number; imageio?: Partial<StartImageioOptions> }): E2eSuite {
  let shared: TmpDir | undefined;
  let dir: TmpDir | undefined;
  let source = '';
  const servers: TestImageio[] = [];
  beforeAll(() => {
    shared = tmpDir(`e2e-${opts.name}-`);
    source = shared.file('source.raw');
    makeSource(source, opts.size, opts.seed);
  });
  afterAll(() => shared?.cleanup());
  beforeEach(() => {
    dir = tmpDir(`${opts.name}-`);
  });
  afterEach(async () => {
    await killAll();
    while (servers.length) await servers.pop()!.stop();
    dir?.cleanup();
  });
  return {
    get shared() {
      return shared!;
    },
    get source() {
      return source;
    },
    get dir() {
      return dir!;
    },
    async imageio(o: Partial<StartImageioOptions> = {}) {
      const s = await startImageio({ dir: dir!, imageSize: opts.size, ...opts.imageio, ...o });
      servers.push(s);
      return s;
    },
  };
}

/**
 * A directory to put first on PATH with `imageio-nbd` (this checkout's command, as an install
 * would provide it) and, when asked, `nbdkit` as examples/nbdkit-shim.sh. Returns the env.
 */
export function commandEnv(dir: TmpDir, opts: { shim?: boolean; env?: NodeJS.ProcessEnv } = {}): NodeJS.ProcessEnv {
  const bin = dir.file('bin');
  execFileSync('mkdir', ['-p', bin]);
  execFileSync('ln', ['-sf', CLI, path.join(bin, 'imageio-nbd')]);
  if (opts.shim) execFileSync('ln', ['-sf', path.join(ROOT, 'examples', 'nbdkit-shim.sh'), path.join(bin, 'nbdkit')]);
  const base = opts.env ?? process.env;
  // The node running the tests (Node 24) must be the one `#!/usr/bin/env node` finds.
  return { ...base, PATH: `${bin}:${path.dirname(process.execPath)}:${base.PATH ?? ''}` };
}
