/** The NBD wire protocol: constants and pure codecs (no sockets, no backends). */
export * from './constants';
export * from './handshake';
export * from './transmission';
export * from './decoder';
