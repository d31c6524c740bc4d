/**
 * The image's allocation map, fetched from imageio once (lazily, or at start when it also
 * tells the size) and then kept current by our own writes and zeroes, so BLOCK_STATUS never
 * costs a second HTTP request.
 */
import type { Extent } from '../../core/backend';
import { ExtentMap, type ImageioExtent } from './extent-map';

export class ExtentCache {
  private map: ExtentMap | null = null;
  private loading: Promise<ExtentMap> | null = null;
  /** Our writes and zeroes that finished while extents were being fetched, applied afterwards. */
  private log: Array<[number, number, number]> | null = null;

  constructor(private readonly fetch: () => Promise<ImageioExtent[]>) {}

  /** Installs a list fetched elsewhere (at start). */
  install(size: number, list: readonly ImageioExtent[]): ExtentMap {
    const map = new ExtentMap(size, list);
    // Our writes that finished while the request was out may or may not be in the answer:
    // apply them again, they are newer.
    for (const [o, l, f] of this.log ?? []) map.set(o, l, f);
    this.log = null;
    this.map = map;
    return map;
  }

  /** Extents of [offset, offset + length), loading the map on first use; rejects if the fetch fails. */
  async query(size: number, offset: number, length: number): Promise<Extent[]> {
    const map = this.map ?? (await this.load(size));
    return map.query(offset, length);
  }

  /** Record a finished write (flags 0) or zero (EXTENT_ZERO) of ours. */
  note(offset: number, length: number, flags: number): void {
    if (this.map) this.map.set(offset, length, flags);
    else if (this.log) this.log.push([offset, length, flags]);
  }

  private load(size: number): Promise<ExtentMap> {
    if (!this.loading) {
      this.log = [];
      this.loading = this.fetch().then(
        (list) => this.install(size, list),
        (err) => {
          this.loading = null;
          this.log = null;
          throw err;
        },
      );
    }
    return this.loading;
  }
}
