/** Stand-alone entry for tests and scripts: `node -r tsx/cjs sim/imageio-server/main.ts --image F ...`. */
import { runImageioServerCommand } from './command';
import type { StopSignals } from '../subcommand';

/** This stand-alone process's stop signals (imageio-nbd itself passes its own signal owner). */
const signals: StopSignals = {
  subscribe(handler) {
    const fn = (sig: NodeJS.Signals) => handler(sig, 1);
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGQUIT'] as const) process.on(sig, fn);
    return () => {
      for (const sig of ['SIGINT', 'SIGTERM', 'SIGQUIT'] as const) process.off(sig, fn);
    };
  },
};

runImageioServerCommand(process.argv.slice(2), signals).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`imageio-server: ${err instanceof Error ? err.stack : String(err)}\n`);
    process.exitCode = 1;
  },
);
