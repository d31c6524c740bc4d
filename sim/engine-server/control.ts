/**
 * A control service on a unix socket, so tests and scripts can steer a fake engine running in
 * another process (curl --unix-socket SOCKET http://x/ROUTE):
 *   GET  /state                      disks, transfers, hosts, login counters, requests
 *   POST /faults                     {"stuckInitializing"?, "finalizeFails"?, "unreachableTransferUrl"?,
 *                                     "loseFinalizeResponse"?, "noTimeoutPolicy"?: bool, "finalizeDelayMs"?: ms}
 *   POST /tokens/expire              the next API request gets 401
 *   POST /hosts/NAME/status          {"status": "non_responsive" | "up" | ...}
 *   POST /hosts/NAME/link            {"rate"?: bytes/s, "downAfterBytes"?: N}: bandwidth; go down after N more bytes
 *   POST /transfers/pause            every transferring transfer becomes paused_system
 *   POST /disks                      {"size": N, "name"?, "format"?, "from"?: FILE}: a disk in state ok
 */
import { ControlSocket, NotFound } from '../control-socket';
import type { EngineFaults, FakeEngine } from './fake-engine';

export class EngineControlServer {
  private readonly socket: ControlSocket;

  constructor(
    private readonly engine: FakeEngine,
    readonly path: string,
  ) {
    this.socket = new ControlSocket(path, (method, url, text) =>
      this.handle(method, url, text ? (JSON.parse(text) as Record<string, unknown>) : {}),
    );
  }

  start(): Promise<void> {
    return this.socket.start();
  }

  close(): Promise<void> {
    return this.socket.close();
  }

  private handle(method: string, url: string, body: Record<string, unknown>): unknown {
    const e = this.engine;
    if (method === 'GET' && url === '/state') return e.state();
    if (method === 'POST' && url === '/faults') {
      for (const key of Object.keys(body)) {
        if (!(key in e.faults)) throw new Error(`unknown fault ${key}`);
        const faults = e.faults as unknown as Record<string, boolean | number>;
        faults[key] = typeof faults[key] === 'number' ? Number(body[key]) : Boolean(body[key]);
      }
      return { ...e.faults } satisfies EngineFaults;
    }
    if (method === 'POST' && url === '/tokens/expire') {
      e.expireTokens();
      return undefined;
    }
    if (method === 'POST' && url === '/transfers/pause') return { paused: e.pauseTransfers() };
    if (method === 'POST' && url === '/disks') {
      const d = e.addDisk({
        size: Number(body.size),
        name: body.name as string | undefined,
        format: body.format as 'raw' | 'cow' | undefined,
        from: body.from as string | undefined,
      });
      return { id: d.id, name: d.name, size: d.size };
    }
    const m = /^\/hosts\/([^/]+)\/status$/.exec(url);
    if (method === 'POST' && m) {
      e.setHostStatus(decodeURIComponent(m[1]), String(body.status));
      return undefined;
    }
    const l = /^\/hosts\/([^/]+)\/link$/.exec(url);
    if (method === 'POST' && l) {
      e.setHostLink(decodeURIComponent(l[1]), {
        rate: body.rate === undefined ? undefined : Number(body.rate),
        downAfterBytes: body.downAfterBytes === undefined ? undefined : Number(body.downAfterBytes),
      });
      return undefined;
    }
    throw new NotFound(`no route ${method} ${url}`);
  }
}
