/**
 * One measured imageio-nbd run: imageio-nbd serves an export on a unix socket (the way
 * virt-v2v runs nbdkit: --foreground --unix S --pidfile F), the client runs against it as a
 * separate process, then imageio-nbd gets SIGTERM, flushes and exits. imageio-nbd runs
 * under GNU time, so its CPU seconds and peak RSS come from the kernel (wait4) and cover
 * start-up to exit; the `process:` line that --stats=FILE writes is read too. The client is
 * not a child of imageio-nbd (as it would be with --run), so its CPU is not counted.
 */
import { type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CLI, parseStats, readRusage, spawnTracked, withRusage, type ParsedStats, type Rusage } from './lib';

export interface NbdRun {
  ok: boolean;
  /** Why not ok (start failure, exit status, timeout). */
  error?: string;
  /** Spawn of imageio-nbd to its exit (start-up, the client's copy, flush and shutdown). */
  wallSeconds: number;
  /** Spawn of imageio-nbd to its pidfile (listening). */
  listenSeconds?: number;
  clientSeconds?: number;
  clientStatus?: number;
  nbdStatus?: number;
  rusage?: Rusage;
  stats: ParsedStats;
  statsText: string;
  clientStdout: string;
  clientStderr: string;
  nbdStderr: string;
}

export interface NbdRunOptions {
  dir: string;
  /** The export: an imageio URL, memory:SIZE, file:///... */
  url: string;
  /** imageio-nbd options besides -f -U -P --stats. */
  nbdArgs: string[];
  /** Shell command; gets $uri $nbd $unixsocket plus `env`. */
  client: string;
  env?: NodeJS.ProcessEnv;
  /** Bound on the whole run (default 30 min). */
  timeoutMs?: number;
}

function collect(child: ChildProcess, which: 'stdout' | 'stderr', max = 200000): () => string {
  let text = '';
  child[which]?.on('data', (d: Buffer) => {
    text += d.toString();
    if (text.length > max) text = text.slice(-max / 2);
  });
  return () => text;
}

function exited(child: ChildProcess): Promise<number> {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve(child.exitCode);
    if (child.signalCode !== null) return resolve(128);
    child.once('close', (code, signal) => resolve(code ?? (signal ? 128 : 1)));
  });
}

/** Resolves with the pid in `pidfile` once it appears (atomic rename), or undefined if `child` exits first. */
export function waitForPidfile(pidfile: string, child: ChildProcess, timeoutMs: number): Promise<number | undefined> {
  return new Promise((resolve) => {
    let done = false;
    const check = () => {
      if (done) return;
      let text: string;
      try {
        text = fs.readFileSync(pidfile, 'utf8');
      } catch {
        return;
      }
      const pid = Number(text.trim());
      if (pid > 0) finish(pid);
    };
    const watcher = fs.watch(path.dirname(pidfile), (_ev, name) => {
      if (name === null || name === path.basename(pidfile)) check();
    });
    const poll = setInterval(check, 50);
    const timer = setTimeout(() => finish(undefined), timeoutMs);
    const onExit = () => finish(undefined);
    child.once('close', onExit);
    function finish(pid: number | undefined) {
      if (done) return;
      done = true;
      watcher.close();
      clearInterval(poll);
      clearTimeout(timer);
      child.off('close', onExit);
      resolve(pid);
    }
    check();
  });
}

