/** Public API of the fake oVirt engine (tests, demos). */
export { FakeEngine } from './fake-engine';
export type { FakeEngineOptions, FakeEngineState, FakeHostSpec, EngineFaults } from './fake-engine';
export { EngineControlServer } from './control';
export { runEngineServerCommand } from './command';
