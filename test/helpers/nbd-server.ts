/** Start an in-process NbdServer on a private unix socket for a test. */
import type { Backend } from '../../src/core/backend';
import { silentLogger } from '../../src/core/log';
import { NbdServer, type ExportConfig, type NbdServerOptions } from '../../src/nbd/nbd-server';
import { tmpDir, type TmpDir } from './tmp-dir';
import { testPool } from './pool';

export interface TestServer {
  server: NbdServer;
  socketPath: string;
  /** nbd+unix:///?socket=... for the default export (libnbd and qemu both accept it). */
  uri: string;
  /** The private directory holding the socket; put test files here too. */
  dir: TmpDir;
  /** Close the server (waits for connections) and remove the directory. */
  stop(): Promise<void>;
}

export interface StartOptions extends Partial<Omit<NbdServerOptions, 'exports'>> {
  /** Default: a pool of this test's own (see pool.ts), checked at its end. */
  payloadPool?: NbdServerOptions['payloadPool'];
  /** Options for the single export made from `backend` (ignored when exports are given). */
  export?: Partial<ExportConfig>;
  /** Serve these exports instead of one made from `backend`. */
  exports?: ExportConfig[];
}

export async function startNbdServer(backend: Backend | undefined, opts: StartOptions = {}): Promise<TestServer> {
  const exports = opts.exports ?? [{ name: '', backend: backend!, ...opts.export }];
  const dir = tmpDir('nbd-');
  const socketPath = dir.file('sock');
  const server = new NbdServer({ logger: silentLogger(), ...opts, payloadPool: opts.payloadPool ?? testPool(), exports });
  await server.listen({ unix: socketPath });
  return {
    server,
    socketPath,
    uri: `nbd+unix:///?socket=${socketPath}`,
    dir,
    stop: async () => {
      await server.close();
      dir.cleanup();
    },
  };
}
