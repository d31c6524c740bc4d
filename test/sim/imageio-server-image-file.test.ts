/**
 * The built-in imageio server's image: its allocation map at open comes from the file's holes
 * (the holes are not read) plus the all-zero blocks of its data, so a huge sparse image opens at
 * once and extents still show written zeros as zero.
 */
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ImageFile } from '../../sim/imageio-server/image-file';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

describe('ImageFile.open', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'image-file-'));
  });
  afterEach(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });

  test('a 4 TiB sparse image opens without reading its holes; data, holes and written zeros are told apart', async () => {
    const file = path.join(dir, 'disk.raw');
    const fh = await fsp.open(file, 'w');
    try {
      await fh.truncate(4 * 1024 * GiB);
      await fh.write(Buffer.alloc(64 * KiB, 1), 0, 64 * KiB, GiB);
      // Allocated, but zeros: the map says zero, as a scan of the data would.
      await fh.write(Buffer.alloc(64 * KiB, 0), 0, 64 * KiB, 2 * GiB);
      await fh.write(Buffer.alloc(4 * KiB, 2), 0, 4 * KiB, 3 * GiB + 8 * KiB);
    } finally {
      await fh.close();
    }
    const img = await ImageFile.open(file, undefined, true);
    const data = img.map.extents(img.fileSize).filter((e) => !e.zero);
    expect(data).toEqual([
      { start: GiB, length: 64 * KiB, zero: false },
      { start: 3 * GiB + 8 * KiB, length: 4 * KiB, zero: false },
    ]);
  }, 60000);
});
