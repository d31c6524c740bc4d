/**
 * What the built-in servers' subcommands (`imageio-server`, `engine-server`) share: their TLS
 * files, and serving until a stop signal.
 */
import { promises as fsp } from 'node:fs';

/** The certificate and key for HTTPS, when both are given; otherwise plain HTTP. */
export async function readTlsFiles(cert: string | undefined, key: string | undefined): Promise<{ cert: Buffer; key: Buffer } | undefined> {
  return cert && key ? { cert: await fsp.readFile(cert), key: await fsp.readFile(key) } : undefined;
}

/** The command's signal owner, as these subcommands use it (src/cli/signals.ts has the same shape). */
export interface StopSignals {
  subscribe(handler: (sig: NodeJS.Signals, count: number) => void): () => void;
}

/** Resolves with the first stop signal (SIGINT, SIGTERM, SIGQUIT), and stops listening for them. */
export function untilStopSignal(signals: StopSignals): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const unsubscribe = signals.subscribe((sig) => {
      unsubscribe();
      resolve(sig);
    });
  });
}
