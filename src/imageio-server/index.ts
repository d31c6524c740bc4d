/** Public API of the imageio-compatible test/demo server. */
export { ImageioServer } from './imageio-server';
export type { ImageioServerOptions, ImageioServerStats, ImageioConnectionStats } from './imageio-server';
export { FaultInjector } from './faults';
export type { FaultRule, FaultAction, FaultMethod, FaultOp } from './faults';
export { ControlServer } from './control';
export { runImageioServerCommand } from './command';
