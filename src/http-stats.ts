/** Formats the imageio backend's HTTP counters for --stats, after the NBD lines. */
import type { ImageioHttpStats } from './backends/imageio-backend';
import { formatBytes } from './size';

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
