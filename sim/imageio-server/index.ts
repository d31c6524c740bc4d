/** Public API of the imageio-compatible test/demo server. */
export { ImageioServer, abstractSocketName, isAbstractSocket, displaySocket } from './imageio-server';
export type { ImageioServerOptions, ImageioServerStats, ImageioConnectionStats } from './imageio-server';
export { FaultInjector, DATA_OPS } from './faults';
export type { FaultRule, FaultAction, FaultMethod, FaultOp, RandomFaults } from './faults';
export { ControlServer } from './control';
export { runImageioServerCommand } from './command';
