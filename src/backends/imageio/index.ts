/** The imageio backend: see imageio-backend.ts. */
export { ImageioBackend, openImageioBackend } from './imageio-backend';
export type { ImageioBackendOptions, ImageioHttpStats, ImageioServerInfo } from './imageio-backend';
export { decideRetry, type Decision, type Outcome, type RequestClass } from './retry-policy';
