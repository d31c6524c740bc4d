/**
 * A small JSON service on a unix socket, through which tests and scripts steer a built-in
 * server running in another process (`curl --unix-socket SOCKET http://x/ROUTE`). The built-in
 * imageio server and the fake engine each give it their routes.
 *
 * The handler gets the method, the path without its query, and the request body as text; what
 * it returns is the JSON answer (`{"ok": true}` for undefined). It throws NotFound for an
 * unknown route (404); any other error, a JSON.parse of a bad body included, is a 400 with
 * `{"error": message}`.
 */
import { promises as fsp } from 'node:fs';
import http from 'node:http';

export class NotFound extends Error {}

export type ControlHandler = (method: string, path: string, body: string) => unknown;

export class ControlSocket {
  private server?: http.Server;

  constructor(
    readonly path: string,
    private readonly handler: ControlHandler,
  ) {}

  async start(): Promise<void> {
    await fsp.rm(this.path, { force: true });
    this.server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        try {
          const result = this.handler(req.method ?? '', (req.url ?? '/').split('?')[0], Buffer.concat(chunks).toString('utf8'));
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

function reply(res: http.ServerResponse, status: number, data: unknown): void {
  const body = JSON.stringify(data) + '\n';
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}
