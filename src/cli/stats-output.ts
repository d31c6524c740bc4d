/** Formats the counters printed by --stats after the NBD lines: HTTP requests, and all of it as JSON records. */
import type { PayloadPool } from '../core/payload-pool';
import type { ImageioHttpStats } from '../backends/imageio';
import type { ExportStack } from '../export/open-export';
import { formatBytes } from '../core/size';

export function formatHttpStats(s: ImageioHttpStats): string {
  const lines: string[] = [];
  for (const [kind, r] of Object.entries(s.requests)) {
    if (r.count === 0) continue;
    const mean = r.bytes > 0 ? `, ${formatBytes(r.bytes)}, mean ${formatBytes(Math.round(r.bytes / r.count))}` : '';
    lines.push(`http ${kind}: ${r.count} requests${mean}`);
  }
  lines.push(
    `http: ${s.connectionsUsed} of ${s.poolSize} connections used, ${s.retries} retries, ${s.reconnects} reconnects, ` +
      `${formatBytes(s.bytesSent)} sent, ${formatBytes(s.bytesReceived)} received`,
  );
  return lines.join('\n') + '\n';
}

/** --stats with --log-format json: one record per line of the text form, with the numbers as fields. */
export function statsRecords(
  stack: ExportStack,
  processLine: string,
  ru: NodeJS.ResourceUsage,
): Array<{ text: string; fields: Record<string, unknown> }> {
  const out: Array<{ text: string; fields: Record<string, unknown> }> = [];
  const counters = stack.stats.counters();
  for (const { op, text } of stack.stats.report()) {
    const c = op === 'total' ? undefined : counters[op];
    out.push({
      text,
      fields: { stats: c ? { kind: 'nbd', op, ops: c.ops, bytes: c.bytes, seconds: Number(c.ns) / 1e9 } : { kind: 'nbd', op } },
    });
  }
  out.push({
    text: processLine,
    fields: { stats: { kind: 'process', userSeconds: ru.userCPUTime / 1e6, systemSeconds: ru.systemCPUTime / 1e6, maxRssKiB: ru.maxRSS } },
  });
  if (stack.imageio) {
    const h = stack.imageio.httpStats();
    const lines = formatHttpStats(h).trimEnd().split('\n');
    const kinds = Object.entries(h.requests).filter(([, r]) => r.count > 0);
    kinds.forEach(([kind, r], i) => out.push({ text: lines[i], fields: { stats: { kind: 'http', request: kind, count: r.count, bytes: r.bytes } } }));
    const { requests: _r, ...summary } = h;
    out.push({ text: lines[lines.length - 1], fields: { stats: { kind: 'http-summary', ...summary } } });
  }
  if (stack.coalesce) out.push({ text: 'coalesce', fields: { stats: { kind: 'coalesce', ...stack.coalesce.stats() } } });
  if (stack.readahead) out.push({ text: 'readahead', fields: { stats: { kind: 'readahead', ...stack.readahead.stats() } } });
  const m = stack.pool.stats();
  out.push({ text: memoryLine(stack.pool), fields: { stats: { kind: 'memory', ...m, maxLiveBytes: stack.pool.maxLiveBytes } } });
  return out;
}

/** The payload pool at exit: the most data held at once, against the bound (--max-memory). */
export function memoryLine(pool: PayloadPool): string {
  const m = pool.stats();
  const mib = (n: number) => (n / 2 ** 20).toFixed(1);
  return (
    `memory: peak ${mib(m.peakLiveBytes)} MiB of data held (bound ${mib(pool.maxLiveBytes)} MiB), ` +
    `${mib(m.freeBytes)} MiB kept for reuse, ${m.waits} waits for memory`
  );
}
