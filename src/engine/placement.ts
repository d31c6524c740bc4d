/**
 * Which host runs the image transfer. Choosing one is an optimization: when any step cannot be
 * taken (the user may not list hosts or transfers, or sees none), no host is sent and the
 * engine picks one itself, as virt-v2v and the SDK do (find_host() in the SDK's
 * examples/helpers/imagetransfer.py returns None; create_transfer() then sends no host). The
 * engine then picks a random up host of the data center that sees the storage domain
 * (ovirt-engine TransferDiskImageCommand.checkForActiveVds -> VdsCommandsHelper.getHostForExecution).
 *
 * 1. The data center: the disk's storage domain's (GET storagedomains/{id}, datacenters/{id}).
 * 2. This machine, if it is an up host of that data center: its vdsm id (/etc/vdsm/vdsm.id,
 *    vdsm's unique id, written by host deploy, random when the SMBIOS UUID is missing or shared)
 *    is searched as `hw_id=ID and datacenter=DC and status=up`, exactly as find_host() does
 *    (the engine's hw_id search matches vds_unique_id, not hardware_information.uuid:
 *    searchbackend VdsConditionFieldAutoCompleter). The data then goes over imageio's unix socket.
 * 3. Otherwise the least busy up host of the data center: the fewest transfers in
 *    initializing or transferring (paused and finished ones hold no imageio work), ties broken
 *    at random so that runs started together spread out. Listing all transfers is an admin
 *    query (GetAllImageTransfers is QueryAuthType.Admin in QueryType.java).
 * --host NAME overrides all of this; it must name an up host of the data center.
 *
 * choosePlacement() returns the host (or none) and the one line logged about the choice, e.g.
 * "host2: 1 active transfer, chosen over host1: 3, host3: 2".
 */
import { readFileSync } from 'node:fs';
import { EngineError, describeError } from '../core/errors';
import type { DataCenter, Disk, Host, ImageTransfer, StorageDomain } from './api-types';

/** Where vdsm keeps its unique id (vdsm's constants; read by the SDK's find_host()). */
export const VDSM_ID_FILE = '/etc/vdsm/vdsm.id';

/** Transfer phases that occupy a host's imageio. */
export const BUSY_PHASES: ReadonlySet<string> = new Set(['initializing', 'transferring']);

/** The engine queries placement needs (EngineClient has them). */
export interface PlacementQueries {
  getStorageDomain(id: string): Promise<StorageDomain | undefined>;
  getDataCenter(id: string): Promise<DataCenter | undefined>;
  listHosts(search: string): Promise<Host[]>;
  listTransfers(): Promise<ImageTransfer[]>;
}

export interface PlacementOptions {
  /** --host NAME. */
  forced?: string;
  /** This machine's vdsm id, if it has one. */
  vdsmId?: string;
  /** [0, 1); Math.random by default. */
  random?: () => number;
}

export interface Placement {
  /** Undefined: send no host, the engine chooses. */
  host?: Host;
  /** The host is this machine: imageio's unix socket can be used. */
  local: boolean;
  line: string;
}

/** Busy (initializing or transferring) transfers per host id. */
export function activeTransfersPerHost(transfers: ImageTransfer[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const t of transfers) {
    if (!t.hostId || !BUSY_PHASES.has(t.phase)) continue;
    counts.set(t.hostId, (counts.get(t.hostId) ?? 0) + 1);
  }
  return counts;
}

const plural = (n: number) => `${n} active transfer${n === 1 ? '' : 's'}`;
const byName = (a: Host, b: Host) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);

/**
 * The host of `candidates` (not empty) with the least `load`, at random among equals (so runs
 * started together spread out); `tied`: how many shared that load.
 */
export function pickLeastLoaded(candidates: Host[], load: (h: Host) => number, random: () => number = Math.random): { host: Host; tied: number } {
  const min = Math.min(...candidates.map(load));
  const ties = candidates.filter((h) => load(h) === min).sort(byName);
  return { host: ties[Math.min(ties.length - 1, Math.floor(random() * ties.length))], tied: ties.length };
}

/** The least busy of `candidates` (not empty), ties broken with `random`. */
export function leastBusy(candidates: Host[], transfers: ImageTransfer[], dataCenter: string, random: () => number = Math.random): Placement {
  const counts = activeTransfersPerHost(transfers);
  const busy = (h: Host) => counts.get(h.id) ?? 0;
  const { host, tied } = pickLeastLoaded(candidates, busy, random);
  const rest = candidates
    .filter((h) => h !== host)
    .sort(byName)
    .map((h) => `${h.name}: ${busy(h)}`)
    .join(', ');
  if (!rest) return { host, local: false, line: `${host.name}: ${plural(busy(host))}, the only up host in data center ${dataCenter}` };
  return { host, local: false, line: `${host.name}: ${plural(busy(host))}, chosen over ${rest}${tied > 1 ? ' (ties broken at random)' : ''}` };
}

