/**
 * The library: what `require('imageio-nbd')` gives. The pieces compose like nbdkit's plugins
 * and filters: a Backend (imageio, file, memory), optional layers that implement the same
 * interface (coalescing, stats), and the NBD server that serves the top of the stack.
 */
export type { Backend, BlockSize, Capabilities, Extent, WriteFlags, ZeroFlags } from './backend';
export { EXTENT_HOLE, EXTENT_ZERO, PassthroughLayer } from './backend';
export * from './errors';
export { createLogger, silentLogger, emitRecord, type Logger, type LogOptions, type LogFilter } from './log';
export { openImageioBackend, ImageioBackend, type ImageioBackendOptions, type ImageioHttpStats } from './backends/imageio-backend';
export { openFileBackend, FileBackend, type FileBackendOptions } from './backends/file-backend';
export { MemoryBackend } from './backends/memory-backend';
export { CoalesceLayer, type CoalesceOptions, type CoalesceStats } from './layers/coalesce-layer';
export { ReadaheadLayer, type ReadaheadOptions } from './layers/readahead-layer';
export { StatsLayer } from './layers/stats-layer';
export { NbdServer, type ExportConfig, type ListenAddress, type NbdServerOptions } from './server/nbd-server';
export { ImageioServer, type ImageioServerOptions } from './imageio-server/imageio-server';
export { openExport, EXPORT_DEFAULTS, type ExportStack, type ExportOptions } from './open-export';
export { parseArgs, CLI_DEFAULTS, VERSION, type RunConfig, type ListenConfig, type ParseResult, type InfoKind } from './config';
export { OPTIONS, type OptionSpec, type OptionGroup } from './cli-options';
export { FailureJournal, describeRoot, type RecordedFailure } from './failure-report';
export { ProgressReporter, type ProgressOptions, type ProgressCounters } from './progress';
export { parseSize, formatBytes, formatSize } from './size';
