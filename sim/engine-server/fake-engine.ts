/**
 * A fake oVirt engine for tests and demos: the part of the REST API (v4, JSON only) that an
 * image-transfer client uses, with one data center, one storage domain, N hosts, and each
 * host's imageio played by the built-in imageio server (src/imageio-server).
 *
 * Served (paths under /ovirt-engine):
 *   POST sso/oauth/token (password grant), POST services/sso-logout
 *   api: GET /; GET disks, disks/{id}; POST disks; DELETE disks/{id}; GET storagedomains[?search],
 *   storagedomains/{id}; GET datacenters, datacenters/{id}; GET clusters/{id}; GET hosts[?search],
 *   hosts/{id}; GET imagetransfers, imagetransfers/{id}; POST imagetransfers;
 *   POST imagetransfers/{id}/finalize|cancel|pause|resume|extend
 *
 * The transfer lifecycle follows ovirt-engine's TransferDiskImageCommand (4.5,
 * backend/manager/modules/bll/.../storage/disk/image/TransferDiskImageCommand.java): the phase
 * alone drives it, one handler per phase (executeStateHandler), each `stepMs` after the phase
 * was entered. A new transfer is `initializing`, locks its disk, installs an imageio ticket on
 * its host and becomes `transferring` with transfer_url and proxy_url. finalizing_success:
 * ticket removed, upload verified -> finished_success with the disk `ok` (handleFinalizingSuccess,
 * endSuccessfully). cancelled_user -> finalizing_cleanup -> finished_cleanup -> finished_failure;
 * cancelled_system -> finalizing_failure -> finished_failure (handleCancelledUser/System,
 * cleanup, handleFinishedCleanup). Every upload that ends in finished_failure has its disk
 * removed, also a disk that existed before (endWithFailure runs RemoveDisk for every upload).
 * finalize and cancel are accepted (200) in any phase and change a phase that is not finished
 * (TransferImageStatusCommand.validate checks only resume and pause; ImageTransferUpdater
 * ignores changes of a finished phase: ImageTransferPhase.isValidTransition), so a cancel sent
 * while finalizing turns a success into a failure, as it does on the real engine. Finished
 * transfers stay listed for a while (engines from 4.4.7 keep them). A transfer whose ticket saw
 * no imageio activity for longer than inactivity_timeout is handled by its timeout_policy
 * (stopTransferIfNecessary): legacy pauses an upload (paused_system) and cancels a download,
 * pause pauses, cancel cancels (cancelled_system; an upload's disk is then removed).
 *
 * Faults (`faults`, or the control socket): transfers stuck in initializing, finalize failing
 * (the upload does not verify), finalizing taking long, the answer to a finalize lost (the
 * finalize is done, the connection dropped), an engine before 4.4.5 (no timeout_policy),
 * transfer_url unreachable (only proxy_url works), tokens expiring (the next API request gets
 * 401), a host going down (its imageio drops every connection and its transfers are paused, or
 * cancelled for downloads; also after a chosen number of bytes: setHostLink), and pausing
 * transfers as the engine does. Each host may have a bandwidth limit (hostRate, setHostLink), and
 * state() reports per host how many transfers had an imageio session at once (maxActiveTransfers). `admin: false` makes the
 * user an ordinary one (see route()).
 *
 * Not modelled: the rest of the API and its XML form, roles and permissions beyond admin or not,
 * the search language beyond key=value terms, VMs, snapshots, backups, several data centers or
 * storage domains, block storage (initial_size is ignored), qcow2 (every disk is a raw file
 * whatever its format), image verification, ticket expiry and extension, one imageio port per
 * host (each transfer has its own server, see fake-host.ts), and the engine's timing (its
 * monitoring runs every few seconds; here every `monitorMs`).
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { ImageioServer } from '../imageio-server/imageio-server';
import type { Logger } from '../../src/core/log';
import { silentLogger } from '../../src/core/log';
import {
  API,
  clusterJson,
  collection,
  dataCenterJson,
  diskJson,
  faultJson,
  hostJson,
  storageDomainJson,
  transferJson,
  type ClusterState,
  type DataCenterState,
  type DiskState,
  type HostState,
  type StorageDomainState,
  type TransferState,
} from './entities';
import { deadPort, HostLink, sessionUrl, startSession, stopSession, type Session } from './fake-host';
import { filterBySearch, parseSearch, SearchError } from './search';

export interface FakeHostSpec {
  name: string;
  /** hardware_information.uuid; default a random UUID. */
  hardwareUuid?: string;
  /** vdsm's unique id (/etc/vdsm/vdsm.id, the `hw_id` search); default another random UUID. */
  vdsmId?: string;
  /** Default 'up'. */
  status?: string;
  /** Bandwidth of the host's network, bytes per second, shared by its transfers; default FakeEngineOptions.hostRate (0: unlimited). */
  rate?: number;
  /** The host goes non_responsive once this many bytes crossed its network (a host down mid-transfer). */
  downAfterBytes?: number;
}

