/**
 * A control service on a unix socket so tests can steer an imageio server running in another
 * process: POST /faults (a FaultRule as JSON; "times": -1 means always), DELETE /faults (rules
 * and the random mode), POST /faults/random (RandomFaults as JSON), POST /latency
 * ({"ms": N, "ops": [...]}), GET /stats, POST /ticket/expire, POST /ticket/cancel,
 * POST /close-idle.
 */
import { promises as fsp } from 'node:fs';
import http from 'node:http';
import type { FaultOp, FaultRule, RandomFaults } from './faults';
import type { ImageioServer } from './imageio-server';

export class ControlServer {
  private server?: http.Server;

  constructor(
    private readonly target: ImageioServer,
    readonly path: string,
  ) {}

  async start(): Promise<void> {
    await fsp.rm(this.path, { force: true });
    this.server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        try {
          const result = this.handle(req.method ?? '', req.url ?? '', Buffer.concat(chunks).toString('utf8'));
          reply(res, 200, result ?? { ok: true });
        } catch (err) {
          reply(res, err instanceof NotFound ? 404 : 400, { error: (err as Error).message });
        }
      });
    });
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(this.path, () => resolve());
    });
  }

  private handle(method: string, url: string, body: string): unknown {
    const t = this.target;
    const route = `${method} ${url.split('?')[0]}`;
    switch (route) {
      case 'POST /faults': {
        const rule = JSON.parse(body) as FaultRule;
        if (rule.times === -1) rule.times = Infinity;
        t.faults.add(rule);
        return undefined;
      }
      case 'POST /faults/random':
        t.faults.setRandom(JSON.parse(body) as RandomFaults);
        return undefined;
      case 'POST /latency': {
        const { ms, ops } = JSON.parse(body) as { ms: number; ops?: FaultOp[] };
        t.faults.setLatency(ms, ops);
        return undefined;
      }
      case 'DELETE /faults':
        t.faults.clear();
        return undefined;
      case 'GET /stats':
        return t.stats();
      case 'POST /ticket/expire':
        t.expireTicket();
        return undefined;
      case 'POST /ticket/cancel':
        t.cancelTicket();
        return undefined;
      case 'POST /close-idle':
        return { closed: t.closeIdleConnections() };
      default:
        throw new NotFound(`no route ${route}`);
    }
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

function reply(res: http.ServerResponse, status: number, data: unknown): void {
  const body = JSON.stringify(data) + '\n';
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}
