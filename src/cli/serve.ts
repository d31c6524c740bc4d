/**
 * One run of the main command: open the export (failing before anything listens), serve it,
 * and shut down so that no acknowledged data is lost silently: on SIGINT/SIGTERM/SIGQUIT,
 * --exit-with-parent, the end of a --run command or of the -s client, stop accepting, finish
 * requests in flight, send and flush buffered data, close every HTTP connection, print stats,
 * and exit non-zero if any data could not be flushed.
 *
 * Interrupted means failed: a signal during --run is passed to the command's process group
 * (its own, so `sh -c`'s children get it too), the command is waited for (killed after a
 * grace period), and the exit status is the command's failure or 128+N, as nbdkit reports a
 * command killed by a signal. A second signal exits at once, non-zero.
 *
 * What a person sees at the default level: a failure to start is one line naming the cause
 * and what to do; a failure while serving is one summary line at exit (root cause, how much
 * was not confirmed, whether the transfer is complete). The messages of the layers below
 * (each retry, each failed request, each lost connection) are shown with -v.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { PayloadPool } from '../core/payload-pool';
import type { RunConfig } from './parse';
import { ConfigError, describeError, ImageioNbdError } from '../core/errors';
import { describeRoot, findHttpError } from '../layers/failure-journal';
import { createLogger, emitRecord, type Logger } from '../core/log';
import { openExport, type ExportStack } from '../export/open-export';
import { NbdServer } from '../nbd/nbd-server';
import { formatSize } from '../core/size';
import { formatHttpStats, memoryLine, statsRecords } from './stats-output';
import { notifyDaemonReady } from './daemonize';
import { ProgressReporter, ProgressTracker } from './progress';
import { processSignals, signalStatus, type SignalHandler, type SignalSource } from './signals';

/** How long a stopped --run command may take to exit before its process group is killed. */
const RUN_STOP_GRACE_MS = 10_000;

/** Marks the logger handed to the export stack (inherited by its children). */
const STACK_LOGGER = Symbol('imageio-nbd stack logger');

/** Observers of one serve() run (engine mode finalizes or cancels the transfer from them). */
export interface ServeHooks {
  /** Serving started; `stop` ends the --run command (SIGTERM) and shuts down as a signal would, exiting with `status`. */
  onStart?(stop: (reason: string, status: number) => void): void;
  /** The --run command exited with this status. */
  onRunExit?(status: number): void;
  /** Shutdown finished: why, and whether written data could not be flushed. */
  onShutdown?(reason: string, dataLost: boolean): void;
}

/** Listen errors as a person reads them: what could not be done, why, what to do. */
function listenFailure(err: NodeJS.ErrnoException, where: { unix: string } | { port: number; host: string }): ConfigError {
  if ('unix' in where) {
    const dir = path.dirname(path.resolve(where.unix));
    if (err.code === 'EACCES') return new ConfigError(`cannot listen on ${where.unix}: no permission to create a socket in ${dir}`);
    return new ConfigError(`cannot listen on ${where.unix}: ${err.code ?? describeError(err)}`);
  }
  const addr = `${where.host.includes(':') ? `[${where.host}]` : where.host}:${where.port}`;
  switch (err.code) {
    case 'EADDRINUSE':
      return new ConfigError(`cannot listen on ${addr}: the address is in use (another nbdkit or imageio-nbd?): choose another port with -p, or stop the other server`);
    case 'EADDRNOTAVAIL':
      return new ConfigError(`cannot listen on ${addr}: ${where.host} is not an address of this machine: give -i one of its addresses, or leave -i out for 127.0.0.1`);
    case 'EACCES':
      return new ConfigError(`cannot listen on ${addr}: permission denied (ports below 1024 need root): choose a port above 1023 with -p`);
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return new ConfigError(`cannot listen on ${addr}: no such host name ${where.host}: give -i an IP address`);
    case 'EAFNOSUPPORT':
      return new ConfigError(`cannot listen on ${addr}: this machine has no ${where.host.includes(':') ? 'IPv6' : 'IPv4'}: use ${where.host.includes(':') ? '-4' : '-6'} or another -i`);
    default:
      return new ConfigError(`cannot listen on ${addr}: ${describeError(err)}`);
  }
}