export interface FakeEngineOptions {
  /** Directory for disk images and sockets; default a temporary one, removed by close(). */
  dir?: string;
  /** Hosts host1..hostN, or their specs. Default 3. */
  hosts?: number | FakeHostSpec[];
  /** PEM certificate and key: the engine and every host's imageio serve HTTPS. */
  tls?: { cert: string | Buffer; key: string | Buffer };
  /** Default { port: 0, host: '127.0.0.1' }. */
  tcp?: { port: number; host?: string };
  /** Default admin@internal. */
  username?: string;
  /** Default "password". */
  password?: string;
  /**
   * Default true. false: the user is an ordinary user with disk permissions (e.g. DiskCreator
   * on the storage domain): GET /imagetransfers is refused (GetAllImageTransfers is an admin
   * query: QueryType.java), and data centers and hosts are filtered to none.
   */
  admin?: boolean;
  /** Default bandwidth of every host's network, bytes per second (0, the default: unlimited). */
  hostRate?: number;
  /** Default "Default". */
  dataCenter?: string;
  /** Default "data". */
  storageDomain?: string;
  /** Delay of each asynchronous engine step (disk creation, session start, finalize, cancel). Default 100 ms. */
  stepMs?: number;
  /** How often transfers are checked for inactivity. Default 250 ms. */
  monitorMs?: number;
  /** How long finished transfers stay listed. Default 10 minutes. */
  finishedTtlMs?: number;
  logger?: Logger;
}

export interface EngineFaults {
  /** New transfers never leave `initializing`. */
  stuckInitializing: boolean;
  /** finalize of an upload ends in finished_failure (the image did not verify); the disk is removed. */
  finalizeFails: boolean;
  /** transfer_url names a port nobody listens on; proxy_url works. */
  unreachableTransferUrl: boolean;
  /** finalizing_success lasts this much longer (ms): a slow verification or teardown. */
  finalizeDelayMs: number;
  /** The next finalize is carried out, but its answer is lost: the connection is dropped. */
  loseFinalizeResponse: boolean;
  /** An engine before 4.4.5: timeout_policy is unknown, skipped on input and absent from the JSON. */
  noTimeoutPolicy: boolean;
  /**
   * The user may create transfers but not act on them: TransferImageStatusCommand (finalize,
   * cancel, pause, resume, extend) checks CREATE_DISK on the system object when no storage
   * domain is given (getPermissionCheckSubjects), and refuses with 403.
   */
  actionsNotPermitted: boolean;
}

export interface FakeEngineState {
  disks: DiskState[];
  transfers: TransferState[];
  hosts: Array<Pick<HostState, 'id' | 'name' | 'status' | 'hardwareUuid' | 'vdsmId'> & HostCounters>;
  storageDomain: { id: string; name: string };
  logins: number;
  failedLogins: number;
  logouts: number;
  /** API requests answered 401. */
  unauthorized: number;
  /** "METHOD /path" of the API requests (after /ovirt-engine/api), in order; the latest 10000. */
  requests: string[];
}

/** What a host's imageio did: transfers with a live session (ticket installed) now, and at most at once. */
export interface HostCounters {
  activeTransfers: number;
  maxActiveTransfers: number;
  /** Transfers that ever had a session on the host. */
  transfers: number;
  /** Bytes through the host's network link (0 without one). */
  linkBytes: number;
}

/** Phases a transfer ends in (ImageTransferPhase.isFinished). */
const FINISHED = new Set(['finished_success', 'finished_failure']);
/** Phases in which the engine is already ending the transfer. */
const ENDING = new Set(['cancelled_user', 'cancelled_system', 'finalizing_success', 'finalizing_failure', 'finalizing_cleanup', 'finished_cleanup']);
/** Transfer phases in which the engine checks the ticket for inactivity (handleTransferring). */
const POLLED = new Set(['transferring']);
const MAX_BODY = 1 << 20;
/** The request log keeps the latest requests only (engine-server may run for a long time). */
const MAX_REQUESTS_KEPT = 10_000;

class Fault extends Error {
  constructor(
    readonly status: number,
    readonly reason: string,
    readonly detail: string,
  ) {
    super(detail);
  }
}

type Json = Record<string, unknown>;
/** drop: send nothing and close the connection (a lost answer). */
type Answer = { status: number; body?: unknown; headers?: Record<string, string>; drop?: boolean };

export class FakeEngine {
  readonly faults: EngineFaults = {
    stuckInitializing: false,
    finalizeFails: false,
    unreachableTransferUrl: false,
    finalizeDelayMs: 0,
    loseFinalizeResponse: false,
    noTimeoutPolicy: false,
    actionsNotPermitted: false,
  };
  readonly admin: boolean;
  readonly username: string;
  readonly password: string;
  readonly dir: string;
  private readonly ownDir: boolean;
  private readonly log: Logger;
  private readonly stepMs: number;
  private readonly monitorMs: number;
  private readonly finishedTtlMs: number;
  private readonly dc: DataCenterState;
  private readonly cluster: ClusterState;
  private readonly sd: StorageDomainState;
  private readonly hosts: HostState[];
  private readonly hostCounters = new Map<string, HostCounters>();
  private readonly links = new Map<string, HostLink>();
  private readonly disks = new Map<string, DiskState>();
  private readonly transfers = new Map<string, TransferState>();
  private readonly sessions = new Map<string, Session>();
  /** Every transfer's imageio server, kept after the transfer ends for its counters. */
  private readonly servers = new Map<string, ImageioServer>();
  private readonly activity = new Map<string, { sig: number; at: number }>();
  private readonly tokens = new Set<string>();
  private readonly counters = { logins: 0, failedLogins: 0, logouts: 0, unauthorized: 0 };
  private readonly requests: string[] = [];
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly pending = new Set<Promise<void>>();
  private monitor?: NodeJS.Timeout;
  private server?: http.Server;
  private address?: AddressInfo;
  private closed = false;