export async function runThroughImageioNbd(o: NbdRunOptions): Promise<NbdRun> {
  const sock = path.join(o.dir, 'nbd.sock');
  const pidfile = path.join(o.dir, 'nbd.pid');
  const statsFile = path.join(o.dir, 'nbd-stats.txt');
  const timeFile = path.join(o.dir, 'nbd-rusage.txt');
  for (const f of [sock, pidfile, statsFile, timeFile]) fs.rmSync(f, { force: true });
  const timeoutMs = o.timeoutMs ?? 30 * 60 * 1000;

  const argv = withRusage([process.execPath, CLI, '-f', '-U', sock, '-P', pidfile, `--stats=${statsFile}`, ...o.nbdArgs, o.url], timeFile);
  const start = process.hrtime.bigint();
  const since = () => Number(process.hrtime.bigint() - start) / 1e9;
  const nbd = spawnTracked(argv[0], argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  const nbdStderr = collect(nbd, 'stderr');
  const nbdExit = exited(nbd);
  const run: NbdRun = { ok: false, wallSeconds: 0, stats: { http: {}, nbd: {} }, statsText: '', clientStdout: '', clientStderr: '', nbdStderr: '' };

  const pid = await waitForPidfile(pidfile, nbd, 60000);
  if (pid === undefined) {
    if (nbd.exitCode === null) nbd.kill('SIGKILL');
    run.nbdStatus = await nbdExit;
    run.wallSeconds = since();
    run.error = `imageio-nbd did not start listening (exit ${run.nbdStatus})`;
    run.nbdStderr = nbdStderr();
    return run;
  }
  run.listenSeconds = since();

  const uri = `nbd+unix:///?socket=${sock}`;
  const clientStart = process.hrtime.bigint();
  const client = spawnTracked('/bin/sh', ['-c', o.client], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...o.env, uri, nbd: uri, unixsocket: sock },
  });
  const clientOut = collect(client, 'stdout');
  const clientErr = collect(client, 'stderr');
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      process.kill(-client.pid!, 'SIGKILL');
    } catch {
      /* gone */
    }
  }, timeoutMs);
  run.clientStatus = await exited(client);
  run.clientSeconds = Number(process.hrtime.bigint() - clientStart) / 1e9;
  clearTimeout(timer);

  // Like virt-v2v: SIGTERM once the copy is done; imageio-nbd flushes and exits.
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    /* exited already */
  }
  const killTimer = setTimeout(() => {
    try {
      process.kill(-nbd.pid!, 'SIGKILL');
    } catch {
      /* gone */
    }
  }, 120000);
  run.nbdStatus = await nbdExit;
  clearTimeout(killTimer);
  run.wallSeconds = since();

  run.rusage = readRusage(timeFile);
  run.statsText = fs.existsSync(statsFile) ? fs.readFileSync(statsFile, 'utf8') : '';
  run.stats = parseStats(run.statsText);
  run.clientStdout = clientOut();
  run.clientStderr = clientErr();
  run.nbdStderr = nbdStderr();
  if (timedOut) run.error = `client timed out after ${timeoutMs / 1000} s`;
  else if (run.clientStatus !== 0) run.error = `client exited with ${run.clientStatus}`;
  else if (run.nbdStatus !== 0) run.error = `imageio-nbd exited with ${run.nbdStatus}`;
  run.ok = run.error === undefined;
  return run;
}

export interface StartupSample {
  ok: boolean;
  /** Spawn to pidfile (listen mode) or spawn to exit (--run true). */
  seconds: number;
  rusage?: Rusage;
  /** imageio-nbd's exit status. */
  exitStatus?: number;
  error?: string;
}

/** Spawn to exit of `imageio-nbd URL --run true` (start-up, connect to the export, shutdown). */
export async function startupRunTrue(dir: string, url: string): Promise<StartupSample> {
  const timeFile = path.join(dir, 'startup-rusage.txt');
  fs.rmSync(timeFile, { force: true });
  const argv = withRusage([process.execPath, CLI, '--run', 'true', url], timeFile);
  const start = process.hrtime.bigint();
  const child = spawnTracked(argv[0], argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  const err = collect(child, 'stderr');
  const status = await exited(child);
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  return { ok: status === 0, seconds, rusage: readRusage(timeFile), exitStatus: status, error: status === 0 ? undefined : `exit ${status}: ${err().trim().split('\n')[0]}` };
}

/** Spawn of `imageio-nbd -f -U SOCK -P PIDFILE URL` to its pidfile; then SIGTERM. */
export async function startupPidfile(dir: string, url: string): Promise<StartupSample> {
  const sock = path.join(dir, 'startup.sock');
  const pidfile = path.join(dir, 'startup.pid');
  const timeFile = path.join(dir, 'startup-rusage.txt');
  for (const f of [sock, pidfile, timeFile]) fs.rmSync(f, { force: true });
  const argv = withRusage([process.execPath, CLI, '-f', '-U', sock, '-P', pidfile, url], timeFile);
  const start = process.hrtime.bigint();
  const child = spawnTracked(argv[0], argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  const err = collect(child, 'stderr');
  const done = exited(child);
  const pid = await waitForPidfile(pidfile, child, 30000);
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  if (pid !== undefined) {
    // Not at once: imageio-nbd writes its pidfile before it handles SIGTERM, and a SIGTERM in
    // between kills it with status 143 (seen on a loaded machine).
    await new Promise((r) => setTimeout(r, SIGTERM_DELAY_MS));
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      /* gone */
    }
  } else if (child.exitCode === null) {
    child.kill('SIGKILL');
  }
  const status = await done;
  // Listening was reached when the pidfile appeared; the exit status is reported apart.
  return {
    ok: pid !== undefined,
    seconds,
    rusage: readRusage(timeFile),
    exitStatus: status,
    error: pid !== undefined ? undefined : `no pidfile (exit ${status}): ${err().trim().split('\n')[0]}`,
  };
}

/** How long the start-up measure waits after the pidfile before SIGTERM. */
export const SIGTERM_DELAY_MS = 200;
