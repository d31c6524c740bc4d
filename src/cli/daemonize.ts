/**
 * nbdkit detaches into the background unless -f/--foreground (or --run) is given, and its
 * parent returns only once the server listens. Node cannot fork, so the parent re-runs this
 * program detached with an IPC channel and exits 0 when the child reports it is listening,
 * or with the child's status if it fails to start.
 */
import { spawn } from 'node:child_process';

const CHILD_ENV = 'IMAGEIO_NBD_DAEMON_CHILD';

/** Returns the parent's exit status when it detached a child, undefined to go on serving here. */
export async function daemonizeIfAsked(foreground: boolean, argv: string[]): Promise<number | undefined> {
  if (foreground || process.env[CHILD_ENV] === '1') return undefined;
  const child = spawn(process.execPath, [...process.execArgv, process.argv[1], ...argv], {
    detached: true,
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
    env: { ...process.env, [CHILD_ENV]: '1' },
  });
  return new Promise<number>((resolve) => {
    child.once('message', (msg) => {
      if (msg === 'ready') {
        child.disconnect();
        child.unref();
        resolve(0);
      }
    });
    child.once('exit', (code) => resolve(code ?? 1));
    child.once('error', () => resolve(1));
  });
}

/** In a detached child: tell the waiting parent that the server listens. */
export function notifyDaemonReady(): void {
  if (process.env[CHILD_ENV] === '1' && process.send) {
    process.send('ready');
    process.disconnect();
  }
}
