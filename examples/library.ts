/**
 * Using imageio-nbd as a library from TypeScript: open an imageio transfer as a backend, do
 * some I/O on it directly, then serve it as an NBD export on a unix socket and read it back
 * through NBD with nbdsh (as qemu-img or nbdcopy would).
 *
 *   npx tsx examples/library.ts TRANSFER_URL [--insecure | --cafile CA.pem]
 *
 * It writes "hello from imageio-nbd" at offset 1 MiB of the transfer's disk.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
// In a project of your own: import { ... } from 'imageio-nbd';
import { createLogger, NbdServer, openImageioBackend, PayloadPool } from '../src';

async function main(): Promise<number> {
  const [url, ...rest] = process.argv.slice(2);
  if (!url) {
    process.stderr.write('usage: npx tsx examples/library.ts TRANSFER_URL [--insecure | --cafile CA.pem]\n');
    return 2;
  }
  const logger = createLogger({ verbose: 0 }); // warnings and errors on stderr

  // 1. Open the transfer: OPTIONS, the connection pool (imageio's unix socket when it is
  //    reachable), and the size. Fails here, with a clear error, if the ticket is bad.
  // Every payload buffer comes from a pool we own; its bound covers the backend and the server.
  const pool = new PayloadPool({ maxLiveBytes: 64 * 2 ** 20 });
  const backend = await openImageioBackend({
    url,
    pool,
    insecure: rest.includes('--insecure'),
    cafile: rest.includes('--cafile') ? rest[rest.indexOf('--cafile') + 1] : undefined,
    logger,
  });
  console.log(`size ${backend.size()}, capabilities ${JSON.stringify(backend.capabilities())}`);

  // 2. Direct I/O: a PUT, then a PATCH flush on every pooled connection, then a GET.
  const offset = 1024 * 1024;
  const message = Buffer.from('hello from imageio-nbd');
  await backend.pwrite(message, offset);
  await backend.flush();
  const back = await backend.pread(offset, message.length);
  console.log(`read back: ${back.toString()}`);

  // 3. Serve it over NBD on a private unix socket.
  const dir = mkdtempSync(join(tmpdir(), 'imageio-nbd-example-'));
  const socket = join(dir, 'nbd.sock');
  const server = new NbdServer({ exports: [{ name: '', backend, description: url }], logger, payloadPool: pool });
  await server.listen({ unix: socket });
  try {
    // Any NBD client works now; nbdsh (Debian's python3 has the nbd module) reads our bytes.
    // Run it asynchronously: this process serves its requests (execFileSync would deadlock).
    const { stdout: viaNbd } = await promisify(execFile)('/usr/bin/python3', [
      '-m', 'nbd', '-u', `nbd+unix:///?socket=${socket}`,
      '-c', `import sys; sys.stdout.write(h.pread(${message.length}, ${offset}).decode())`,
    ]);
    console.log(`read through NBD: ${viaNbd}`);
  } finally {
    // 4. Stop serving, then close the backend: it flushes anything unflushed and closes every
    //    HTTP connection (and rejects if written data may have been lost).
    await server.close();
    await backend.close();
    rmSync(dir, { recursive: true, force: true });
  }
  return 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`library example failed: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
