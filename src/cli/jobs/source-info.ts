/**
 * What a job's source image is, from `qemu-img info --output=json` (its "format" and
 * "virtual-size" members): raw or qcow2 decides the copying program and the new disk's size.
 * Asked before any engine call, so that a missing or unreadable source fails the run early.
 */
import { execFile } from 'node:child_process';
import { ConfigError } from '../../core/errors';

export interface SourceInfo {
  /** qemu-img's format name: raw, qcow2, ... */
  format: string;
  virtualSize: number;
}

export function sourceInfo(file: string): Promise<SourceInfo> {
  return new Promise((resolve, reject) => {
    // -U (--force-share): a source still open elsewhere (a running VM's backup) can be read.
    execFile('qemu-img', ['info', '-U', '--output=json', file], { maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
      if (err) {
        const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'qemu-img is not installed' : (stderr.trim().split('\n').pop() ?? err.message);
        reject(new ConfigError(`cannot read source ${file}: ${why}`));
        return;
      }
      try {
        const j = JSON.parse(stdout) as { format?: unknown; 'virtual-size'?: unknown };
        if (typeof j.format !== 'string' || typeof j['virtual-size'] !== 'number') throw new Error('no format or virtual-size');
        resolve({ format: j.format, virtualSize: j['virtual-size'] });
      } catch (e) {
        reject(new ConfigError(`cannot read source ${file}: qemu-img info gave no format and size (${(e as Error).message})`));
      }
    });
  });
}
