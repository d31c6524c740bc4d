/**
 * A small client for the oVirt engine's REST API (v4, JSON), on undici: one keep-alive
 * connection to the engine, verified with the given CA.
 *
 * What it promises:
 * - Login is the OAuth password grant the SDKs use: POST /ovirt-engine/sso/oauth/token with a
 *   form body grant_type=password, scope=ovirt-app-api, username, password and
 *   `Accept: application/json`; the answer's access_token is sent as `Authorization: Bearer`.
 *   (python-ovirt-engine-sdk4, lib/ovirtsdk4/__init__.py, Connection._get_access_token; SSO
 *   errors come as {"error_code", "error"} or, OpenID style, {"error", "error_description"}.)
 * - A 401 on an API request means the token expired: log in again and resend that request
 *   once, as the SDK does (Connection.__wait).
 * - Every request has `Accept: application/json` and `Version: 4`; bodies are JSON.
 * - A GET lost to a network error is retried twice; other requests are not.
 * - An error status becomes an EngineError whose message carries the method, the path and the
 *   engine's fault in one line: {"reason", "detail"} at the top of the answer (REST API guide
 *   3.10 "Handling errors"), or nested in the answer to an action,
 *   {"status": "failed", "fault": {"reason", "detail"}} (ovirt-engine restapi
 *   AbstractBackendActionableResource.handleError -> actionFailure). The engine's JSON itself is
 *   never printed. A 404 on a single object is `undefined` from the getters instead.
 * - logout() revokes the token (POST /ovirt-engine/services/sso-logout, as Connection.close()).
 *
 * Endpoints (API model services: https://github.com/oVirt/ovirt-engine-api-model,
 * src/main/java/services; rendered at http://ovirt.github.io/ovirt-engine-api-model/4.5/):
 *   GET  disks/{id}, POST disks, DELETE disks/{id}        DiskService, DisksService
 *   GET  storagedomains?search=name=N, storagedomains/{id}  StorageDomainsService, StorageDomainService
 *   GET  datacenters/{id}                                  DataCenterService
 *   GET  hosts?search=..., hosts/{id}                      HostsService, HostService
 *   GET  imagetransfers, imagetransfers/{id}               ImageTransfersService, ImageTransferService
 *   POST imagetransfers, imagetransfers/{id}/finalize|cancel
 */
import { readFileSync } from 'node:fs';
import { Client } from 'undici';
import { CERTIFICATE_ERROR_CODES, ConfigError, EngineError, describeError } from '../core/errors';
import type { Logger } from '../core/log';
import { silentLogger } from '../core/log';
import {
  members,
  toDataCenter,
  toDisk,
  toHost,
  toStorageDomain,
  toTransfer,
  type DataCenter,
  type Disk,
  type Host,
  type ImageTransfer,
  type Json,
  type StorageDomain,
} from './api-types';

export interface EngineClientOptions {
  /** https://engine.example.com/ovirt-engine/api */
  apiUrl: string;
  username: string;
  password: string;
  cafile?: string;
  insecure?: boolean;
  /** Default 10000. */
  connectTimeoutMs?: number;
  /** Default 60000. */
  requestTimeoutMs?: number;
  logger?: Logger;
}

export interface NewDiskSpec {
  name: string;
  size: number;
  format: 'raw' | 'cow';
  sparse: boolean;
  storageDomainId: string;
}

export interface NewTransferSpec {
  diskId: string;
  direction: 'upload' | 'download';
  hostId?: string;
  /** Seconds; 0 turns the check off. */
  inactivityTimeout: number;
  /** What the engine does once the client was idle for inactivityTimeout (engines from 4.4.5). */
  timeoutPolicy?: 'legacy' | 'pause' | 'cancel';
}

const SSO_TOKEN_PATH = '/ovirt-engine/sso/oauth/token';
const SSO_LOGOUT_PATH = '/ovirt-engine/services/sso-logout';
const MAX_BODY = 4 << 20;

interface Reply {
  status: number;
  json?: Json;
  text: string;
}

export class EngineClient {
  readonly origin: string;
  private readonly apiPath: string;
  private readonly client: Client;
  private readonly log: Logger;
  private token?: string;
  /** Logins done, for logs and tests. */
  logins = 0;

