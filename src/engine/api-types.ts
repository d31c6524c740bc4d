/**
 * The parts of the oVirt REST API's JSON that engine mode reads, as plain types, and the
 * functions that read them from the engine's JSON.
 *
 * JSON representation (REST API guide, "Representations", 3.5.2 "JSON representation":
 * https://access.redhat.com/documentation/en-us/red_hat_virtualization/4.4/html/rest_api_guide/common-concepts):
 * an object is a JSON object of its attributes with `id` and `href`; a link to another object is
 * `{"href": ..., "id": ...}`; a collection is `{"<singular type name>": [...]}`, and an empty one
 * can come back as `{}`. The guide shows numbers as JSON numbers, but the engine's JSON writer
 * sends every scalar as a string ("provisioned_size": "1073741824", "sparse": "true"), so every
 * reader here takes both.
 *
 * Types follow the API model (https://github.com/oVirt/ovirt-engine-api-model, src/main/java/types,
 * rendered at http://ovirt.github.io/ovirt-engine-api-model/4.5/):
 *   Disk (types/Disk.java, DiskStatus: ok, locked, illegal), Host (types/Host.java, HostStatus;
 *   hardware_information: types/HardwareInformation.java), StorageDomain (data_centers link),
 *   DataCenter, ImageTransfer (types/ImageTransfer.java; phases in types/ImageTransferPhase.java).
 */

export type Json = Record<string, unknown>;

export interface Disk {
  id: string;
  name: string;
  /** DiskStatus: ok, locked, illegal. */
  status: string;
  provisionedSize: number;
  /** DiskFormat: raw or cow. */
  format: string;
  storageDomainIds: string[];
}

export interface Host {
  id: string;
  name: string;
  /** HostStatus: up, maintenance, non_responsive, ... */
  status: string;
  /** hardware_information.uuid: the machine's SMBIOS UUID (/sys/class/dmi/id/product_uuid). */
  hardwareUuid?: string;
}

export interface StorageDomain {
  id: string;
  name: string;
  dataCenterIds: string[];
  /** storage.type: nfs, iscsi, fcp, glusterfs, posixfs, localfs... */
  storageType?: string;
}

export interface DataCenter {
  id: string;
  name: string;
}

export interface ImageTransfer {
  id: string;
  /** ImageTransferPhase: initializing, transferring, paused_system, finalizing_success, finished_success, ... */
  phase: string;
  direction?: string;
  hostId?: string;
  /**
   * The disk, which the engine sends as `image: {"id": DISK_ID}` (ovirt-engine
   * ImageTransferMapper.map: model.setImage(...).setId(entity.getDiskId())); a `disk` link is
   * read too.
   */
  diskId?: string;
  /** legacy, pause or cancel; absent from engines before 4.4.5. */
  timeoutPolicy?: string;
  /** The host's imageio daemon: https://HOST:54322/images/TICKET (set once transferring). */
  transferUrl?: string;
  /** The engine host's imageio proxy, for clients that cannot reach the host. */
  proxyUrl?: string;
  inactivityTimeout?: number;
}

/**
 * Phases after which a transfer no longer holds its host or disk. (`cancelled` is the phase
 * that engines before 4.3.5 ended a cancelled transfer in; newer ones pass through
 * cancelled_user/cancelled_system to finalizing_cleanup and a finished_* phase.)
 */
export const FINAL_PHASES: ReadonlySet<string> = new Set(['finished_success', 'finished_failure', 'finished_cleanup', 'cancelled']);

export function str(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  return undefined;
}

export function num(v: unknown): number | undefined {
  const s = str(v);
  if (s === undefined || s === '') return undefined;
  const n = Number(s);
  return Number.isFinite(n) ? n : undefined;
}

/** The id of a link attribute: {"href": ..., "id": ...}. */
export function linkId(v: unknown): string | undefined {
  return v && typeof v === 'object' ? str((v as Json).id) : undefined;
}

/** The members of a collection `{"<name>": [...]}` (also nested, as in disk.storage_domains). */
export function members(v: unknown, name: string): Json[] {
  if (!v || typeof v !== 'object') return [];
  const list = (v as Json)[name];
  return Array.isArray(list) ? (list.filter((x) => x && typeof x === 'object') as Json[]) : [];
}

export function toDisk(j: Json): Disk {
  return {
    id: str(j.id) ?? '',
    name: str(j.name) ?? str(j.alias) ?? '',
    status: str(j.status) ?? 'unknown',
    provisionedSize: num(j.provisioned_size) ?? 0,
    format: str(j.format) ?? '',
    storageDomainIds: members(j.storage_domains, 'storage_domain')
      .map((sd) => str(sd.id))
      .filter((x): x is string => !!x),
  };
}

export function toHost(j: Json): Host {
  const hw = j.hardware_information && typeof j.hardware_information === 'object' ? (j.hardware_information as Json) : {};
  return { id: str(j.id) ?? '', name: str(j.name) ?? '', status: str(j.status) ?? 'unknown', hardwareUuid: str(hw.uuid) };
}

export function toStorageDomain(j: Json): StorageDomain {
  return {
    id: str(j.id) ?? '',
    name: str(j.name) ?? '',
    dataCenterIds: members(j.data_centers, 'data_center')
      .map((dc) => str(dc.id))
      .filter((x): x is string => !!x),
    storageType: j.storage && typeof j.storage === 'object' ? str((j.storage as Json).type) : undefined,
  };
}

export function toDataCenter(j: Json): DataCenter {
  return { id: str(j.id) ?? '', name: str(j.name) ?? '' };
}

export function toTransfer(j: Json): ImageTransfer {
  return {
    id: str(j.id) ?? '',
    phase: str(j.phase) ?? 'unknown',
    direction: str(j.direction),
    hostId: linkId(j.host),
    diskId: linkId(j.image) ?? linkId(j.disk),
    timeoutPolicy: str(j.timeout_policy),
    transferUrl: str(j.transfer_url) || undefined,
    proxyUrl: str(j.proxy_url) || undefined,
    inactivityTimeout: num(j.inactivity_timeout),
  };
}