/** What to do about a failure to reach imageio at start, by error code. */
const START_HINTS: Record<string, string> = {
  ECONNREFUSED: 'nothing listens there: check the URL\'s host and port, and that imageio runs',
  ENOTFOUND: 'no such host: check the URL',
  EAI_AGAIN: 'the host name could not be resolved now: check the URL and DNS',
  UND_ERR_CONNECT_TIMEOUT: 'the host did not accept a connection: check the URL and any firewall (see --connect-timeout)',
  ERR_CONNECT_TIMEOUT: 'the host did not accept a connection: check the URL and any firewall (see --connect-timeout)',
  UND_ERR_HEADERS_TIMEOUT: 'the server accepted the connection but did not answer: is it imageio? (see --request-timeout)',
  ERR_TIMEOUT: 'the server accepted the connection but did not answer: is it imageio? (see --request-timeout)',
  ERR_CONNECT: 'the host did not accept a connection: check the URL (see --connect-timeout)',
  EHOSTUNREACH: 'the host is unreachable from here',
};

/** A failure to start as one line: the cause, and what to do when we know. */
function startMessage(err: unknown, url: string): string {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  if (url.startsWith('file:') && (code === 'ENOENT' || code === 'EACCES' || code === 'EISDIR')) {
    const file = (err as NodeJS.ErrnoException).path ?? url;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : 'a directory, not a disk image';
    return `cannot open ${file}: ${why}; give an imageio transfer URL (https://HOST:54322/images/TICKET), a disk image or memory:SIZE`;
  }
  const h = err instanceof ConfigError ? undefined : findHttpError(err);
  if (!h) return err instanceof ImageioNbdError ? err.message : describeError(err);
  const hint = h.failure.code ? START_HINTS[h.failure.code] : undefined;
  return `cannot open the transfer: ${describeRoot(h)}${hint ? `: ${hint}` : ''}`;
}

function nbdUri(exportName: string, where: { unix?: string; port?: number; host?: string }): string {
  const name = encodeURIComponent(exportName);
  if (where.unix) return `nbd+unix:///${name}?socket=${where.unix}`;
  const host = where.host && where.host.includes(':') ? `[${where.host}]` : (where.host ?? '127.0.0.1');
  return `nbd://${host}:${where.port}/${name}`;
}

/** One run of the command: from opening the export to the exit status. */
class ServeSession {
  private readonly logger: Logger;
  /** 'opening' until the export is open, then 'serving'. */
  private phase: 'opening' | 'serving' = 'opening';
  private stack?: ExportStack;
  /** Warnings and errors of the layers below, held back at the default level. */
  private held = 0;
  private progress?: ProgressReporter;
  /** What the export has done, fed from below write coalescing (--progress only). */
  private readonly tracker?: ProgressTracker;
  private statsFd?: number;

  constructor(
    private readonly config: RunConfig,
    private readonly hooks: ServeHooks = {},
    private readonly signals: SignalSource = processSignals(),
  ) {
    this.logger = createLogger({
      verbose: config.verbose,
      format: config.logFormat,
      filter: (level, args, logger) => this.filterLog(level, args, logger),
    });
    if (config.progress) this.tracker = new ProgressTracker();
  }

  /** The default level shows the command's own lines; the stack's warnings and errors are summarized. */
  private filterLog(level: number, args: unknown[], logger: Logger): boolean {
    const fields = typeof args[0] === 'object' ? args[0] : undefined;
    const fromStack = (logger as unknown as Record<symbol, unknown>)[STACK_LOGGER] === true;
    // The server's "backend request failed": one per failed NBD request, already in the journal.
    const failedRequest = !!fields && typeof (fields as { errno?: unknown }).errno === 'number' && 'cmd' in (fields as object);
    if (this.config.verbose > 0 || level < 40 || (!fromStack && !failedRequest)) {
      this.progress?.breakLine();
      return true;
    }
    // While opening, what goes wrong is the start failure itself, or restated by the command.
    if (this.phase === 'serving') this.held++;
    return false;
  }

  /** A line of the command's own at the default level (JSON with --log-format json). */
  private say(level: 'warn' | 'error', text: string): void {
    this.progress?.breakLine();
    if (this.config.logFormat === 'json') this.logger[level === 'warn' ? 'warn' : 'error']({ summary: true }, text);
    else process.stderr.write(`imageio-nbd: ${text}\n`);
  }