  constructor(private readonly opts: EngineClientOptions) {
    const u = new URL(opts.apiUrl);
    this.origin = u.origin;
    this.apiPath = u.pathname.replace(/\/+$/, '');
    this.log = opts.logger ?? silentLogger();
    let ca: Buffer | undefined;
    if (u.protocol === 'https:' && opts.cafile && !opts.insecure) {
      try {
        ca = readFileSync(opts.cafile);
      } catch (err) {
        throw new ConfigError(`cannot read CA file ${opts.cafile}: ${describeError(err)}`);
      }
    }
    const timeout = opts.requestTimeoutMs ?? 60_000;
    this.client = new Client(this.origin, {
      connect: { timeout: opts.connectTimeoutMs ?? 10_000, ...(ca ? { ca } : {}), ...(opts.insecure ? { rejectUnauthorized: false } : {}) },
      headersTimeout: timeout,
      bodyTimeout: timeout,
      keepAliveTimeout: 30_000,
    });
  }

  // ---- Session -------------------------------------------------------------------------

  /** Get a new access token with the password grant. */
  async login(): Promise<void> {
    const body = new URLSearchParams({
      grant_type: 'password',
      scope: 'ovirt-app-api',
      username: this.opts.username,
      password: this.opts.password,
    }).toString();
    const r = await this.send('POST', SSO_TOKEN_PATH, {
      headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
      body,
    });
    const j = r.json ?? {};
    const token = typeof j.access_token === 'string' ? j.access_token : undefined;
    if (r.status !== 200 || !token) {
      // OpenID style {"error", "error_description"}, else OAuth style {"error_code", "error"}.
      const detail =
        typeof j.error_description === 'string'
          ? `${String(j.error)}: ${j.error_description}`
          : j.error !== undefined
            ? `${String(j.error_code ?? 'error')}: ${String(j.error)}`
            : `HTTP ${r.status}${r.text ? `: ${r.text.slice(0, 200)}` : ''}`;
      throw new EngineError('ERR_ENGINE_AUTH', `login to the engine as ${this.opts.username} failed: ${detail}`, r.status);
    }
    this.token = token;
    this.logins++;
    this.log.debug({ engine: this.origin, user: this.opts.username }, 'engine login');
  }

  /** Revoke the access token (best effort: errors are only logged). */
  async logout(): Promise<void> {
    if (!this.token) return;
    const body = new URLSearchParams({ scope: 'ovirt-app-api', token: this.token }).toString();
    this.token = undefined;
    try {
      await this.send('POST', SSO_LOGOUT_PATH, {
        headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
        body,
      });
    } catch (err) {
      this.log.debug({ err: describeError(err) }, 'engine logout failed');
    }
  }

  async close(): Promise<void> {
    await this.client.close().catch(() => this.client.destroy());
  }

  // ---- Typed calls ---------------------------------------------------------------------

  async getDisk(id: string): Promise<Disk | undefined> {
    const j = await this.getOne(`/disks/${enc(id)}`);
    return j && toDisk(j);
  }

  /** POST disks (DisksService.add): a floating disk on one storage domain; it starts `locked`. */
  async createDisk(spec: NewDiskSpec): Promise<Disk> {
    const body = {
      name: spec.name,
      alias: spec.name,
      description: 'Uploaded by imageio-nbd',
      content_type: 'data',
      format: spec.format,
      sparse: spec.sparse,
      provisioned_size: spec.size,
      // Needed only on block storage for qcow2, where the volume starts this big (upload_disk.py).
      ...(spec.format === 'cow' ? { initial_size: spec.size } : {}),
      storage_domains: { storage_domain: [{ id: spec.storageDomainId }] },
    };
    const r = await this.call('POST', '/disks', { body });
    return toDisk(expectObject(r, 'POST /disks'));
  }

  /** DELETE disks/{id}. False when the disk is gone already. */
  async removeDisk(id: string): Promise<boolean> {
    try {
      await this.call('DELETE', `/disks/${enc(id)}`);
      return true;
    } catch (err) {
      if (err instanceof EngineError && err.status === 404) return false;
      throw err;
    }
  }

