/** Stand-alone entry for tests and scripts: `node -r tsx/cjs sim/imageio-server/main.ts --image F ...`. */
import { runImageioServerCommand } from './command';

runImageioServerCommand(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`imageio-server: ${err instanceof Error ? err.stack : String(err)}\n`);
    process.exitCode = 1;
  },
);
