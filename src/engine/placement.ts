/**
 * Which host runs the image transfer, following imageio's advice to backup applications
 * (ovirt-imageio docs/unix-socket.md, and find_host() in the SDK's examples/helpers/imagetransfer.py):
 *
 * 1. The candidates are the hosts that can reach the disk: the `up` hosts of the data center
 *    that the disk's storage domain belongs to.
 * 2. If this machine is one of them, use it: the transfer then goes through imageio's local
 *    unix socket. A host is this machine when its hardware_information.uuid is this machine's
 *    SMBIOS UUID (/sys/class/dmi/id/product_uuid; vdsm keeps the same value in /etc/vdsm/vdsm.id).
 * 3. Otherwise the least busy candidate: the fewest transfers that are not finished yet
 *    (ties: by name, so the choice is predictable).
 * --host NAME overrides all of this.
 *
 * choosePlacement() is pure; it returns the host and the one line logged about the choice,
 * e.g. "host2: 1 active transfer, chosen over host1: 3, host3: 2".
 */
import { readFileSync } from 'node:fs';
import { EngineError } from '../core/errors';
import { FINAL_PHASES, type Host, type ImageTransfer } from './api-types';

/** Overrides where this machine's hardware id is read (tests point it at a file of their own). */
export const PRODUCT_UUID_ENV = 'IMAGEIO_NBD_PRODUCT_UUID_FILE';
const HARDWARE_ID_FILES = ['/sys/class/dmi/id/product_uuid', '/etc/vdsm/vdsm.id'];

export interface PlacementInput {
  /** Hosts that can reach the disk (up, in the storage domain's data center). */
  candidates: Host[];
  /** Every transfer the engine knows, to count the active ones per host. */
  transfers: ImageTransfer[];
  /** This machine's hardware id, if it could be read. */
  localHardwareId?: string;
  /** --host NAME. */
  forced?: string;
  /** For messages: the data center's name. */
  dataCenter: string;
}

export interface Placement {
  host: Host;
  /** The host is this machine: imageio's unix socket can be used. */
  local: boolean;
  line: string;
}

/** Active (not finished) transfers per host id. */
export function activeTransfersPerHost(transfers: ImageTransfer[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const t of transfers) {
    if (!t.hostId || FINAL_PHASES.has(t.phase)) continue;
    counts.set(t.hostId, (counts.get(t.hostId) ?? 0) + 1);
  }
  return counts;
}

export function choosePlacement(input: PlacementInput): Placement {
  const { candidates, localHardwareId, forced, dataCenter } = input;
  const counts = activeTransfersPerHost(input.transfers);
  const busy = (h: Host) => counts.get(h.id) ?? 0;
  const plural = (n: number) => `${n} active transfer${n === 1 ? '' : 's'}`;
  const byName = (a: Host, b: Host) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
  const others = (chosen: Host) =>
    candidates
      .filter((h) => h !== chosen)
      .sort(byName)
      .map((h) => `${h.name}: ${busy(h)}`)
      .join(', ');
  const isLocal = (h: Host) => !!localHardwareId && !!h.hardwareUuid && sameId(h.hardwareUuid, localHardwareId);

  if (forced !== undefined) {
    const host = candidates.find((h) => h.name === forced);
    if (!host) {
      const names = candidates.map((h) => h.name).sort();
      throw new EngineError(
        'ERR_PLACEMENT',
        `--host ${forced} is not an active host of data center ${dataCenter}` +
          (names.length ? ` (active hosts: ${names.join(', ')})` : ' (it has no active host)'),
      );
    }
    return { host, local: isLocal(host), line: `${host.name}: ${plural(busy(host))}, chosen by --host` };
  }
  if (candidates.length === 0) {
    throw new EngineError('ERR_PLACEMENT', `no host can run the transfer: data center ${dataCenter} has no host in status up`);
  }
  const local = candidates.find(isLocal);
  if (local) {
    const rest = others(local);
    return {
      host: local,
      local: true,
      line: `${local.name}: ${plural(busy(local))}, this machine (hardware id ${localHardwareId}), chosen${rest ? ` over ${rest}` : ''}`,
    };
  }
  const host = [...candidates].sort((a, b) => busy(a) - busy(b) || byName(a, b))[0];
  const rest = others(host);
  return {
    host,
    local: false,
    line: rest ? `${host.name}: ${plural(busy(host))}, chosen over ${rest}` : `${host.name}: ${plural(busy(host))}, the only active host in data center ${dataCenter}`,
  };
}

/** SMBIOS UUIDs are compared without regard to case (dmidecode prints upper case, sysfs lower). */
function sameId(a: string, b: string): boolean {
  return a.trim().toLowerCase() === b.trim().toLowerCase();
}

/**
 * This machine's hardware id, or undefined when it cannot be read (not root: product_uuid is
 * readable by root only; not a physical or virtual machine with SMBIOS). The environment
 * variable IMAGEIO_NBD_PRODUCT_UUID_FILE names another file to read it from.
 */
export function readHardwareId(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const files = env[PRODUCT_UUID_ENV] ? [env[PRODUCT_UUID_ENV]!] : HARDWARE_ID_FILES;
  for (const f of files) {
    try {
      const id = readFileSync(f, 'utf8').split('\n')[0].trim();
      if (id) return id;
    } catch {
      /* next */
    }
  }
  return undefined;
}