  /** The storage domain with exactly this name (the search matches case-insensitively and by pattern). */
  async findStorageDomain(name: string): Promise<StorageDomain | undefined> {
    const r = await this.call('GET', '/storagedomains', { query: { search: `name=${name}` } });
    return members(r.json, 'storage_domain')
      .map(toStorageDomain)
      .find((sd) => sd.name === name);
  }

  async getStorageDomain(id: string): Promise<StorageDomain | undefined> {
    const j = await this.getOne(`/storagedomains/${enc(id)}`);
    return j && toStorageDomain(j);
  }

  async getDataCenter(id: string): Promise<DataCenter | undefined> {
    const j = await this.getOne(`/datacenters/${enc(id)}`);
    return j && toDataCenter(j);
  }

  /** GET hosts?search=... (the engine's search language, e.g. "datacenter=Default and status=up"). */
  async listHosts(search?: string): Promise<Host[]> {
    // An ordinary user's host list is filtered to the hosts it has permissions on (often none).
    const r = await this.call('GET', '/hosts', search !== undefined ? { query: { search } } : {});
    return members(r.json, 'host').map(toHost);
  }

  async getHost(id: string): Promise<Host | undefined> {
    const j = await this.getOne(`/hosts/${enc(id)}`);
    return j && toHost(j);
  }

  async listTransfers(): Promise<ImageTransfer[]> {
    const r = await this.call('GET', '/imagetransfers');
    return members(r.json, 'image_transfer').map(toTransfer);
  }

  async getTransfer(id: string): Promise<ImageTransfer | undefined> {
    const j = await this.getOne(`/imagetransfers/${enc(id)}`);
    return j && toTransfer(j);
  }

  /**
   * POST imagetransfers (ImageTransfersService.add). format=raw always: imageio then serves the
   * disk's guest data through qemu-nbd whatever the disk format (raw or qcow2), which is what an
   * NBD export must be (imagetransfer.py create_transfer in the SDK examples does the same).
   */
  async createTransfer(spec: NewTransferSpec): Promise<ImageTransfer> {
    const body: Json = {
      disk: { id: spec.diskId },
      direction: spec.direction,
      format: 'raw',
      inactivity_timeout: spec.inactivityTimeout,
      ...(spec.timeoutPolicy ? { timeout_policy: spec.timeoutPolicy } : {}),
      ...(spec.hostId ? { host: { id: spec.hostId } } : {}),
    };
    const r = await this.call('POST', '/imagetransfers', { body });
    return toTransfer(expectObject(r, 'POST /imagetransfers'));
  }

  /** POST imagetransfers/{id}/finalize or /cancel with an empty action. */
  async transferAction(id: string, action: 'finalize' | 'cancel'): Promise<void> {
    await this.call('POST', `/imagetransfers/${enc(id)}/${action}`, { body: {} });
  }

  // ---- HTTP ----------------------------------------------------------------------------

  private async getOne(path: string): Promise<Json | undefined> {
    try {
      return expectObject(await this.call('GET', path), `GET ${path}`);
    } catch (err) {
      if (err instanceof EngineError && err.status === 404) return undefined;
      throw err;
    }
  }

  /** An API request with the session token; a 401 logs in again and resends it once. */
  private async call(
    method: 'GET' | 'POST' | 'DELETE',
    path: string,
    opts: { body?: unknown; query?: Record<string, string> } = {},
  ): Promise<Reply> {
    const qs = opts.query ? `?${new URLSearchParams(opts.query).toString()}` : '';
    const full = `${this.apiPath}${path}${qs}`;
    for (let attempt = 0; ; attempt++) {
      if (!this.token) await this.login();
      const headers: Record<string, string> = {
        accept: 'application/json',
        version: '4',
        authorization: `Bearer ${this.token}`,
      };
      let body: string | undefined;
      if (opts.body !== undefined) {
        headers['content-type'] = 'application/json';
        body = JSON.stringify(opts.body);
      }
      const r = await this.send(method, full, { headers, body });
      if (r.status === 401 && attempt === 0) {
        this.log.debug({ method, path: full }, 'engine answered 401: the token expired; logging in again');
        this.token = undefined;
        continue;
      }
      if (r.status >= 400) throw engineHttpError(method, path, r);
      return r;
    }
  }

