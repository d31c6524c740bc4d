/**
 * The fake engine's objects and their JSON, shaped as the real engine sends them.
 *
 * Shapes follow the API model (https://github.com/oVirt/ovirt-engine-api-model/tree/master/src/main/java/types,
 * rendered at http://ovirt.github.io/ovirt-engine-api-model/4.5/#types) and the REST API guide's
 * JSON representation (3.5.2): `id` and `href` on every object, links as {"href", "id"},
 * collections as {"<singular>": [...]} (an empty collection as {}), action links under
 * "actions": {"link": [{"href", "rel"}]}. Like the real engine's JSON writer, every scalar is a
 * string ("provisioned_size": "1073741824", "sparse": "true"), which keeps clients honest.
 * Only the attributes imageio-nbd or a curious user would look at are rendered; the real
 * objects have many more.
 */

export const API = '/ovirt-engine/api';

export type DiskStatus = 'ok' | 'locked' | 'illegal';

export interface DataCenterState {
  id: string;
  name: string;
}

export interface ClusterState {
  id: string;
  name: string;
  dataCenterId: string;
}

export interface StorageDomainState {
  id: string;
  name: string;
  dataCenterId: string;
  /** Directory holding this domain's disk images. */
  dir: string;
}

export interface HostState {
  id: string;
  name: string;
  /** hardware_information.uuid: the SMBIOS UUID (HostMapper.map: entity.getHardwareUUID()). */
  hardwareUuid: string;
  /**
   * vdsm's unique id, the content of /etc/vdsm/vdsm.id: what the `hw_id` search matches
   * (ovirt-engine searchbackend VdsConditionFieldAutoCompleter: HW_ID -> vds_unique_id). Host
   * deploy writes a random one when the SMBIOS UUID is missing or shared, so it is its own value
   * here. Not in the host's JSON.
   */
  vdsmId: string;
  /** HostStatus: up, non_responsive, maintenance... */
  status: string;
  clusterId: string;
  /** Directory for this host's imageio sockets. */
  dir: string;
}

export interface DiskState {
  id: string;
  imageId: string;
  name: string;
  size: number;
  format: 'raw' | 'cow';
  sparse: boolean;
  status: DiskStatus;
  storageDomainId: string;
  /** The raw image file (every disk is stored raw here, whatever its format). */
  path: string;
}

export interface TransferState {
  id: string;
  /** imageio ticket id (the last path segment of the URLs). */
  ticket: string;
  diskId: string;
  hostId: string;
  /** The host the client asked for; undefined when the engine chose. */
  requestedHostId?: string;
  direction: 'upload' | 'download';
  format: string;
  phase: string;
  inactivityTimeout: number;
  /** legacy, pause or cancel; undefined on an engine before 4.4.5, which does not know it. */
  timeoutPolicy?: string;
  transferUrl?: string;
  proxyUrl?: string;
  /** Bytes the host's imageio moved for this transfer. */
  transferred: number;
  /** An imageio request in flight at the last check (the ticket's "active"). */
  active: boolean;
  createdAt: number;
  finishedAt?: number;
  /** Counts phase changes, so a handler runs only for the phase it was scheduled for. */
  seq?: number;
}

const link = (kind: string, id: string) => ({ href: `${API}/${kind}/${id}`, id });
const actions = (base: string, names: string[]) => ({ link: names.map((rel) => ({ href: `${base}/${rel}`, rel })) });
const s = (v: number | boolean) => String(v);

/** A collection: {"host": [...]}, or {} when empty (as the engine answers). */
export function collection(name: string, items: unknown[]): Record<string, unknown> {
  return items.length ? { [name]: items } : {};
}

/** types/Fault.java: the body of an error answer. */
export function faultJson(reason: string, detail: string) {
  return { reason, detail };
}

