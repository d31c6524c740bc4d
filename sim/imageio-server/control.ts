/**
 * A control service on a unix socket so tests can steer an imageio server running in another
 * process: POST /faults (a FaultRule as JSON; "times": -1 means always), DELETE /faults (rules
 * and the random mode), POST /faults/random (RandomFaults as JSON), POST /latency
 * ({"ms": N, "ops": [...]}), GET /stats, POST /ticket/expire, POST /ticket/cancel,
 * POST /close-idle.
 */
import { ControlSocket, NotFound } from '../control-socket';
import type { FaultOp, FaultRule, RandomFaults } from './faults';
import type { ImageioServer } from './imageio-server';

export class ControlServer {
  private readonly socket: ControlSocket;

  constructor(
    private readonly target: ImageioServer,
    readonly path: string,
  ) {
    this.socket = new ControlSocket(path, (method, route, body) => this.handle(method, route, body));
  }

  start(): Promise<void> {
    return this.socket.start();
  }

  close(): Promise<void> {
    return this.socket.close();
  }

  private handle(method: string, path: string, body: string): unknown {
    const t = this.target;
    const route = `${method} ${path}`;
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
}