  /** One HTTP exchange; GETs lost to a network error are retried twice. */
  private async send(method: string, path: string, req: { headers: Record<string, string>; body?: string }): Promise<Reply> {
    const retries = method === 'GET' ? 2 : 0;
    for (let attempt = 0; ; attempt++) {
      const started = Date.now();
      try {
        const res = await this.client.request({ method: method as 'GET', path, headers: req.headers, body: req.body });
        const buf = Buffer.from(await res.body.arrayBuffer());
        const text = buf.subarray(0, MAX_BODY).toString('utf8');
        let json: Json | undefined;
        const type = String(res.headers['content-type'] ?? '');
        if (text.trim() !== '' && (type.includes('json') || /^\s*[{[]/.test(text))) {
          try {
            const parsed: unknown = JSON.parse(text);
            if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) json = parsed as Json;
          } catch {
            /* not JSON: callers report the text */
          }
        }
        this.log.debug({ method, path: path.split('?')[0], status: res.statusCode, ms: Date.now() - started }, 'engine request');
        return { status: res.statusCode, json, text };
      } catch (err) {
        const code = errorCode(err);
        if (code && CERTIFICATE_ERROR_CODES.has(code)) {
          throw new ConfigError(
            `cannot verify the TLS certificate of the engine ${this.origin} (${code}): pass the engine's CA with --cafile ` +
              `(${this.origin}/ovirt-engine/services/pki-resource?resource=ca-certificate&format=X509-PEM-CA), or --insecure`,
          );
        }
        if (attempt < retries) {
          await new Promise((r) => setTimeout(r, 500 * 2 ** attempt));
          continue;
        }
        throw new EngineError('ERR_ENGINE_UNREACHABLE', `cannot reach the engine at ${this.origin}: ${describeError(err)}`, undefined, { cause: err });
      }
    }
  }
}

function enc(id: string): string {
  return encodeURIComponent(id);
}

function expectObject(r: Reply, what: string): Json {
  if (!r.json) {
    throw new EngineError('ERR_ENGINE', `${what}: the engine's answer is not JSON (is --engine the API URL, https://ENGINE/ovirt-engine/api?)`, r.status);
  }
  return r.json;
}

/** "POST /imagetransfers: HTTP 409 Operation Failed: [Cannot transfer Virtual Disk: Disk is locked...]" */
function engineHttpError(method: string, path: string, r: Reply): EngineError {
  return new EngineError('ERR_ENGINE', `${method} ${path.split('?')[0]}: HTTP ${r.status}${faultText(r)}`, r.status);
}

/** " reason: detail" of an error answer, on one line; never the raw JSON. */
export function faultText(r: { json?: Json; text: string }): string {
  const oneLine = (s: string) => s.replace(/\s+/g, ' ').trim();
  if (r.json) {
    const nested = r.json.fault && typeof r.json.fault === 'object' ? (r.json.fault as Json) : undefined;
    for (const f of nested ? [nested, r.json] : [r.json]) {
      const reason = typeof f.reason === 'string' ? oneLine(f.reason) : '';
      const detail = typeof f.detail === 'string' ? oneLine(f.detail) : '';
      if (reason || detail) return ` ${[reason, detail].filter(Boolean).join(': ')}`;
    }
    return ' (the answer names no fault)';
  }
  const text = oneLine(r.text.replace(/<[^>]*>/g, ' '));
  if (!text) return '';
  // JSON that did not parse (cut off, or not an object): not something to show.
  if (/^[{[]/.test(text)) return ' (the answer is unreadable)';
  return ` ${text.length > 200 ? `${text.slice(0, 200).replace(/\s+\S*$/, '')}...` : text}`;
}

function errorCode(err: unknown): string | undefined {
  for (let e = err as { code?: unknown; cause?: unknown } | undefined, i = 0; e && i < 4; e = e.cause as typeof e, i++) {
    if (typeof e.code === 'string' && CERTIFICATE_ERROR_CODES.has(e.code)) return e.code;
  }
  return (err as { code?: unknown })?.code as string | undefined;
}
