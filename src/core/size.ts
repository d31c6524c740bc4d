/**
 * Sizes as users write them, nbdkit style: a plain byte count or a number with a binary
 * suffix (k/K = 1024, M, G, T, P, E; an optional trailing "B" or "iB" is accepted).
 */
import { ConfigError } from './errors';

const SUFFIX: Record<string, number> = {
  '': 1,
  b: 1,
  k: 2 ** 10,
  m: 2 ** 20,
  g: 2 ** 30,
  t: 2 ** 40,
  p: 2 ** 50,
  e: 2 ** 60,
};

/** Parse "8M", "1G", "4096", "1.5G". Throws ConfigError naming `what` on nonsense. */
export function parseSize(text: string | number, what = 'size'): number {
  if (typeof text === 'number') {
    if (Number.isSafeInteger(text) && text >= 0) return text;
    throw new ConfigError(`invalid ${what} ${text}: expected a whole number of bytes`);
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtTpPeE]?)(?:i?[bB])?\s*$/.exec(text);
  if (!m) throw new ConfigError(`invalid ${what} '${text}': expected bytes or a number with K, M, G, T suffix`);
  const value = Number(m[1]) * SUFFIX[m[2].toLowerCase()];
  if (!Number.isSafeInteger(value)) {
    throw new ConfigError(`invalid ${what} '${text}': not a whole number of bytes or too large`);
  }
  return value;
}

/** "8M", "48M", "4K", "1000": the form a user would type (parseSize reads it back exactly). */
export function formatSizeOption(n: number): string {
  const suffixes = ['', 'K', 'M', 'G', 'T', 'P'];
  let i = 0;
  let v = n;
  while (v >= 1024 && v % 1024 === 0 && i < suffixes.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v}${suffixes[i]}`;
}

/** n in the largest binary unit it reaches: [value, unit], unit index 0 meaning bytes. */
function scaled(n: number): [number, string, number] {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return [v, units[i], i];
}

/** "8.00 MiB", "1.50 GiB": for logs and summaries (fixed two decimals line up in columns). */
export function formatBytes(n: number): string {
  const [v, unit, i] = scaled(n);
  return i === 0 ? `${n} bytes` : `${v.toFixed(2)} ${unit}`;
}

/** "8 MiB", "1.5 GiB", "1000 bytes": the shortest exact-enough form, for one-line messages. */
export function formatSize(n: number): string {
  const [v, unit, i] = scaled(n);
  return i === 0 ? `${n} bytes` : `${Number(v.toFixed(2))} ${unit}`;
}
