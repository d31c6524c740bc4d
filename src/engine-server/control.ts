/**
 * A control service on a unix socket, so tests and scripts can steer a fake engine running in
 * another process (curl --unix-socket SOCKET http://x/ROUTE):
 *   GET  /state                      disks, transfers, hosts, login counters, requests
 *   POST /faults                     {"stuckInitializing"?, "finalizeFails"?, "unreachableTransferUrl"?: bool}
 *   POST /tokens/expire              the next API request gets 401
 *   POST /hosts/NAME/status          {"status": "non_responsive" | "up" | ...}
 *   POST /transfers/pause            every transferring transfer becomes paused_system
 *   POST /disks                      {"size": N, "name"?, "format"?, "from"?: FILE}: a disk in state ok
 */
import { promises as fsp } from 'node:fs';
import http from 'node:http';
import type { EngineFaults, FakeEngine } from './fake-engine';

export class EngineControlServer {
  private server?: http.Server;

  constructor(
    private readonly engine: FakeEngine,
    readonly path: string,
  ) {}

  async start(): Promise<void> {
    await fsp.rm(this.path, { force: true });
    this.server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        let status = 200;
        let result: unknown;
        try {
          const text = Buffer.concat(chunks).toString('utf8');
          result = this.handle(req.method ?? 'GET', (req.url ?? '/').split('?')[0], text ? (JSON.parse(text) as Record<string, unknown>) : {});
        } catch (err) {
          status = err instanceof NotFound ? 404 : 400;
          result = { error: (err as Error).message };
        }
        const body = JSON.stringify(result ?? { ok: true }) + '\n';
        res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
        res.end(body);
      });
    });
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(this.path, () => resolve());
    });
  }

  private handle(method: string, url: string, body: Record<string, unknown>): unknown {
    const e = this.engine;
    if (method === 'GET' && url === '/state') return e.state();
    if (method === 'POST' && url === '/faults') {
      for (const key of Object.keys(body)) {
        if (!(key in e.faults)) throw new Error(`unknown fault ${key}`);
        (e.faults as unknown as Record<string, boolean>)[key] = Boolean(body[key]);
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
    throw new NotFound(`no route ${method} ${url}`);
  }

  async close(): Promise<void> {
    const s = this.server;
    if (!s) return;
    this.server = undefined;
    await new Promise<void>((r) => {
      s.close(() => r());
      s.closeAllConnections();
    });
    await fsp.rm(this.path, { force: true });
  }
}

class NotFound extends Error {}
