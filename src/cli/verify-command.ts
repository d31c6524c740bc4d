/**
 * `imageio-nbd verify [options] FILE URL`: prove that the image behind an imageio transfer URL
 * holds the bytes of the local raw FILE, by comparing imageio's own checksum of the image with
 * the same checksum computed here, without downloading the image. Exit status as cmp(1) and
 * `qemu-img compare`: 0 identical, 1 different, 2 error.
 */
import { readFileSync } from 'node:fs';
import yargs from 'yargs';
import { DEFAULT_ALGORITHM, LOCAL_ALGORITHMS, verifyUpload, VerifyError } from './verify';
import { parseSize } from '../core/size';

const USAGE = `imageio-nbd verify [options] FILE URL

Compare the raw FILE with the image of the imageio transfer URL using imageio's checksum API
(blkhash), without reading the image back. Run it after the upload, before finalizing the
transfer. A FILE smaller than the image is compared as if extended with zeros.
Exit status: 0 identical, 1 different, 2 error.`;

export async function runVerifyCommand(argv: string[]): Promise<number> {
  const parser = yargs(argv)
    .scriptName('imageio-nbd verify')
    .usage(USAGE)
    .help(false)
    .version(false)
    .option('algorithm', { type: 'string', default: DEFAULT_ALGORITHM, describe: `Checksum algorithm (${LOCAL_ALGORITHMS.join(', ')})` })
    .option('block-size', { type: 'string', default: '4M', describe: 'Checksum block size, 1M to 16M in 4K steps' })
    .option('cafile', { type: 'string', describe: "CA certificate(s) to verify imageio's certificate" })
    .option('insecure', { type: 'boolean', describe: "Do not verify imageio's certificate" })
    .option('timeout', { type: 'number', default: 3600, describe: 'Seconds to wait for the checksum (imageio reads the whole image)' })
    .option('h', { alias: 'help', type: 'boolean', describe: 'Show this help' })
    .strictOptions()
    .wrap(null)
    .exitProcess(false)
    .fail((msg, err) => {
      throw err ?? new Error(msg);
    });
  try {
    const a = await parser.parseAsync();
    if (a.h) {
      process.stdout.write(`${await parser.getHelp()}\n`);
      return 0;
    }
    const pos = a._.map(String);
    if (pos.length !== 2) throw new VerifyError(`expected FILE and URL, got ${pos.length} argument${pos.length === 1 ? '' : 's'} (see --help)`);
    if (a.insecure && a.cafile) throw new VerifyError('--cafile and --insecure contradict each other');
    if (!(a.timeout > 0)) throw new VerifyError(`invalid --timeout ${a.timeout}`);
    const [file, url] = pos;
    let cafile: Buffer | undefined;
    if (a.cafile) {
      try {
        cafile = readFileSync(a.cafile);
      } catch (err) {
        throw new VerifyError(`cannot read CA file ${a.cafile}: ${(err as Error).message}`);
      }
    }
    const r = await verifyUpload(
      file,
      { url, cafile, insecure: a.insecure, timeoutMs: Math.round(a.timeout * 1000) },
      { algorithm: a.algorithm, blockSize: parseSize(a['block-size'], 'block size') },
    );
    process.stdout.write(`${r.message}\n`);
    return r.identical ? 0 : 1;
  } catch (err) {
    process.stderr.write(`imageio-nbd verify: ${(err as Error).message}\n`);
    return 2;
  }
}