  /** Reports a failure to start as one clear line (a JSON line with --log-format json) and returns 1. */
  private startFailure(err: unknown): number {
    const msg = startMessage(err, this.config.url);
    this.logger.debug({ err: describeError(err) }, 'start failed');
    if (this.config.logFormat === 'json') this.logger.fatal(`cannot start: ${msg}`);
    else process.stderr.write(`imageio-nbd: ${msg}\n`);
    return 1;
  }

  /** --stats=FILE must be writable: found out now, not after the whole copy. */
  private openStatsFile(): void {
    const dest = this.config.stats;
    if (!dest) return;
    try {
      this.statsFd = fs.openSync(dest, 'w');
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      const why = e.code === 'ENOENT' ? `directory ${path.dirname(path.resolve(dest))} does not exist` : e.code === 'EACCES' ? 'permission denied' : describeError(err);
      throw new ConfigError(`cannot write --stats file ${dest}: ${why}`);
    }
  }

  /** Opens the export, telling the user when the server keeps them waiting. */
  private async open(): Promise<ExportStack> {
    const c = this.config;
    const stackLogger = this.logger.child({});
    (stackLogger as unknown as Record<symbol, unknown>)[STACK_LOGGER] = true;
    let host = c.url;
    try {
      host = new URL(c.url).host || c.url;
    } catch {
      /* not a URL: a file or memory */
    }
    const started = Date.now();
    let told = false;
    const tries = `each try waits up to ${c.requestTimeoutMs / 1000} s, ${c.retries} ${c.retries === 1 ? 'retry' : 'retries'}`;
    const onWaiting = (what: string) => {
      if (told) return;
      told = true;
      this.say('warn', `waiting: ${what}; still trying (${tries})`);
    };
    // A server that accepts and never answers: say so, then keep saying it while retrying.
    let waitTimer: NodeJS.Timeout | undefined;
    const remind = () => {
      const secs = Math.round((Date.now() - started) / 1000);
      if (!told) onWaiting(`no answer from ${host} yet after ${secs} s`);
      else this.say('warn', `still waiting for ${host} after ${secs} s; retrying (${tries})`);
      waitTimer = setTimeout(remind, Math.max(5000, c.requestTimeoutMs));
    };
    // The probe says it first when it is the one waiting (after 5 s of silence on its connection).
    waitTimer = setTimeout(remind, 6000);
    // One pool per process, bounded by --max-memory: every payload buffer of the stack and the server.
    const pool = new PayloadPool({ maxLiveBytes: c.maxMemory });
    try {
      return await openExport({ ...c, pool, onWaiting, progress: this.tracker }, stackLogger);
    } finally {
      clearTimeout(waitTimer);
    }
  }