export function dataCenterJson(dc: DataCenterState) {
  return {
    local: 'false',
    quota_mode: 'disabled',
    status: 'up',
    storage_format: 'v5',
    version: { major: '4', minor: '7' },
    name: dc.name,
    description: 'The default Data Center',
    href: `${API}/datacenters/${dc.id}`,
    id: dc.id,
  };
}

export function clusterJson(c: ClusterState) {
  return { name: c.name, data_center: link('datacenters', c.dataCenterId), href: `${API}/clusters/${c.id}`, id: c.id };
}

export function storageDomainJson(sd: StorageDomainState, usedBytes: number) {
  return {
    available: s(1024 ** 4),
    backup: 'false',
    committed: s(usedBytes),
    master: 'true',
    storage: { address: '127.0.0.1', path: sd.dir, type: 'nfs' },
    storage_format: 'v5',
    type: 'data',
    used: s(usedBytes),
    data_centers: { data_center: [link('datacenters', sd.dataCenterId)] },
    name: sd.name,
    description: '',
    href: `${API}/storagedomains/${sd.id}`,
    id: sd.id,
  };
}

export function hostJson(h: HostState) {
  return {
    address: '127.0.0.1',
    hardware_information: {
      family: 'imageio-nbd',
      manufacturer: 'imageio-nbd',
      product_name: 'fake oVirt host',
      serial_number: h.hardwareUuid.toUpperCase(),
      uuid: h.hardwareUuid,
      version: '1',
    },
    status: h.status,
    type: 'rhel',
    cluster: link('clusters', h.clusterId),
    actions: actions(`${API}/hosts/${h.id}`, ['activate', 'deactivate', 'refresh']),
    name: h.name,
    href: `${API}/hosts/${h.id}`,
    id: h.id,
  };
}

export function diskJson(d: DiskState, actualSize: number) {
  const base = `${API}/disks/${d.id}`;
  return {
    actual_size: s(actualSize),
    alias: d.name,
    content_type: 'data',
    format: d.format,
    image_id: d.imageId,
    propagate_errors: 'false',
    provisioned_size: s(d.size),
    ...(d.format === 'cow' ? { qcow_version: 'qcow2_v3' } : {}),
    shareable: 'false',
    sparse: s(d.sparse),
    status: d.status,
    storage_type: 'image',
    total_size: s(actualSize),
    wipe_after_delete: 'false',
    storage_domains: { storage_domain: [link('storagedomains', d.storageDomainId)] },
    actions: actions(base, ['copy', 'export', 'move', 'refreshlun', 'sparsify']),
    name: d.name,
    description: '',
    link: [
      { href: `${base}/permissions`, rel: 'permissions' },
      { href: `${base}/disksnapshots`, rel: 'disksnapshots' },
      { href: `${base}/statistics`, rel: 'statistics' },
    ],
    href: base,
    id: d.id,
  };
}

/**
 * types/ImageTransfer.java, as ovirt-engine's ImageTransferMapper.map renders it: the disk as
 * `image: {id: DISK_ID}` (the disk's id, in the deprecated `image` link; there is no `disk`
 * link), `host` once a host was chosen, transfer_url and proxy_url once the ticket is on the host.
 */
export function transferJson(t: TransferState) {
  const base = `${API}/imagetransfers/${t.id}`;
  return {
    active: s(t.active),
    direction: t.direction,
    format: t.format,
    inactivity_timeout: s(t.inactivityTimeout),
    phase: t.phase,
    ...(t.proxyUrl ? { proxy_url: t.proxyUrl } : {}),
    shallow: 'false',
    ...(t.timeoutPolicy !== undefined ? { timeout_policy: t.timeoutPolicy } : {}),
    ...(t.transferUrl ? { transfer_url: t.transferUrl } : {}),
    transferred: s(t.transferred),
    actions: actions(base, ['resume', 'cancel', 'finalize', 'pause', 'extend']),
    host: link('hosts', t.hostId),
    image: { id: t.diskId },
    href: base,
    id: t.id,
  };
}
