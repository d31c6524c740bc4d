/**
 * Transmission-phase codecs: request headers in, simple replies and structured reply chunks out.
 * Pure: no sockets. Data payloads are never copied here; encoders return headers and the caller
 * writes header and data back to back (cork/uncork), so a 4 MiB READ is not copied.
 *
 * Client-side encoders/decoders at the end are for tests and tools.
 */
import {
  BLOCK_DESCRIPTOR_SIZE,
  MAX_STRING_LENGTH,
  REQUEST_HEADER_SIZE,
  REQUEST_MAGIC,
  ReplyFlag,
  ReplyType,
  SIMPLE_REPLY_HEADER_SIZE,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_HEADER_SIZE,
  STRUCTURED_REPLY_MAGIC,
} from './constants';

/** A decoded request header. */
export interface RequestHeader {
  /** Command flags (NBD_CMD_FLAG_*). */
  flags: number;
  /** Command (NBD_CMD_*); may be unknown. */
  type: number;
  /** Opaque, echoed in every reply. */
  cookie: bigint;
  /**
   * u64 offset as a number. Exact up to Number.MAX_SAFE_INTEGER; larger wire values become
   * approximations that are still > MAX_SAFE_INTEGER, so they are always out of range of any
   * export and validation rejects them without special cases.
   */
  offset: number;
  /** u32 length (payload length for WRITE). */
  length: number;
}

/** Decode a 28-byte request header at `pos`. Returns undefined if the magic is wrong. */
export function decodeRequestHeader(buf: Buffer, pos = 0): RequestHeader | undefined {
  if (buf.readUInt32BE(pos) !== REQUEST_MAGIC) return undefined;
  return {
    flags: buf.readUInt16BE(pos + 4),
    type: buf.readUInt16BE(pos + 6),
    cookie: buf.readBigUInt64BE(pos + 8),
    offset: Number(buf.readBigUInt64BE(pos + 16)),
    length: buf.readUInt32BE(pos + 24),
  };
}

/** S: simple reply header (16 bytes); data, if any, follows separately. */
export function encodeSimpleReply(cookie: bigint, error: number): Buffer {
  const b = Buffer.allocUnsafe(SIMPLE_REPLY_HEADER_SIZE);
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error >>> 0, 4);
  b.writeBigUInt64BE(cookie, 8);
  return b;
}

function writeChunkHeader(b: Buffer, flags: number, type: number, cookie: bigint, length: number): void {
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(cookie, 8);
  b.writeUInt32BE(length >>> 0, 16);
}

/** S: a structured chunk header alone (20 bytes) announcing `payloadLength` bytes. */
export function encodeChunkHeader(flags: number, type: number, cookie: bigint, payloadLength: number): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE);
  writeChunkHeader(b, flags, type, cookie, payloadLength);
  return b;
}

/**
 * S: NBD_REPLY_TYPE_OFFSET_DATA header plus its u64 offset (28 bytes). The caller sends
 * `dataLength` bytes of data right after it.
 */
export function encodeOffsetDataHeader(cookie: bigint, offset: number, dataLength: number, done: boolean): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE + 8);
  writeChunkHeader(b, done ? ReplyFlag.DONE : 0, ReplyType.OFFSET_DATA, cookie, 8 + dataLength);
  b.writeBigUInt64BE(BigInt(offset), STRUCTURED_REPLY_HEADER_SIZE);
  return b;
}

/** One base:allocation descriptor on the wire. */
export interface BlockDescriptor {
  /** u32, > 0. */
  length: number;
  flags: number;
}