  constructor(private readonly opts: FakeEngineOptions = {}) {
    this.username = opts.username ?? 'admin@internal';
    this.password = opts.password ?? 'password';
    this.admin = opts.admin ?? true;
    this.log = opts.logger ?? silentLogger();
    this.stepMs = opts.stepMs ?? 100;
    this.monitorMs = opts.monitorMs ?? 250;
    this.finishedTtlMs = opts.finishedTtlMs ?? 600_000;
    this.ownDir = opts.dir === undefined;
    this.dir = opts.dir ?? mkdtempSync(path.join(os.tmpdir(), 'fake-engine-'));
    this.dc = { id: randomUUID(), name: opts.dataCenter ?? 'Default' };
    this.cluster = { id: randomUUID(), name: 'Default', dataCenterId: this.dc.id };
    const sdName = opts.storageDomain ?? 'data';
    this.sd = { id: randomUUID(), name: sdName, dataCenterId: this.dc.id, dir: path.join(this.dir, 'sd') };
    mkdirSync(this.sd.dir, { recursive: true });
    const specs: FakeHostSpec[] = typeof opts.hosts === 'object' ? opts.hosts : Array.from({ length: opts.hosts ?? 3 }, (_, i) => ({ name: `host${i + 1}` }));
    this.hosts = specs.map((s, i) => {
      const dir = path.join(this.dir, `h${i + 1}`);
      mkdirSync(dir, { recursive: true });
      const rate = s.rate ?? opts.hostRate ?? 0;
      if (rate > 0 || s.downAfterBytes !== undefined) this.links.set(s.name, new HostLink(rate, s.downAfterBytes, () => this.setHostStatus(s.name, 'non_responsive')));
      this.hostCounters.set(s.name, { activeTransfers: 0, maxActiveTransfers: 0, transfers: 0, linkBytes: 0 });
      return {
        id: randomUUID(),
        name: s.name,
        hardwareUuid: s.hardwareUuid ?? randomUUID(),
        vdsmId: s.vdsmId ?? randomUUID(),
        status: s.status ?? 'up',
        clusterId: this.cluster.id,
        dir,
      };
    });
  }

  // ---- Life --------------------------------------------------------------------------

