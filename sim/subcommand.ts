/**
 * What the built-in servers' subcommands (`imageio-server`, `engine-server`) share: their TLS
 * files, fractional numbers from their command lines (whole numbers: core/command-line.ts),
 * printing what a client needs to stdout without depending on anyone reading it, and serving
 * until a stop signal.
 */
import { promises as fsp } from 'node:fs';

/**
 * Writes `text` to stdout. A reader that goes away (`imageio-server ... | head -1`) must not stop
 * a server: errors of stdout (EPIPE) are ignored from now on.
 */
export function announce(text: string): void {
  if (process.stdout.listenerCount('error') === 0) process.stdout.on('error', () => undefined);
  process.stdout.write(text);
}

/** A number option (fractions allowed) of at least min, or undefined when absent. */
export function numberOption(text: string | undefined, opt: string, min: number): number | undefined {
  if (text === undefined) return undefined;
  const n = /^\s*(\d+(\.\d*)?|\.\d+)\s*$/.test(text) ? Number(text) : NaN;
  if (!(n >= min)) throw new Error(`invalid --${opt} '${text}': expected a number of at least ${min}`);
  return n;
}

/** The certificate and key for HTTPS, when both are given; otherwise plain HTTP. */
export async function readTlsFiles(cert: string | undefined, key: string | undefined): Promise<{ cert: Buffer; key: Buffer } | undefined> {
  return cert && key ? { cert: await fsp.readFile(cert), key: await fsp.readFile(key) } : undefined;
}

/** The command's signal owner, as these subcommands use it (src/cli/signals.ts has the same shape). */
export interface StopSignals {
  subscribe(handler: (sig: NodeJS.Signals, count: number) => void): () => void;
}

/**
 * Listens for the first stop signal (SIGINT, SIGTERM, SIGQUIT) from now on: `signal` resolves
 * with it. Taken before the server starts, so that a signal while starting or right after the
 * server says it is ready is a clean stop, never the default death; `cancel` stops listening.
 */
export function stopSignal(signals: StopSignals): { signal: Promise<NodeJS.Signals>; cancel(): void } {
  let unsubscribe = () => {};
  const signal = new Promise<NodeJS.Signals>((resolve) => {
    unsubscribe = signals.subscribe((sig) => {
      unsubscribe();
      resolve(sig);
    });
  });
  return { signal, cancel: () => unsubscribe() };
}
