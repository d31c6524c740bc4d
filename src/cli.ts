/**
 * The imageio-nbd command: parse the command line, open the export (failing before anything
 * listens), serve it, and shut down so that no acknowledged data is lost silently:
 * on SIGINT/SIGTERM, --exit-with-parent, or the end of a --run command, stop accepting, finish
 * requests in flight, send and flush buffered data, close every HTTP connection, print stats,
 * and exit non-zero if any data could not be flushed.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs, type RunConfig } from './config';
import { ConfigError, describeError, ImageioNbdError } from './errors';
import { createLogger, type Logger } from './log';
import { openExport, type ExportStack } from './open-export';
import { NbdServer } from './server/nbd-server';
import { formatBytes } from './size';
import { formatHttpStats } from './http-stats';
import { daemonizeIfAsked, notifyDaemonReady } from './daemonize';

/** Entry point: returns the exit status. */
export async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = await parseArgs(argv);
  } catch (err) {
    process.stderr.write(`imageio-nbd: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  }
  switch (parsed.kind) {
    case 'help':
      process.stdout.write(parsed.text + '\n');
      return 0;
    case 'version':
      process.stdout.write(parsed.text + '\n');
      return 0;
    case 'imageio-server': {
      // Loaded only for this subcommand: start-up time counts in every captive copy.
      const { runImageioServerCommand } = require('./imageio-server/command') as typeof import('./imageio-server/command');
      return runImageioServerCommand(parsed.argv);
    }
    case 'engine-server': {
      const { runEngineServerCommand } = require('./engine-server/command') as typeof import('./engine-server/command');
      return runEngineServerCommand(parsed.argv);
    }
    case 'run':
      break;
  }
  const config = parsed.config;
  const detached = await daemonizeIfAsked(config.foreground, argv);
  if (detached !== undefined) return detached;
  const logger = createLogger({ verbose: config.verbose, format: config.logFormat });
  for (const what of config.ignored) logger.debug(`ignoring ${what} (nbdkit compatibility)`);
  if (config.engine) {
    // Engine mode: get the transfer from the oVirt engine, serve it, then finalize or cancel it.
    const { runEngineMode } = require('./engine/engine-mode') as typeof import('./engine/engine-mode');
    return runEngineMode(config, logger, serve);
  }
  return serve(config, logger);
}

/** Observers of one serve() run (engine mode finalizes or cancels the transfer from them). */
export interface ServeHooks {
  /** Serving started; `stop` ends the --run command (SIGTERM) and shuts down as a signal would, exiting with `status`. */
  onStart?(stop: (reason: string, status: number) => void): void;
  /** The --run command exited with this status. */
  onRunExit?(status: number): void;
  /** Shutdown finished: why, and whether written data could not be flushed. */
  onShutdown?(reason: string, dataLost: boolean): void;
}

/** Reports a failure to start as one clear line (a JSON line with --log-format json) and returns 1. */
function startFailure(logger: Logger, err: unknown, format: RunConfig['logFormat']): number {
  const msg = err instanceof ImageioNbdError ? err.message : describeError(err);
  logger.debug({ err }, 'start failed');
  if (format === 'json') logger.fatal(`cannot start: ${msg}`);
  else process.stderr.write(`imageio-nbd: ${msg}\n`);
  return 1;
}

async function listenAddress(config: RunConfig): Promise<{ addr: { unix: string } | { port: number; host: string }; privateDir?: string }> {
  const l = config.listen;
  if ('privateUnix' in l) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'imageio-nbd-'));
    return { addr: { unix: path.join(dir, 'nbd.sock') }, privateDir: dir };
  }
  if ('unix' in l) {
    if (fs.existsSync(l.unix)) {
      const live = await new Promise<boolean>((resolve) => {
        const s = net.connect(l.unix);
        s.once('connect', () => {
          s.destroy();
          resolve(true);
        });
        s.once('error', () => resolve(false));
      });
      if (live) throw new ConfigError(`socket ${l.unix} is in use by another server`);
      const st = fs.lstatSync(l.unix);
      if (!st.isSocket()) throw new ConfigError(`${l.unix} exists and is not a socket`);
      fs.unlinkSync(l.unix); // a stale socket left by a server that died
    }
    return { addr: { unix: l.unix } };
  }
  return { addr: { port: l.port, host: l.host } };
}

function nbdUri(exportName: string, where: { unix?: string; port?: number; host?: string }): string {
  const name = encodeURIComponent(exportName);
  if (where.unix) return `nbd+unix:///${name}?socket=${where.unix}`;
  const host = where.host && where.host.includes(':') ? `[${where.host}]` : (where.host ?? '127.0.0.1');
  return `nbd://${host}:${where.port}/${name}`;
}

async function serve(config: RunConfig, logger: Logger, hooks: ServeHooks = {}): Promise<number> {
  let stack: ExportStack;
  // While opening, a failure is reported once, by startFailure(): the backend's own error log
  // line for the same failure would be a second line. So its logger is quiet until the export
  // is open (unless -v), then gets the normal level for the rest of the run.
  const exportLogger = logger.child({});
  if (config.verbose === 0) exportLogger.level = 'fatal';
  try {
    stack = await openExport(config, exportLogger);
  } catch (err) {
    return startFailure(logger, err, config.logFormat);
  } finally {
    exportLogger.level = logger.level;
  }
  if (stack.imageio?.serverInfo().legacy) {
    logger.warn('imageio OPTIONS gave no features (old server): using one connection, zeroes sent as data, no flush');
  }
  logger.info(`serving ${stack.describe}, ${stack.top.size()} bytes`);

  const server = new NbdServer({
    exports: [
      {
        name: config.exportName,
        description: stack.describe,
        backend: stack.top,
        readonly: config.readonly,
        preferredBlockSize: stack.preferredBlockSize,
      },
    ],
    logger,
    maxInFlightPerConnection: config.threads,
  });

  let privateDir: string | undefined;
  let where: { unix?: string; port?: number; host?: string };
  try {
    const la = await listenAddress(config);
    privateDir = la.privateDir;
    where = await server.listen(la.addr);
  } catch (err) {
    await stack.top.close().catch(() => undefined);
    if (privateDir) fs.rmSync(privateDir, { recursive: true, force: true });
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'EADDRINUSE') return startFailure(logger, new ConfigError(`address in use: ${e.message}`), config.logFormat);
    if (e.code === 'EACCES' || e.code === 'ENOENT') return startFailure(logger, new ConfigError(`cannot listen: ${e.message}`), config.logFormat);
    return startFailure(logger, err, config.logFormat);
  }
  const uri = nbdUri(config.exportName, where);
  logger.info(`listening on ${uri}`);
  if (config.pidfile) {
    try {
      // Atomically: whoever polls for the file (virt-v2v) never reads it half written.
      const tmp = `${config.pidfile}.${process.pid}.tmp`;
      fs.writeFileSync(tmp, `${process.pid}\n`);
      fs.renameSync(tmp, config.pidfile);
    } catch (err) {
      await server.close();
      await stack.top.close().catch(() => undefined);
      return startFailure(logger, new ConfigError(`cannot write pidfile: ${(err as Error).message}`), config.logFormat);
    }
  }
  notifyDaemonReady();

  let exitCode = 0;
  let dataLost = false;
  const flushIfIdle = async () => {
    // The last client left: send buffered data and make it durable now rather than at exit,
    // so a failure is reported while someone may still be watching.
    if (server.connectionCount > 0 || !stack.top.capabilities().canFlush || config.readonly) return;
    try {
      await stack.top.flush();
    } catch (err) {
      dataLost = true;
      logger.error(`flush after the last client disconnected failed; written data may be lost: ${describeError(err)}`);
    }
  };
  server.on('disconnect', () => void flushIfIdle());

  let progressTimer: NodeJS.Timeout | undefined;
  if (config.progress) {
    let last = { at: Date.now(), bytes: 0 };
    progressTimer = setInterval(() => {
      const c = stack.stats.counters();
      const now = Date.now();
      const done = c.write.bytes + c.zero.bytes;
      const rate = ((done - last.bytes) / Math.max(1, now - last.at)) * 1000;
      last = { at: now, bytes: done };
      process.stderr.write(
        `progress: written ${formatBytes(c.write.bytes)}, zeroed ${formatBytes(c.zero.bytes)}, ` +
          `${((done / Math.max(1, stack.top.size())) * 100).toFixed(1)}% of ${formatBytes(stack.top.size())}, ` +
          `${formatBytes(rate)}/s\n`,
      );
    }, config.progress * 1000);
    progressTimer.unref();
  }

  let shuttingDown: Promise<number> | undefined;
  const shutdown = (reason: string, status: number): Promise<number> => {
    if (shuttingDown) return shuttingDown;
    shuttingDown = (async () => {
      logger.info(`shutting down: ${reason}`);
      if (progressTimer) clearInterval(progressTimer);
      await server.close();
      try {
        await stack.top.close();
      } catch (err) {
        dataLost = true;
        logger.error(`could not send and flush all written data before exit; the image may be incomplete: ${describeError(err)}`);
      }
      if (privateDir) fs.rmSync(privateDir, { recursive: true, force: true });
      if (config.stats !== undefined) writeStats(config.stats, stack, logger);
      hooks.onShutdown?.(reason, dataLost);
      if (dataLost) {
        process.stderr.write('imageio-nbd: ERROR: written data could not be flushed to imageio; the transfer is NOT complete\n');
        return status === 0 ? 1 : status;
      }
      return status;
    })();
    return shuttingDown;
  };

  return new Promise<number>((resolve) => {
    const finish = (reason: string, status: number) => void shutdown(reason, status).then(resolve);
    let signals = 0;
    const onSignal = (sig: NodeJS.Signals) => {
      if (++signals > 1) {
        process.stderr.write(`imageio-nbd: second ${sig}, exiting without flushing\n`);
        process.exit(1);
      }
      finish(`received ${sig}`, exitCode);
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    let runChild: ReturnType<typeof spawn> | undefined;
    // A stop from a hook also ends the --run command: it has nothing left to work on.
    hooks.onStart?.((reason, status) => {
      if (runChild && runChild.exitCode === null && runChild.signalCode === null) runChild.kill('SIGTERM');
      finish(reason, status);
    });

    if (config.exitWithParent) {
      const parent = process.ppid;
      const t = setInterval(() => {
        if (process.ppid !== parent) finish('parent process exited', exitCode);
      }, 500);
      t.unref();
    }

    if (config.run) {
      const env = {
        ...process.env,
        uri: uri,
        nbd: uri,
        exportname: config.exportName,
        unixsocket: where.unix ?? '',
        port: where.port !== undefined ? String(where.port) : '',
      };
      const child = (runChild = spawn('/bin/sh', ['-c', config.run], { stdio: 'inherit', env }));
      child.on('error', (err) => {
        logger.error(`--run command failed to start: ${err.message}`);
        finish('--run command failed', 1);
      });
      child.on('exit', (code, signal) => {
        exitCode = code ?? (signal ? 128 + (os.constants.signals[signal] ?? 0) : 1);
        hooks.onRunExit?.(exitCode);
        finish(`--run command exited with status ${exitCode}`, exitCode);
      });
    }
  });
}

function writeStats(dest: string, stack: ExportStack, logger: Logger): void {
  let text = stack.stats.format() + '\n';
  const ru = process.resourceUsage();
  text += `process: ${(ru.userCPUTime / 1e6).toFixed(2)} s user, ${(ru.systemCPUTime / 1e6).toFixed(2)} s sys, peak RSS ${(ru.maxRSS / 1024).toFixed(1)} MiB\n`;
  if (stack.imageio) text += formatHttpStats(stack.imageio.httpStats());
  if (stack.coalesce) {
    const c = stack.coalesce.stats();
    text += `coalesce: ${JSON.stringify(c)}\n`;
  }
  try {
    if (dest === '') process.stderr.write(text);
    else fs.writeFileSync(dest, text);
  } catch (err) {
    logger.error(`cannot write stats to ${dest}: ${(err as Error).message}`);
  }
}