  async serve(): Promise<number> {
    const c = this.config;
    for (const what of c.ignored) this.logger.debug(`ignoring ${what} (nbdkit compatibility)`);
    let stack: ExportStack;
    try {
      this.openStatsFile();
      stack = await this.open();
    } catch (err) {
      return this.startFailure(err);
    }
    this.stack = stack;
    this.phase = 'serving';
    if (stack.imageio && !stack.imageio.serverInfo().writable && !c.readonly) {
      // Otherwise a writing client says only "Permission denied".
      this.say('warn', 'the transfer is a download ticket (imageio allows no writes): serving it read-only; use -r/--readonly to say so');
    }
    if (stack.imageio?.serverInfo().legacy) {
      this.say('warn', 'imageio OPTIONS gave no features (an old server): using one connection, zeroes sent as data, no flush');
    }
    // The imageio backend's "ready" line has the size already.
    this.logger.info(stack.imageio ? `serving ${stack.describe}` : `serving ${stack.describe}, ${formatSize(stack.top.size())}`);

    const server = new NbdServer({
      exports: [
        {
          name: c.exportName,
          description: stack.describe,
          backend: stack.top,
          readonly: c.readonly,
          preferredBlockSize: stack.preferredBlockSize,
        },
      ],
      logger: this.logger,
      payloadPool: stack.pool,
      maxInFlightPerConnection: c.threads,
    });
    // Listen errors are reported by us, once, not also as a "server error" log line.
    server.on('error', (err: unknown) => this.logger.debug({ err: describeError(err) }, 'server error'));

    let privateDir: string | undefined;
    let where: { unix?: string; port?: number; host?: string } = {};
    try {
      if ('stdio' in c.listen) {
        server.serveSocket(await stdioSocket());
      } else {
        let addr: { unix: string } | { port: number; host: string };
        if ('privateUnix' in c.listen) {
          privateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'imageio-nbd-'));
          addr = { unix: path.join(privateDir, 'nbd.sock') };
        } else if ('unix' in c.listen) {
          addr = { unix: c.listen.unix };
          await checkUnixSocketPath(c.listen.unix);
        } else {
          addr = { port: c.listen.port, host: c.listen.host };
        }
        try {
          where = await server.listen(addr);
        } catch (err) {
          throw listenFailure(err as NodeJS.ErrnoException, addr);
        }
      }
    } catch (err) {
      await stack.top.close().catch(() => undefined);
      if (privateDir) fs.rmSync(privateDir, { recursive: true, force: true });
      return this.startFailure(err);
    }
    const uri = 'stdio' in c.listen ? '' : nbdUri(c.exportName, where);
    if (uri) this.logger.info(`listening on ${uri}`);
    // A signal may come as soon as the pidfile exists (virt-v2v and scripts wait for it, then
    // may stop us at once): hold it until the shutdown path below is ready, never die of it.
    let earlySignal: NodeJS.Signals | undefined;
    let onSignal: SignalHandler = (sig) => {
      earlySignal ??= sig;
    };
    const unsubscribe = this.signals.subscribe((sig, n) => onSignal(sig, n));
    if (c.pidfile) {
      try {
        // Atomically: whoever polls for the file (virt-v2v) never reads it half written.
        const tmp = `${c.pidfile}.${process.pid}.tmp`;
        fs.writeFileSync(tmp, `${process.pid}\n`);
        fs.renameSync(tmp, c.pidfile);
      } catch (err) {
        unsubscribe();
        await server.close();
        await stack.top.close().catch(() => undefined);
        return this.startFailure(new ConfigError(`cannot write pidfile ${c.pidfile}: ${(err as NodeJS.ErrnoException).code ?? describeError(err)}`));
      }
    }
    notifyDaemonReady();

    let exitCode = 0;
    const flushIfIdle = async () => {
      // The last client left: send buffered data and make it durable now rather than at exit,
      // so a failure is reported while someone may still be watching. Only imageio buffers
      // anything: a file export's writes are in the page cache already, and syncing the whole
      // image after every client (nbdkit does not) cost seconds.
      if (server.connectionCount > 0 || !stack.imageio || !stack.top.capabilities().canFlush || c.readonly) return;
      try {
        await stack.top.flush();
      } catch (err) {
        this.logger.debug({ err: describeError(err) }, 'flush after the last client disconnected failed');
      }
    };

    const tracker = this.tracker;
    if (c.progress && tracker) {
      this.progress = new ProgressReporter({
        intervalMs: c.progress * 1000,
        size: stack.top.size(),
        counters: () => tracker.snapshot(),
        format: c.logFormat,
        tty: c.logFormat === 'pretty' && process.stderr.isTTY === true,
      });
      this.progress.start();
    }

    let shuttingDown: Promise<number> | undefined;
    /** The stop signal that ended a --run command early, if one did. */
    let interruptedBy: NodeJS.Signals | undefined;
    const shutdown = (reason: string, status: number): Promise<number> => {
      shuttingDown ??= (async () => {
        this.logger.info(`shutting down: ${reason}`);
        await server.close();
        let closeFailed = false;
        try {
          await stack.top.close();
        } catch (err) {
          closeFailed = true;
          stack.journal.note('close', err);
          // Part of the summary below; the message itself is for -v.
          this.logger.debug({ err: describeError(err) }, 'could not send and flush all written data before exit');
        }
        if (privateDir) fs.rmSync(privateDir, { recursive: true, force: true });
        const lost = closeFailed || stack.journal.writesFailed;
        this.progress?.finish(
          lost ? { done: false, why: 'written data not confirmed and flushed' }
          : status !== 0 ? { done: false, why: c.run ? `the --run command ended with status ${status}` : `exit status ${status}` }
          : { done: true },
        );
        if (c.stats !== undefined) this.writeStats(stack);
        this.hooks.onShutdown?.(reason, closeFailed || stack.journal.writesFailed);
        const summary = stack.journal.summarize();
        if (summary) this.say('error', summary);
        // An interrupted copy says so in one line (engine mode, which observes through hooks,
        // says it itself, with what happened to the transfer).
        else if (interruptedBy && status !== 0 && !this.hooks.onShutdown) {
          this.say('error', `interrupted by ${interruptedBy}: the --run command was stopped, the copy is NOT complete (exit status ${status})`);
        } else if (this.held > 0) this.say('warn', `${this.held} warning${this.held === 1 ? '' : 's'} from the layers below; run with -v to see them`);
        if (closeFailed || stack.journal.writesFailed) return status === 0 ? 1 : status;
        return status;
      })();
      return shuttingDown;
    };

    return new Promise<number>((resolve) => {
      const finish = (reason: string, status: number) =>
        void shutdown(reason, status).then((code) => {
          unsubscribe();
          resolve(code);
        });
      server.on('disconnect', () => {
        // nbdkit -s serves one client and exits when it leaves.
        if ('stdio' in c.listen) finish('the client on stdin/stdout disconnected', exitCode);
        else void flushIfIdle();
      });

      let runChild: ReturnType<typeof spawn> | undefined;
      const running = () => runChild !== undefined && runChild.exitCode === null && runChild.signalCode === null;
      /** Signals the --run command's process group: `sh -c`'s children are stopped too. */
      const signalRun = (sig: NodeJS.Signals) => {
        if (!running()) return;
        try {
          process.kill(-runChild!.pid!, sig);
        } catch {
          runChild!.kill(sig);
        }
      };
      /** Resolves with the --run command's exit status (at once when there is none running). */
      let runExited: Promise<number> = Promise.resolve(exitCode);
      /** Set once a stop was asked for: the command's exit then no longer decides the status alone. */
      let stopping = false;
      /**
       * Stops the --run command with `sig`, waits for it (SIGKILL to its group after
       * RUN_STOP_GRACE_MS), then shuts down with the status `status(commandStatus)` says.
       */
      const stopRun = (reason: string, sig: NodeJS.Signals, status: (commandStatus: number) => number) => {
        if (stopping) return;
        stopping = true;
        if (!running()) return finish(reason, status(exitCode));
        signalRun(sig);
        const grace = setTimeout(() => {
          this.say('warn', `the --run command did not exit ${RUN_STOP_GRACE_MS / 1000} s after ${sig}: killing it`);
          signalRun('SIGKILL');
        }, RUN_STOP_GRACE_MS);
        void runExited.then((code) => {
          clearTimeout(grace);
          finish(reason, status(code));
        });
      };

      onSignal = (sig, n) => {
        if (n > 1) {
          // At once: nothing is flushed, the --run command is killed, the private socket goes.
          signalRun('SIGKILL');
          if (privateDir) fs.rmSync(privateDir, { recursive: true, force: true });
          this.progress?.breakLine();
          process.stderr.write(`imageio-nbd: second ${sig}, exiting without flushing\n`);
          process.exit(signalStatus(sig));
        }
        // Interrupted means failed: the command's own failure, or 128+N as a shell reports it.
        // Without --run, a signal is the normal way to stop a server (exit 0 once flushed).
        if (c.run) {
          interruptedBy ??= sig;
          stopRun(`received ${sig}`, sig, (code) => (code !== 0 ? code : signalStatus(sig)));
        }
        else finish(`received ${sig}`, exitCode);
      };
      if (earlySignal) onSignal(earlySignal, 1);
      // A stop from a hook also ends the --run command: it has nothing left to work on.
      this.hooks.onStart?.((reason, status) => stopRun(reason, 'SIGTERM', () => status));

      if (c.exitWithParent) {
        const parent = process.ppid;
        const t = setInterval(() => {
          if (process.ppid !== parent) stopRun('parent process exited', 'SIGTERM', (code) => (c.run ? code || 1 : code));
        }, 500);
        t.unref();
      }

      if (c.run && !stopping) {
        const env = {
          ...process.env,
          uri: uri,
          nbd: uri,
          exportname: c.exportName,
          unixsocket: where.unix ?? '',
          port: where.port !== undefined ? String(where.port) : '',
        };
        // Its own process group, so that a stop reaches the commands `sh -c` starts.
        const child = (runChild = spawn('/bin/sh', ['-c', c.run], { stdio: 'inherit', env, detached: true }));
        runExited = new Promise<number>((resolveRun) => {
          child.on('error', (err) => {
            this.say('error', `--run command failed to start: ${err.message}`);
            resolveRun(1);
            if (!stopping) finish('--run command failed', 1);
          });
          child.on('exit', (code, signal) => {
            exitCode = code ?? (signal ? signalStatus(signal) : 1);
            resolveRun(exitCode);
            this.hooks.onRunExit?.(exitCode);
            if (!stopping) finish(`--run command exited with status ${exitCode}`, exitCode);
          });
        });
      }
    });
  }

  private writeStats(stack: ExportStack): void {
    const ru = process.resourceUsage();
    const processLine = `process: ${(ru.userCPUTime / 1e6).toFixed(2)} s user, ${(ru.systemCPUTime / 1e6).toFixed(2)} s sys, peak RSS ${(ru.maxRSS / 1024).toFixed(1)} MiB`;
    let text: string;
    if (this.config.logFormat === 'json') {
      const lines: string[] = [];
      const collect = (s: string) => lines.push(s);
      for (const r of statsRecords(stack, processLine, ru)) emitRecord('json', r.text, r.fields, collect);
      text = lines.join('');
    } else {
      text = stack.stats.format() + '\n' + processLine + '\n' + memoryLine(stack.pool) + '\n';
      if (stack.imageio) text += formatHttpStats(stack.imageio.httpStats());
      if (stack.coalesce) text += `coalesce: ${JSON.stringify(stack.coalesce.stats())}\n`;
      if (stack.readahead) text += `readahead: ${JSON.stringify(stack.readahead.stats())}\n`;
    }
    try {
      if (this.statsFd !== undefined) {
        fs.writeSync(this.statsFd, text);
        fs.closeSync(this.statsFd);
      } else {
        this.progress?.breakLine();
        process.stderr.write(text);
      }
    } catch (err) {
      this.say('error', `cannot write stats to ${this.config.stats}: ${describeError(err)}`);
    }
  }
}

