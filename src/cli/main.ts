/**
 * The imageio-nbd command: parse the command line and dispatch to what it asks for: help and
 * nbdkit's introspection options, the subcommands (verify, and the built-in servers from
 * sim/, loaded only when asked for), engine mode, --jobs (./jobs/), or serving one export (./serve.ts).
 */
import * as fs from 'node:fs';
import { parseArgs } from './parse';
import { createLogger } from '../core/log';
import { daemonizeIfAsked } from './daemonize';
import { dumpConfig, dumpPlugin, longOptions, shortOptions } from './nbdkit-compat';
import { serve } from './serve';
import { processSignals } from './signals';

/** Writes to stdout for a reader that may stop reading (`imageio-nbd --help | head -1`): not an error of ours. */
function print(text: string): void {
  process.stdout.on('error', () => undefined);
  process.stdout.write(text);
}

/** Entry point: returns the exit status. */
export async function main(argv: string[]): Promise<number> {
  if (argv[0] === 'verify') {
    const { runVerifyCommand } = require('./verify-command') as typeof import('./verify-command');
    return runVerifyCommand(argv.slice(1));
  }
  let parsed;
  try {
    parsed = await parseArgs(argv);
  } catch (err) {
    process.stderr.write(`imageio-nbd: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  }
  const binary = fs.realpathSync(process.argv[1] ?? 'imageio-nbd');
  switch (parsed.kind) {
    case 'help':
    case 'version':
      print(parsed.text + '\n');
      return 0;
    case 'info': {
      const text = {
        'dump-config': () => dumpConfig(binary),
        'dump-plugin': () => dumpPlugin(binary, parsed.plugin),
        'long-options': longOptions,
        'short-options': shortOptions,
      }[parsed.info]();
      print(text + '\n');
      return 0;
    }
    case 'imageio-server': {
      // Loaded only for this subcommand: start-up time counts in every captive copy.
      const { runImageioServerCommand } = require('../../sim/imageio-server/command') as typeof import('../../sim/imageio-server/command');
      return runImageioServerCommand(parsed.argv, processSignals());
    }
    case 'engine-server': {
      const { runEngineServerCommand } = require('../../sim/engine-server/command') as typeof import('../../sim/engine-server/command');
      return runEngineServerCommand(parsed.argv, processSignals());
    }
    case 'run':
      break;
  }
  const config = parsed.config;
  const detached = await daemonizeIfAsked(config.foreground, argv);
  if (detached !== undefined) return detached;
  if (config.jobs) {
    // Many transfers through the engine, spread over its hosts.
    const { runJobs } = require('./jobs/run-jobs') as typeof import('./jobs/run-jobs');
    return runJobs(config, createLogger({ verbose: config.verbose, format: config.logFormat }));
  }
  if (config.engine) {
    // Engine mode: get the transfer from the oVirt engine, serve it, then finalize or cancel it.
    const { runEngineMode } = require('./engine-mode') as typeof import('./engine-mode');
    const logger = createLogger({ verbose: config.verbose, format: config.logFormat });
    return runEngineMode(config, logger, (cfg, _logger, hooks) => serve(cfg, hooks, processSignals()));
  }
  return serve(config, undefined, processSignals());
}