  async start(): Promise<void> {
    const handler = (req: IncomingMessage, res: ServerResponse) => void this.handle(req, res);
    this.server = this.opts.tls ? https.createServer({ cert: this.opts.tls.cert, key: this.opts.tls.key }, handler) : http.createServer(handler);
    const tcp = this.opts.tcp ?? { port: 0 };
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(tcp.port, tcp.host ?? '127.0.0.1', () => resolve());
    });
    this.address = this.server.address() as AddressInfo;
    this.monitor = setInterval(() => this.checkTransfers(), this.monitorMs);
    this.monitor.unref();
  }

  /** https://127.0.0.1:PORT/ovirt-engine/api */
  get apiUrl(): string {
    if (!this.address) throw new Error('FakeEngine is not started');
    const host = this.address.family === 'IPv6' ? `[${this.address.address}]` : this.address.address;
    return `${this.opts.tls ? 'https' : 'http'}://${host}:${this.address.port}${API}`;
  }

  get storageDomainName(): string {
    return this.sd.name;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.monitor) clearInterval(this.monitor);
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    await Promise.allSettled([...this.pending]);
    await Promise.allSettled([...this.sessions.values()].map((s) => stopSession(s)));
    this.sessions.clear();
    if (this.server) {
      const s = this.server;
      await new Promise<void>((r) => {
        s.close(() => r());
        s.closeAllConnections();
      });
    }
    if (this.ownDir) rmSync(this.dir, { recursive: true, force: true });
  }

  // ---- For tests and the control socket ----------------------------------------------

  /** A disk in state ok; `from` copies a file's content into it. */
  addDisk(opts: { name?: string; size: number; format?: 'raw' | 'cow'; sparse?: boolean; from?: string }): DiskState {
    if (!Number.isSafeInteger(opts.size) || opts.size <= 0) throw new Error(`invalid disk size ${String(opts.size)}`);
    const d = this.newDisk(opts.name ?? `disk${this.disks.size + 1}`, opts.size, opts.format ?? 'raw', opts.sparse ?? true);
    if (opts.from) {
      copyFileSync(opts.from, d.path);
      truncateSync(d.path, d.size);
    }
    d.status = 'ok';
    return { ...d };
  }

  /** Every valid token becomes invalid: the next API request gets 401. */
  expireTokens(): void {
    this.tokens.clear();
  }

  /**
   * A host changes status. A host that is no longer up loses its imageio sessions (every
   * connection drops) and the engine stops its transfers: uploads paused_system, downloads
   * cancelled_system (pollTransferStatus cannot get the ticket:
   * updateEntityPhaseToStoppedBySystem(TRANSFER_IMAGE_STOPPED_BY_SYSTEM_MISSING_TICKET)).
   */
  setHostStatus(name: string, status: string): void {
    const h = this.hosts.find((x) => x.name === name);
    if (!h) throw new Error(`no host ${name}`);
    h.status = status;
    if (status === 'up') return;
    for (const t of this.transfers.values()) {
      if (t.hostId !== h.id || FINISHED.has(t.phase) || ENDING.has(t.phase)) continue;
      void this.endSession(t);
      this.stoppedBySystem(t);
    }
  }

  /**
   * Give a host a network link or change it: `rate` bytes per second (0: unlimited), and
   * `downAfterBytes`: the host goes non_responsive once that many more bytes crossed it.
   * Applies to transfers started afterwards.
   */
  setHostLink(name: string, opts: { rate?: number; downAfterBytes?: number }): void {
    const h = this.hosts.find((x) => x.name === name);
    if (!h) throw new Error(`no host ${name}`);
    let link = this.links.get(name);
    if (!link) this.links.set(name, (link = new HostLink(0, undefined, () => this.setHostStatus(name, 'non_responsive'))));
    if (opts.rate !== undefined) link.rate = opts.rate;
    if (opts.downAfterBytes !== undefined) link.downAfterBytes = link.bytes + opts.downAfterBytes;
  }

  /** Pause every transferring transfer, as the engine does on inactivity or a host problem. */
  pauseTransfers(): number {
    let n = 0;
    for (const t of this.transfers.values()) {
      if (t.phase === 'transferring') {
        t.phase = 'paused_system';
        n++;
      }
    }
    return n;
  }

  /** Pause one transferring transfer (paused_system), as the engine does when its host stops answering. */
  pauseTransfer(id: string): boolean {
    const t = this.transfers.get(id);
    if (t?.phase !== 'transferring') return false;
    t.phase = 'paused_system';
    return true;
  }

  /** The imageio server that served a transfer (kept after it ended, for its counters). */
  imageioServer(transferId: string): ImageioServer | undefined {
    return this.servers.get(transferId);
  }

  state(): FakeEngineState {
    return {
      disks: [...this.disks.values()].map((d) => ({ ...d })),
      transfers: [...this.transfers.values()].map((t) => ({ ...t })),
      hosts: this.hosts.map((h) => ({
        id: h.id,
        name: h.name,
        status: h.status,
        hardwareUuid: h.hardwareUuid,
        vdsmId: h.vdsmId,
        ...this.hostCounters.get(h.name)!,
        linkBytes: this.links.get(h.name)?.bytes ?? 0,
      })),
      storageDomain: { id: this.sd.id, name: this.sd.name },
      ...this.counters,
      requests: [...this.requests],
    };
  }

  // ---- HTTP --------------------------------------------------------------------------

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let answer: Answer;
    try {
      const raw = await readBody(req);
      const url = new URL(req.url ?? '/', 'http://x');
      const method = req.method ?? 'GET';
      if (url.pathname === '/ovirt-engine/sso/oauth/token' && method === 'POST') answer = this.ssoToken(raw);
      else if (url.pathname === '/ovirt-engine/services/sso-logout' && method === 'POST') answer = this.ssoLogout(raw);
      else if (url.pathname === API || url.pathname.startsWith(`${API}/`)) {
        const rest = url.pathname.slice(API.length).replace(/\/+$/, '');
        this.requests.push(`${method} ${rest || '/'}`);
        if (this.requests.length > MAX_REQUESTS_KEPT) this.requests.splice(0, this.requests.length - MAX_REQUESTS_KEPT);
        const token = /^Bearer\s+(\S+)$/i.exec(req.headers.authorization ?? '')?.[1];
        if (!token || !this.tokens.has(token)) {
          this.counters.unauthorized++;
          answer = {
            status: 401,
            headers: { 'content-type': 'text/html;charset=utf-8', 'www-authenticate': 'Bearer' },
            body: '<html><head><title>Error</title></head><body>Unauthorized</body></html>',
          };
        } else {
          let body: Json | undefined;
          if (raw.length) {
            try {
              body = JSON.parse(raw.toString('utf8')) as Json;
            } catch {
              throw new Fault(400, 'Bad Request', 'The request body is not valid JSON (only JSON is supported here)');
            }
          }
          answer = await this.route(method, rest.split('/').filter(Boolean).map(decodeURIComponent), url.searchParams, body);
        }
      } else {
        answer = { status: 404, body: faultJson('Not Found', `No handler for ${url.pathname}`) };
      }
    } catch (err) {
      if (err instanceof Fault) answer = { status: err.status, body: faultJson(err.reason, err.detail) };
      else {
        this.log.error({ err }, 'fake engine: request failed');
        answer = { status: 500, body: faultJson('Internal Server Error', (err as Error).message) };
      }
    }
    if (answer.drop) {
      res.socket?.destroy();
      return;
    }
    const text = answer.body === undefined ? '' : typeof answer.body === 'string' ? answer.body : JSON.stringify(answer.body, null, 2);
    res.writeHead(answer.status, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(text),
      ...answer.headers,
    });
    res.end(text);
  }

  /** POST /ovirt-engine/sso/oauth/token: the OAuth password grant. */
  private ssoToken(raw: Buffer): Answer {
    const form = new URLSearchParams(raw.toString('utf8'));
    if (form.get('grant_type') !== 'password' || form.get('scope') !== 'ovirt-app-api') {
      return { status: 400, body: { error_code: 'invalid_request', error: 'Only the password grant with scope ovirt-app-api is supported.' } };
    }
    if (form.get('username') !== this.username || form.get('password') !== this.password) {
      this.counters.failedLogins++;
      return {
        status: 400,
        body: { error_code: 'access_denied', error: `Cannot authenticate user '${form.get('username') ?? ''}': The username or password is incorrect.` },
      };
    }
    const token = randomBytes(24).toString('base64url');
    this.tokens.add(token);
    this.counters.logins++;
    return { status: 200, body: { access_token: token, scope: 'ovirt-app-api', exp: String(Date.now() + 3600_000), token_type: 'bearer' } };
  }

  private ssoLogout(raw: Buffer): Answer {
    const token = new URLSearchParams(raw.toString('utf8')).get('token');
    if (token && this.tokens.delete(token)) this.counters.logouts++;
    return { status: 200, body: {} };
  }

  private async route(method: string, p: string[], q: URLSearchParams, body: Json | undefined): Promise<Answer> {
    const [kind, id, action] = p;
    const ok = (b: unknown, status = 200): Answer => ({ status, body: b });
    const search = () => {
      try {
        return parseSearch(q.get('search'));
      } catch (err) {
        throw new Fault(400, 'Bad Request', (err as Error).message);
      }
    };
    const filtered = <T>(items: T[], fields: Record<string, (x: T) => string | undefined>) => {
      try {
        return filterBySearch(items, search(), fields);
      } catch (err) {
        if (err instanceof SearchError) throw new Fault(400, 'Bad Request', err.message);
        throw err;
      }
    };
    const route = `${method} ${kind ?? ''}${id !== undefined ? '/{id}' : ''}${action !== undefined ? `/${action}` : ''}`;
    switch (route) {
      case 'GET ':
        return ok({
          product_info: { name: 'oVirt Engine', vendor: 'imageio-nbd (fake engine)', version: { major: '4', minor: '5', build: '0', revision: '0' } },
          time: new Date().toISOString(),
          link: ['disks', 'storagedomains', 'datacenters', 'hosts', 'imagetransfers'].map((r) => ({ href: `${API}/${r}`, rel: r })),
        });
      case 'GET disks':
        return ok(collection('disk', filtered([...this.disks.values()], { name: (d) => d.name, alias: (d) => d.name, id: (d) => d.id }).map((d) => this.diskJson(d))));
      case 'GET disks/{id}':
        return ok(this.diskJson(this.disk(id)));
      case 'POST disks':
        return this.createDisk(body ?? {});
      case 'DELETE disks/{id}':
        return this.removeDisk(this.disk(id));
      case 'GET storagedomains':
        return ok(collection('storage_domain', filtered([this.sd], { name: (s) => s.name, datacenter: () => this.dc.name }).map(() => this.sdJson())));
      case 'GET storagedomains/{id}':
        if (id !== this.sd.id) throw notFound(id);
        return ok(this.sdJson());
      // An ordinary user sees only objects with a permission for it (the query runs filtered:
      // QueriesCommandBase.validatePermissions); here none, for data centers and hosts.
      case 'GET datacenters':
        return ok(collection('data_center', this.admin ? filtered([this.dc], { name: (d) => d.name }).map(dataCenterJson) : []));
      case 'GET datacenters/{id}':
        if (id !== this.dc.id || !this.admin) throw notFound(id);
        return ok(dataCenterJson(this.dc));
      case 'GET clusters/{id}':
        if (id !== this.cluster.id) throw notFound(id);
        return ok(clusterJson(this.cluster));
      case 'GET hosts':
        return ok(
          collection(
            'host',
            filtered(this.admin ? this.hosts : [], {
              name: (h) => h.name,
              status: (h) => h.status,
              datacenter: () => this.dc.name,
              cluster: () => this.cluster.name,
              // searchbackend VdsConditionFieldAutoCompleter: HW_ID is the column vds_unique_id.
              hw_id: (h) => h.vdsmId,
            }).map(hostJson),
          ),
        );
      case 'GET hosts/{id}':
        if (!this.admin) throw notFound(id);
        return ok(hostJson(this.host(id)));
      case 'GET imagetransfers':
        // GetAllImageTransfers is QueryAuthType.Admin (QueryType.java): a filtered query of an
        // ordinary user fails the permission check, which the REST layer answers with 400.
        if (!this.admin) throw new Fault(400, 'Operation Failed', 'Query execution failed due to insufficient permissions.');
        return ok(collection('image_transfer', [...this.transfers.values()].map((t) => transferJson(t))));
      case 'GET imagetransfers/{id}':
        return ok(transferJson(this.transfer(id)));
      case 'POST imagetransfers':
        return this.createTransfer(body ?? {});
      case 'POST imagetransfers/{id}/finalize':
      case 'POST imagetransfers/{id}/cancel':
      case 'POST imagetransfers/{id}/pause':
      case 'POST imagetransfers/{id}/resume':
      case 'POST imagetransfers/{id}/extend': {
        // A failed action answers the action itself with the fault nested in it
        // (restapi AbstractBackendActionableResource.handleError/actionFailure):
        // {"status": "failed", "fault": {"reason", "detail"}}.
        // An action on a transfer that is gone succeeds too (TransferImageStatusCommand
        // answers a missing entity with phase UNKNOWN, not an error).
        try {
          if (this.faults.actionsNotPermitted) throw new Fault(403, 'Operation Failed', '[User is not authorized to perform this action.]');
          const t = this.transfers.get(id);
          if (t) this.transferAction(t, action);
        } catch (err) {
          if (err instanceof Fault) return { status: err.status, body: { status: 'failed', fault: faultJson(err.reason, err.detail) } };
          throw err;
        }
        if (action === 'finalize' && this.faults.loseFinalizeResponse) {
          this.faults.loseFinalizeResponse = false;
          return { status: 0, drop: true };
        }
        return ok({ status: 'complete' });
      }
      default:
        throw new Fault(404, 'Not Found', `${method} ${API}/${p.join('/')} is not served by this fake engine`);
    }
  }

  // ---- Disks ---------------------------------------------------------------------------

  private disk(id: string): DiskState {
    const d = this.disks.get(id);
    if (!d) throw notFound(id);
    return d;
  }

  private diskJson(d: DiskState) {
    let actual = 0;
    try {
      actual = statSync(d.path).blocks * 512;
    } catch {
      /* removed meanwhile */
    }
    return diskJson(d, actual);
  }

  private sdJson() {
    let used = 0;
    for (const d of this.disks.values()) used += d.size;
    return storageDomainJson(this.sd, used);
  }

  private newDisk(name: string, size: number, format: 'raw' | 'cow', sparse: boolean): DiskState {
    const id = randomUUID();
    const d: DiskState = { id, imageId: randomUUID(), name, size, format, sparse, status: 'locked', storageDomainId: this.sd.id, path: path.join(this.sd.dir, id) };
    writeFileSync(d.path, '');
    truncateSync(d.path, size);
    this.disks.set(id, d);
    return d;
  }

  /** POST disks: validated like the engine's AddDisk for the attributes a floating disk needs. */
  private createDisk(b: Json): Answer {
    const size = Number(b.provisioned_size);
    if (b.provisioned_size === undefined || !Number.isSafeInteger(size) || size <= 0) {
      throw new Fault(400, 'Incomplete parameters', 'Disk [provisionedSize|size] required for add');
    }
    const sds = (b.storage_domains as Json | undefined)?.storage_domain;
    const sdRef = Array.isArray(sds) ? (sds[0] as Json | undefined) : undefined;
    if (!sdRef) throw new Fault(400, 'Incomplete parameters', 'Disk [storageDomains.storageDomain] required for add');
    if (sdRef.id !== this.sd.id && sdRef.name !== this.sd.name) throw new Fault(404, 'Operation Failed', `Entity not found: ${String(sdRef.id ?? sdRef.name)}`);
    const format = String(b.format ?? 'raw');
    if (format !== 'raw' && format !== 'cow') throw new Fault(400, 'Invalid value', `Invalid value '${format}' for parameter 'format'`);
    const name = String(b.name ?? b.alias ?? `disk${this.disks.size + 1}`);
    // Without `sparse` the disk is thin: DiskMapper sets the volume type only when sparse is
    // given, and DiskImageBase starts as VolumeType.Sparse.
    const sparse = String(b.sparse ?? 'true') === 'true';
    const backup = String(b.backup ?? 'none');
    // AddDiskCommand.checkImageConfiguration -> ImagesHandler.checkImageConfiguration: COW
    // preallocated only for incremental backup, RAW never for incremental backup (and RAW
    // sparse not on block storage, which this fake does not have).
    if ((format === 'cow' && !sparse && backup !== 'incremental') || (format === 'raw' && backup === 'incremental')) {
      const volumeType = sparse ? 'Sparse' : 'Preallocated';
      const backupName = backup === 'incremental' ? 'Incremental' : 'None';
      throw new Fault(
        409,
        'Operation Failed',
        `[Cannot add Virtual Disk. Disk configuration (${format.toUpperCase()} ${volumeType} backup-${backupName}) is incompatible with the storage domain type.]`,
      );
    }
    const d = this.newDisk(name, size, format, sparse);
    this.later(() => {
      if (d.status === 'locked' && this.disks.has(d.id)) d.status = 'ok';
    });
    return { status: 201, body: this.diskJson(d), headers: { location: `${API}/disks/${d.id}` } };
  }

  /** DELETE disks/{id}: refused while locked; the disk goes away one step later. */
  private removeDisk(d: DiskState): Answer {
    if (d.status === 'locked') {
      throw new Fault(409, 'Operation Failed', `[Cannot remove Virtual Disk. Related operation is currently in progress. Please try again later.]`);
    }
    d.status = 'locked';
    this.later(() => this.dropDisk(d));
    return { status: 200 };
  }

  private dropDisk(d: DiskState): void {
    this.disks.delete(d.id);
    rmSync(d.path, { force: true });
  }

  // ---- Hosts ---------------------------------------------------------------------------

  private host(id: string): HostState {
    const h = this.hosts.find((x) => x.id === id);
    if (!h) throw notFound(id);
    return h;
  }

  // ---- Transfers -----------------------------------------------------------------------

  private transfer(id: string): TransferState {
    const t = this.transfers.get(id);
    if (!t) throw notFound(id);
    return t;
  }

  /** POST imagetransfers (TransferDiskImageCommand.validate, then executeCommand). */
  private createTransfer(b: Json): Answer {
    const diskId = (b.disk as Json | undefined)?.id ?? (b.image as Json | undefined)?.id;
    if (typeof diskId !== 'string') throw new Fault(400, 'Incomplete parameters', 'ImageTransfer [disk.id|snapshot.id] required for add');
    const disk = this.disks.get(diskId);
    if (!disk) throw new Fault(404, 'Operation Failed', `Entity not found: ${diskId}`);
    const direction = String(b.direction ?? 'upload');
    if (direction !== 'upload' && direction !== 'download') throw new Fault(400, 'Invalid value', `Invalid value '${direction}' for parameter 'direction'`);
    if (disk.status === 'locked') {
      throw new Fault(409, 'Operation Failed', `[Cannot transfer Virtual Disk: The following disks are locked: ${disk.name}. Please try again in a few minutes.]`);
    }
    if (disk.status !== 'ok') throw new Fault(409, 'Operation Failed', `[Cannot transfer Virtual Disk. Disk ${disk.name} status is illegal. Please check the logs.]`);
    let host: HostState | undefined;
    const hostId = (b.host as Json | undefined)?.id;
    if (typeof hostId === 'string') {
      host = this.host(hostId);
      if (host.status !== 'up') throw new Fault(409, 'Operation Failed', `[Cannot transfer Virtual Disk. Host ${host.name} is not in status Up.]`);
    } else {
      // No host: a random up host of the data center that sees the storage domain
      // (TransferDiskImageCommand.checkForActiveVds -> VdsCommandsHelper.getHostForExecution).
      // Every up host here is in the one data center and sees the one domain.
      const up = this.hosts.filter((h) => h.status === 'up');
      if (up.length === 0) throw new Fault(409, 'Operation Failed', '[Cannot transfer Virtual Disk. There is no active Host in the Data Center.]');
      host = up[Math.floor(Math.random() * up.length)];
    }
    const inactivity = b.inactivity_timeout === undefined ? 60 : Number(b.inactivity_timeout);
    if (!Number.isSafeInteger(inactivity) || inactivity < 0) throw new Fault(400, 'Invalid value', `Invalid value '${String(b.inactivity_timeout)}' for parameter 'inactivity_timeout'`);
    // Engines from 4.4.5 default to legacy (executeCommand); older ones skip the unknown
    // member, as the generated JSON readers skip every unknown member (ovirt-engine-api-metamodel
    // JsonSupportGenerator: `default: reader.skip()`).
    let timeoutPolicy: string | undefined;
    if (!this.faults.noTimeoutPolicy) {
      timeoutPolicy = String(b.timeout_policy ?? 'legacy');
      if (!['legacy', 'pause', 'cancel'].includes(timeoutPolicy)) throw new Fault(400, 'Invalid value', `Invalid value '${timeoutPolicy}' for parameter 'timeout_policy'`);
    }
    const t: TransferState = {
      id: randomUUID(),
      ticket: randomUUID(),
      diskId: disk.id,
      hostId: host.id,
      requestedHostId: typeof hostId === 'string' ? hostId : undefined,
      direction,
      format: String(b.format ?? disk.format),
      phase: 'initializing',
      inactivityTimeout: inactivity,
      timeoutPolicy,
      transferred: 0,
      active: false,
      createdAt: Date.now(),
    };
    this.transfers.set(t.id, t);
    disk.status = 'locked';
    this.enter(t, 'initializing');
    return { status: 201, body: transferJson(t), headers: { location: `${API}/imagetransfers/${t.id}` } };
  }

  /**
   * The transfer enters `phase`; its handler runs one step later if the phase is still the
   * same then (the engine's callback runs the handler of the phase it finds:
   * TransferDiskImageCommand.executeStateHandler).
   */
  private enter(t: TransferState, phase: string, extraMs = 0): void {
    t.phase = phase;
    const seq = (t.seq = (t.seq ?? 0) + 1);
    this.later(async () => {
      if (t.seq !== seq || t.phase !== phase) return;
      await this.handlePhase(t);
    }, extraMs);
  }

  private async handlePhase(t: TransferState): Promise<void> {
    switch (t.phase) {
      case 'initializing':
        return this.beginSession(t);
      case 'resuming':
        return this.enter(t, 'transferring');
      case 'cancelled_user':
        return this.enter(t, 'finalizing_cleanup');
      case 'cancelled_system':
        return this.enter(t, 'finalizing_failure');
      case 'finalizing_success':
        return this.finalizingSuccess(t);
      case 'finalizing_failure':
        await this.cleanup(t);
        return this.endWithFailure(t);
      case 'finalizing_cleanup':
        await this.cleanup(t);
        if (t.phase === 'finalizing_cleanup') this.enter(t, 'finished_cleanup');
        return;
      case 'finished_cleanup':
        return this.endWithFailure(t);
    }
  }

  /** initializing -> transferring: install the ticket on the host (start its imageio). */
  private async beginSession(t: TransferState): Promise<void> {
    if (this.faults.stuckInitializing) return;
    const host = this.host(t.hostId);
    const disk = this.disks.get(t.diskId);
    if (host.status !== 'up' || !disk) return this.stoppedBySystem(t);
    let session: Session;
    try {
      session = await startSession(host, t, disk, { tls: this.opts.tls, logger: this.log, link: this.links.get(host.name) });
    } catch (err) {
      this.log.error({ err }, 'fake engine: cannot start imageio for a transfer');
      return this.stoppedBySystem(t);
    }
    if (this.closed || t.phase !== 'initializing') {
      await stopSession(session);
      return;
    }
    this.sessions.set(t.id, session);
    this.servers.set(t.id, session.server);
    const c = this.hostCounters.get(host.name)!;
    c.transfers++;
    c.maxActiveTransfers = Math.max(c.maxActiveTransfers, ++c.activeTransfers);
    const scheme = this.opts.tls ? 'https' : 'http';
    t.transferUrl = this.faults.unreachableTransferUrl ? `${scheme}://127.0.0.1:${await deadPort()}/images/${t.ticket}` : sessionUrl(session);
    t.proxyUrl = `${scheme}://127.0.0.1:${session.proxyPort}/images/${t.ticket}`;
    this.activity.set(t.id, { sig: -1, at: Date.now() });
    t.phase = 'transferring';
  }

  /** updateEntityPhaseToStoppedBySystem: an upload is paused, a download cancelled. */
  private stoppedBySystem(t: TransferState): void {
    if (t.direction === 'upload') t.phase = 'paused_system';
    else this.enter(t, 'cancelled_system');
  }

  private async endSession(t: TransferState): Promise<void> {
    const s = this.sessions.get(t.id);
    t.active = false;
    if (!s) return;
    this.sessions.delete(t.id);
    const host = this.hosts.find((h) => h.id === t.hostId);
    if (host) this.hostCounters.get(host.name)!.activeTransfers--;
    await stopSession(s);
  }

  /**
   * POST imagetransfers/{id}/ACTION (BackendImageTransferResource: each one is a
   * TransferImageStatus command setting a phase). Validation refuses only resuming a transfer
   * that is not paused and pausing a download; a phase change of a finished transfer is
   * ignored (ImageTransferUpdater.updateEntity), the answer is still 200.
   */
  private transferAction(t: TransferState, action: string): void {
    if (action === 'resume' && t.phase !== 'paused_user' && t.phase !== 'paused_system') {
      throw new Fault(409, 'Operation Failed', '[Cannot resume image transfer. The transfer is not paused.]');
    }
    if (action === 'pause' && t.direction === 'download') {
      throw new Fault(409, 'Operation Failed', '[Cannot pause image transfer. Pausing a download is not supported.]');
    }
    if (FINISHED.has(t.phase)) return;
    switch (action) {
      case 'finalize':
        return this.enter(t, 'finalizing_success', this.faults.finalizeDelayMs);
      case 'cancel':
        return this.enter(t, 'cancelled_user');
      case 'pause':
        t.phase = 'paused_user';
        return;
      case 'resume':
        if (!this.sessions.has(t.id)) return; // the host lost the ticket: it stays paused
        return this.enter(t, 'resuming');
      case 'extend':
        return;
    }
  }

  /** handleFinalizingSuccess: remove the ticket, verify an upload; then endSuccessfully, or finalizing_failure. */
  private async finalizingSuccess(t: TransferState): Promise<void> {
    await this.endSession(t);
    const disk = this.disks.get(t.diskId);
    if (t.phase !== 'finalizing_success') return;
    if (this.faults.finalizeFails && t.direction === 'upload') {
      if (disk) disk.status = 'illegal';
      return this.enter(t, 'finalizing_failure');
    }
    if (disk) disk.status = 'ok';
    t.phase = 'finished_success';
    t.finishedAt = Date.now();
  }

  /** cleanup(): remove the ticket; an upload's disk becomes illegal, a download's ok again. */
  private async cleanup(t: TransferState): Promise<void> {
    await this.endSession(t);
    const disk = this.disks.get(t.diskId);
    if (disk) disk.status = t.direction === 'upload' ? 'illegal' : 'ok';
  }

  /** endWithFailure: a failed upload removes its disk (also a disk that existed before). */
  private endWithFailure(t: TransferState): void {
    const disk = this.disks.get(t.diskId);
    if (disk) {
      if (t.direction === 'upload') this.dropDisk(disk);
      else disk.status = 'ok';
    }
    t.phase = 'finished_failure';
    t.finishedAt = Date.now();
  }

  /**
   * The engine's monitoring of a transferring ticket (pollTransferStatus ->
   * stopTransferIfNecessary): a ticket idle (imageio's idle_time: no operation running and
   * none completed, and no OPTIONS, for longer than inactivity_timeout) is stopped per its
   * timeout_policy. imageio counts OPTIONS as activity ("Accessing ticket options considered as
   * client activity": ovirt-imageio handlers/images.py, ticket.touch()).
   */
  private checkTransfers(): void {
    const now = Date.now();
    for (const t of this.transfers.values()) {
      if (t.finishedAt !== undefined && now - t.finishedAt > this.finishedTtlMs) {
        this.transfers.delete(t.id);
        this.servers.delete(t.id);
        this.activity.delete(t.id);
        continue;
      }
      const s = this.sessions.get(t.id);
      if (!POLLED.has(t.phase) || !s) continue;
      const st = s.server.stats();
      const count = (r: Record<string, number>, keys: string[]) => keys.reduce((n, k) => n + (r[k] ?? 0), 0);
      const received = count(st.methods, ['GET', 'PUT', 'PATCH', 'OPTIONS']);
      const answered = Object.values(st.statuses).reduce((n, v) => n + v, 0);
      const sig = count(st.methods, ['GET', 'PUT', 'PATCH', 'OPTIONS']) + count(st.ops, ['read', 'write', 'zero', 'flush']);
      t.active = received > answered;
      t.transferred = t.direction === 'upload' ? st.bytesWritten : st.bytesRead;
      const a = this.activity.get(t.id) ?? { sig: -1, at: now };
      if (a.sig !== sig || t.active) this.activity.set(t.id, { sig, at: now });
      else if (t.inactivityTimeout > 0 && now - a.at > t.inactivityTimeout * 1000) {
        this.log.debug({ transfer: t.id, idleMs: now - a.at, policy: t.timeoutPolicy }, 'fake engine: transfer inactive');
        switch (t.timeoutPolicy ?? 'legacy') {
          case 'legacy':
            if (t.direction === 'download') this.enter(t, 'cancelled_system');
            else t.phase = 'paused_system';
            break;
          case 'pause':
            t.phase = 'paused_system';
            break;
          case 'cancel':
            this.enter(t, 'cancelled_system');
            break;
        }
      }
    }
  }

  /** Run `fn` one step (and `extraMs`) later; tracked so close() can wait for it. */
  private later(fn: () => void | Promise<void>, extraMs = 0): void {
    if (this.closed) return;
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      if (this.closed) return;
      const p = Promise.resolve()
        .then(fn)
        .catch((err) => this.log.error({ err }, 'fake engine: step failed'))
        .finally(() => this.pending.delete(p));
      this.pending.add(p);
    }, this.stepMs + extraMs);
    this.timers.add(timer);
  }
}

function notFound(id: string): Fault {
  return new Fault(404, 'Operation Failed', `Entity not found: ${id}`);
}

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let n = 0;
    req.on('data', (c: Buffer) => {
      n += c.length;
      if (n > MAX_BODY) {
        reject(new Fault(413, 'Request Entity Too Large', 'request body too large'));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}
