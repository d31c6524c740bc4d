/**
 * `imageio-nbd verify [options] FILE URL`: prove that the image behind an imageio transfer URL
 * holds the bytes of the local raw FILE, by comparing imageio's own checksum of the image with
 * the same checksum computed here, without downloading the image. Exit status as cmp(1) and
 * `qemu-img compare`: 0 identical, 1 different, 2 error. Parsed and helped like every command
 * (src/core/command-line.ts).
 */
import { readFileSync } from 'node:fs';
import { formatHelp, lastValue, optionLabel, OptionParser, type OptionRow } from '../core/command-line';
import { DEFAULT_ALGORITHM, LOCAL_ALGORITHMS, verifyUpload, VerifyError } from './verify';
import { parseSize } from '../core/size';

const OPTIONS: readonly OptionRow[] = [
  { name: 'algorithm', type: 'string', arg: 'NAME', describe: `Checksum algorithm: ${LOCAL_ALGORITHMS.join(', ')} (default ${DEFAULT_ALGORITHM})` },
  { name: 'block-size', type: 'string', arg: 'SIZE', describe: 'Checksum block size, 1M to 16M in 4K steps (default 4M)' },
  { name: 'cafile', type: 'string', arg: 'FILE', describe: "Verify imageio's certificate with the CA(s) in FILE (default: the system CAs)" },
  { name: 'insecure', type: 'flag', describe: "Do not verify imageio's certificate" },
  { name: 'timeout', type: 'string', arg: 'S', describe: 'Seconds to wait for the checksum; imageio reads the whole image (default 3600)' },
  { name: 'help', short: 'h', type: 'flag', describe: 'Print this help and exit' },
];

export function verifyHelp(): string {
  return formatHelp({
    usage: ['imageio-nbd verify [OPTIONS] FILE URL'],
    description: `Compare the raw FILE with the image of the imageio transfer URL using imageio's checksum API
(blkhash), without reading the image back. Run it after the upload, before finalizing the
transfer. A FILE smaller than the image is compared as if extended with zeros.`,
    sections: [{ title: 'options:', rows: OPTIONS.map((o) => [optionLabel(o), o.describe] as const) }],
    exitStatus: [
      ['0', 'identical'],
      ['1', 'different'],
      ['2', 'an error: bad arguments, FILE not raw data (qcow2...), imageio unreachable or without a checksum API'],
    ],
  });
}

export async function runVerifyCommand(argv: string[]): Promise<number> {
  try {
    const { values: a, positionals: pos } = new OptionParser(OPTIONS).parse(argv);
    if (a.help) {
      process.stdout.write(`${verifyHelp()}\n`);
      return 0;
    }
    if (pos.length !== 2) throw new VerifyError(`expected FILE and URL, got ${pos.length} argument${pos.length === 1 ? '' : 's'} (see --help)`);
    const cafileName = lastValue(a.cafile);
    const insecure = a.insecure === true;
    if (insecure && cafileName) throw new VerifyError('--cafile and --insecure contradict each other');
    const timeoutText = lastValue(a.timeout) ?? '3600';
    const timeout = /^\s*(\d+(\.\d*)?|\.\d+)\s*$/.test(timeoutText) ? Number(timeoutText) : NaN;
    if (!(timeout > 0)) throw new VerifyError(`invalid --timeout '${timeoutText}': expected seconds above 0`);
    const [file, url] = pos;
    let cafile: Buffer | undefined;
    if (cafileName) {
      try {
        cafile = readFileSync(cafileName);
      } catch (err) {
        throw new VerifyError(`cannot read CA file ${cafileName}: ${(err as Error).message}`);
      }
    }
    const r = await verifyUpload(
      file,
      { url, cafile, insecure, timeoutMs: Math.round(timeout * 1000) },
      { algorithm: lastValue(a.algorithm) ?? DEFAULT_ALGORITHM, blockSize: parseSize(lastValue(a['block-size']) ?? '4M', 'block size') },
    );
    process.stdout.write(`${r.message}\n`);
    return r.identical ? 0 : 1;
  } catch (err) {
    process.stderr.write(`imageio-nbd verify: ${(err as Error).message}\n`);
    return 2;
  }
}
