/**
 * Reading a socket into buffers we choose (Node's `onread` option), so request payloads land
 * where they are going to be used instead of in a fresh 64 KiB chunk that is then copied.
 *
 * net.Server creates accepted sockets itself and takes no `onread`, so the accepted socket's
 * handle is moved into a new net.Socket that has one (the server must listen with
 * pauseOnConnect, so nothing has been read yet). This uses net.Socket's `_handle`, which is not
 * a public API (checked on Node 24.22): where it is missing, adoptWithUserBuffers() returns
 * undefined and the caller reads 'data' events from the accepted socket instead.
 */
import * as net from 'node:net';

export interface UserBufferReader {
  /** Called before each read: where its bytes land. Must return a non-empty buffer. */
  buffer: () => Uint8Array;
  /** Called after each read with the byte count; the bytes are at the start of that buffer. */
  callback: (bytes: number, buf: Uint8Array) => void;
}

interface HandleOwner {
  _handle?: { useUserBuffer?: unknown } | null;
}

/** A socket reading through `reader` in place of `accepted` (destroyed), or undefined. */
export function adoptWithUserBuffers(accepted: net.Socket, reader: UserBufferReader): net.Socket | undefined {
  const owner = accepted as unknown as HandleOwner;
  const handle = owner._handle;
  if (!handle || typeof handle.useUserBuffer !== 'function') return undefined;
  owner._handle = null;
  accepted.destroy();
  const opts = {
    handle,
    readable: true,
    writable: true,
    // Half-open: a client that shuts down its sending side still gets its replies.
    allowHalfOpen: true,
    onread: {
      buffer: reader.buffer,
      callback: (n: number, buf: Uint8Array): boolean => {
        reader.callback(n, buf);
        return true; // pausing is done with socket.pause(), which keeps the stream state right
      },
    },
  };
  return new net.Socket(opts as net.SocketConstructorOpts);
}
