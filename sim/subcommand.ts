/**
 * What the built-in servers' subcommands (`imageio-server`, `engine-server`) share: their TLS
 * files, and serving until SIGINT or SIGTERM.
 */
import { promises as fsp } from 'node:fs';

/** The certificate and key for HTTPS, when both are given; otherwise plain HTTP. */
export async function readTlsFiles(cert: string | undefined, key: string | undefined): Promise<{ cert: Buffer; key: Buffer } | undefined> {
  return cert && key ? { cert: await fsp.readFile(cert), key: await fsp.readFile(key) } : undefined;
}

/** Resolves with the first SIGINT or SIGTERM, and stops listening for them. */
export function untilStopSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const onSignal = (sig: NodeJS.Signals) => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      resolve(sig);
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
}