/** Before listening on a unix socket: a clear reason when the path cannot work. */
async function checkUnixSocketPath(sock: string): Promise<void> {
  const dir = path.dirname(path.resolve(sock));
  if (!fs.existsSync(dir)) throw new ConfigError(`cannot listen on ${sock}: directory ${dir} does not exist`);
  if (!fs.statSync(dir).isDirectory()) throw new ConfigError(`cannot listen on ${sock}: ${dir} is not a directory`);
  if (!fs.existsSync(sock)) return;
  const live = await new Promise<boolean>((resolve) => {
    const s = net.connect(sock);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
  if (live) throw new ConfigError(`socket ${sock} is in use by another server`);
  if (!fs.lstatSync(sock).isSocket()) throw new ConfigError(`${sock} exists and is not a socket`);
  fs.unlinkSync(sock); // a stale socket left by a server that died
}

/**
 * nbdkit -s: the client is on stdin/stdout. When both are the same socket (libnbd's
 * connect_command, a socketpair), it is used directly; otherwise (two pipes) the two are
 * joined through a private unix socket, so the server always gets a real net.Socket.
 */
async function stdioSocket(): Promise<net.Socket> {
  const in0 = fs.fstatSync(0);
  const out1 = fs.fstatSync(1);
  if (in0.isSocket() && in0.ino === out1.ino && in0.dev === out1.dev) {
    return new net.Socket({ fd: 0, readable: true, writable: true, allowHalfOpen: true });
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'imageio-nbd-stdio-'));
  const sockPath = path.join(dir, 's');
  const bridge = net.createServer({ allowHalfOpen: true });
  const accepted = new Promise<net.Socket>((resolve) => bridge.once('connection', resolve));
  await new Promise<void>((resolve, reject) => {
    bridge.once('error', reject);
    bridge.listen(sockPath, resolve);
  });
  const client = net.connect(sockPath);
  const serverSide = await accepted;
  bridge.close();
  fs.rmSync(dir, { recursive: true, force: true });
  const input = new net.Socket({ fd: 0, readable: true, writable: false });
  input.pipe(client);
  const output = fs.createWriteStream('', { fd: 1 });
  client.pipe(output);
  return serverSide;
}

/** Serves one run configuration to the end; resolves with the exit status. */
export function serve(config: RunConfig, hooks?: ServeHooks, signals?: SignalSource): Promise<number> {
  return new ServeSession(config, hooks, signals).serve();
}
