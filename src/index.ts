/**
 * The library: what `require('imageio-nbd')` gives. The pieces compose like nbdkit's plugins
 * and filters: a Backend (imageio, file, memory), optional layers that implement the same
 * interface (coalescing, stats), and the NBD server that serves the top of the stack.
 */
export type { Backend, BlockSize, Capabilities, Extent, WriteFlags, ZeroFlags } from './core/backend';
export { EXTENT_HOLE, EXTENT_ZERO, PassthroughLayer } from './core/backend';
export * from './core/errors';
export { PayloadPool, releaseBuffer, releaseBuffers, retainBuffer, type PayloadPoolOptions, type PayloadPoolStats } from './core/payload-pool';
export { MIN_MAX_MEMORY } from './nbd/receive-budget';
export { createLogger, silentLogger, emitRecord, type Logger, type LogOptions, type LogFilter } from './core/log';
export { openImageioBackend, ImageioBackend, type ImageioBackendOptions, type ImageioHttpStats } from './backends/imageio';
export { openFileBackend, FileBackend, type FileBackendOptions } from './backends/file-backend';
export { MemoryBackend } from './backends/memory-backend';
export { CoalesceLayer, type CoalesceOptions, type CoalesceStats } from './layers/coalesce/coalesce-layer';
export { ReadaheadLayer, type ReadaheadOptions } from './layers/readahead-layer';
export { StatsLayer } from './layers/stats-layer';
export { NbdServer, type ExportConfig, type ListenAddress, type NbdServerOptions } from './nbd/nbd-server';
export { ImageioServer, type ImageioServerOptions } from '../sim/imageio-server/imageio-server';
export { openExport, EXPORT_DEFAULTS, type ExportStack, type ExportOptions } from './export/open-export';
export { VERSION } from './core/version';
export { parseArgs, CLI_DEFAULTS, type RunConfig, type ListenConfig, type ParseResult, type InfoKind } from './cli/parse';
export { OPTIONS, type OptionSpec, type OptionGroup } from './cli/option-table';
export { FailureJournal, describeRoot, type RecordedFailure } from './layers/failure-journal';
export { ProgressReporter, type ProgressOptions, type ProgressCounters } from './cli/progress';
export { parseSize, formatBytes, formatSize } from './core/size';