/** S: NBD_REPLY_TYPE_BLOCK_STATUS chunk: u32 context id | n x (u32 length, u32 flags). */
export function encodeBlockStatusChunk(
  cookie: bigint,
  contextId: number,
  descriptors: readonly BlockDescriptor[],
  done: boolean,
): Buffer {
  const payload = 4 + BLOCK_DESCRIPTOR_SIZE * descriptors.length;
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE + payload);
  writeChunkHeader(b, done ? ReplyFlag.DONE : 0, ReplyType.BLOCK_STATUS, cookie, payload);
  let pos = STRUCTURED_REPLY_HEADER_SIZE;
  b.writeUInt32BE(contextId >>> 0, pos);
  pos += 4;
  for (const d of descriptors) {
    b.writeUInt32BE(d.length >>> 0, pos);
    b.writeUInt32BE(d.flags >>> 0, pos + 4);
    pos += BLOCK_DESCRIPTOR_SIZE;
  }
  return b;
}

/** S: NBD_REPLY_TYPE_ERROR chunk: u32 error | u16 message length | message. */
export function encodeErrorChunk(cookie: bigint, error: number, message = '', done = true): Buffer {
  let msg = Buffer.from(message, 'utf8');
  if (msg.length > MAX_STRING_LENGTH) msg = msg.subarray(0, MAX_STRING_LENGTH);
  const payload = 6 + msg.length;
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE + payload);
  writeChunkHeader(b, done ? ReplyFlag.DONE : 0, ReplyType.ERROR, cookie, payload);
  b.writeUInt32BE(error >>> 0, STRUCTURED_REPLY_HEADER_SIZE);
  b.writeUInt16BE(msg.length, STRUCTURED_REPLY_HEADER_SIZE + 4);
  msg.copy(b, STRUCTURED_REPLY_HEADER_SIZE + 6);
  return b;
}

/** S: NBD_REPLY_TYPE_NONE with DONE: a successful reply without payload. */
export function encodeNoneChunk(cookie: bigint): Buffer {
  return encodeChunkHeader(ReplyFlag.DONE, ReplyType.NONE, cookie, 0);
}

// ---------------------------------------------------------------------------------------------
// Client side (tests, tools)

/** Fields of a request, as a client sends them. */
export interface RequestFields {
  flags?: number;
  type: number;
  cookie: bigint;
  /** u64 offset, as a bigint so that tests can send values beyond 2^53. */
  offset: bigint | number;
  length: number;
}

/** C: 28-byte request header (the WRITE payload, if any, follows separately). */
export function encodeRequest(r: RequestFields): Buffer {
  const b = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
  b.writeUInt32BE(REQUEST_MAGIC, 0);
  b.writeUInt16BE(r.flags ?? 0, 4);
  b.writeUInt16BE(r.type, 6);
  b.writeBigUInt64BE(r.cookie, 8);
  b.writeBigUInt64BE(BigInt(r.offset), 16);
  b.writeUInt32BE(r.length >>> 0, 24);
  return b;
}

/** Decoded simple reply header. */
export interface SimpleReply {
  error: number;
  cookie: bigint;
}

/** Decoded structured chunk header. */
export interface ChunkHeader {
  flags: number;
  type: number;
  cookie: bigint;
  length: number;
}

/** Decode a 16-byte simple reply header; undefined if the magic is wrong. */
export function decodeSimpleReply(buf: Buffer, pos = 0): SimpleReply | undefined {
  if (buf.readUInt32BE(pos) !== SIMPLE_REPLY_MAGIC) return undefined;
  return { error: buf.readUInt32BE(pos + 4), cookie: buf.readBigUInt64BE(pos + 8) };
}

/** Decode a 20-byte structured chunk header; undefined if the magic is wrong. */
export function decodeChunkHeader(buf: Buffer, pos = 0): ChunkHeader | undefined {
  if (buf.readUInt32BE(pos) !== STRUCTURED_REPLY_MAGIC) return undefined;
  return {
    flags: buf.readUInt16BE(pos + 4),
    type: buf.readUInt16BE(pos + 6),
    cookie: buf.readBigUInt64BE(pos + 8),
    length: buf.readUInt32BE(pos + 16),
  };
}