function noHost(reason: string): Placement {
  return { local: false, line: `no host chosen, the engine picks one: ${reason}` };
}

/** An error's message as it reads in a line (no code suffix). */
function why(err: unknown): string {
  return err instanceof Error ? err.message : describeError(err);
}

/** A value in the engine's search language: quoted when it has spaces. */
export function searchValue(v: string): string {
  return /[\s"]/.test(v) ? `"${v.replace(/"/g, '\\"')}"` : v;
}

/** Step 1: the data center of the disk's storage domain; throws a plain Error saying what is not visible. */
export async function findDataCenter(q: Pick<PlacementQueries, 'getStorageDomain' | 'getDataCenter'>, disk: Disk): Promise<DataCenter> {
  const sdId = disk.storageDomainIds[0];
  if (!sdId) throw new Error(`disk ${disk.id} names no storage domain`);
  const sd = await q.getStorageDomain(sdId);
  if (!sd) throw new Error(`storage domain ${sdId} of disk ${disk.id} is not visible to this user`);
  const dcId = sd.dataCenterIds[0];
  if (!dcId) throw new Error(`storage domain ${sd.name} is not attached to a data center`);
  const found = await q.getDataCenter(dcId);
  if (!found) throw new Error(`data center ${dcId} of storage domain ${sd.name} is not visible to this user`);
  return found;
}

/** An error's message as it reads in a line (no code suffix). */
export function reasonOf(err: unknown): string {
  return why(err);
}

/** Steps 1-3 above; only --host can make it fail. */
export async function choosePlacement(q: PlacementQueries, disk: Disk, opts: PlacementOptions = {}): Promise<Placement> {
  const { forced } = opts;
  let dc: DataCenter;
  try {
    dc = await findDataCenter(q, disk);
  } catch (err) {
    if (forced !== undefined) throw new EngineError('ERR_PLACEMENT', `--host ${forced}: cannot find the data center of disk ${disk.id}: ${why(err)}`);
    return noHost(`cannot find the data center of disk ${disk.id} (${why(err)})`);
  }
  const inDc = `datacenter=${searchValue(dc.name)} and status=up`;

  let candidates: Host[];
  try {
    candidates = (await q.listHosts(inDc)).filter((h) => h.status === 'up');
  } catch (err) {
    if (forced !== undefined) throw err;
    return noHost(`cannot list the hosts of data center ${dc.name} (${why(err)})`);
  }

  if (forced !== undefined) {
    const host = candidates.find((h) => h.name === forced);
    if (!host) {
      const names = candidates.map((h) => h.name).sort();
      throw new EngineError(
        'ERR_PLACEMENT',
        `--host ${forced} is not an up host of data center ${dc.name}` + (names.length ? ` (up hosts: ${names.join(', ')})` : ' (this user sees no up host there)'),
      );
    }
    return { host, local: opts.vdsmId !== undefined && (await isThisMachine(q, host, opts.vdsmId, inDc)), line: `${host.name}: chosen by --host` };
  }

  if (opts.vdsmId !== undefined) {
    try {
      const [local] = (await q.listHosts(`hw_id=${searchValue(opts.vdsmId)} and ${inDc}`)).filter((h) => h.status === 'up');
      if (local) return { host: local, local: true, line: `${local.name}: this machine (vdsm id ${opts.vdsmId}), chosen` };
    } catch {
      /* not found this way: choose among the others */
    }
  }

  if (candidates.length === 0) return noHost(`this user sees no up host in data center ${dc.name}`);
  let transfers: ImageTransfer[];
  try {
    transfers = await q.listTransfers();
  } catch (err) {
    return noHost(`cannot list the image transfers to find the least busy host (${why(err)})`);
  }
  return leastBusy(candidates, transfers, dc.name, opts.random);
}

async function isThisMachine(q: PlacementQueries, host: Host, vdsmId: string, inDc: string): Promise<boolean> {
  try {
    return (await q.listHosts(`hw_id=${searchValue(vdsmId)} and ${inDc}`)).some((h) => h.id === host.id);
  } catch {
    return false;
  }
}

/**
 * vdsm's unique id from `file` (normally /etc/vdsm/vdsm.id), or undefined when this machine is
 * not an oVirt host (or the file cannot be read: the transfer then simply does not use the
 * local host).
 */
export function readVdsmId(file: string = VDSM_ID_FILE): string | undefined {
  try {
    const id = readFileSync(file, 'utf8').split('\n')[0].trim();
    return id || undefined;
  } catch {
    return undefined;
  }
}
