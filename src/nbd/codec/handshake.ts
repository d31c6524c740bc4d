/**
 * Handshake (option haggling) codecs: pure functions from Buffers to typed values and back.
 * No sockets, no exports, no policy: the server decides what to answer.
 *
 * Server-side encoders and client-message parsers come first; the client-side encoders at the
 * end exist for tests and tools that play the client.
 */
import {
  CLIENT_FLAGS_SIZE,
  EXPORT_NAME_REPLY_PADDING,
  IHAVEOPT,
  InfoType,
  MAX_STRING_LENGTH,
  NBDMAGIC,
  OPTION_HEADER_SIZE,
  OPTION_REPLY_HEADER_SIZE,
  OPT_REPLY_MAGIC,
  SERVER_GREETING_SIZE,
} from './constants';

/** Result of parsing option data: the value, or why the data is malformed (-> ERR_INVALID). */
export type ParseResult<T> = { ok: true; value: T } | { ok: false; error: string };

/** NBD_OPT_INFO / NBD_OPT_GO data. */
export interface InfoRequest {
  exportName: string;
  /** NBD_INFO_* types the client asked for, in order, duplicates kept. */
  infos: number[];
}

/** NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data. */
export interface MetaContextRequest {
  exportName: string;
  queries: string[];
}

// ---------------------------------------------------------------------------------------------
// Server side

/** S: NBDMAGIC | IHAVEOPT | u16 handshake flags. */
export function encodeServerGreeting(handshakeFlags: number): Buffer {
  const b = Buffer.allocUnsafe(SERVER_GREETING_SIZE);
  b.writeBigUInt64BE(NBDMAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(handshakeFlags, 16);
  return b;
}

/** C: u32 client flags. `buf` must hold at least 4 bytes. */
export function decodeClientFlags(buf: Buffer, offset = 0): number {
  return buf.readUInt32BE(offset);
}

/** S: option reply header and data. */
export function encodeOptionReply(option: number, replyType: number, data?: Buffer): Buffer {
  const len = data ? data.length : 0;
  const b = Buffer.allocUnsafe(OPTION_REPLY_HEADER_SIZE + len);
  b.writeBigUInt64BE(OPT_REPLY_MAGIC, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(replyType >>> 0, 12);
  b.writeUInt32BE(len, 16);
  if (data) data.copy(b, OPTION_REPLY_HEADER_SIZE);
  return b;
}

/** S: an error reply (bit 31 set) with an optional human-readable UTF-8 message. */
export function encodeOptionError(option: number, errorType: number, message = ''): Buffer {
  return encodeOptionReply(option, errorType, message ? Buffer.from(truncateUtf8(message), 'utf8') : undefined);
}

/** NBD_REP_INFO payload for NBD_INFO_EXPORT: u16 0 | u64 size | u16 transmission flags. */
export function encodeInfoExport(size: number, transmissionFlags: number): Buffer {
  const b = Buffer.allocUnsafe(12);
  b.writeUInt16BE(InfoType.EXPORT, 0);
  b.writeBigUInt64BE(BigInt(size), 2);
  b.writeUInt16BE(transmissionFlags, 10);
  return b;
}

/** NBD_REP_INFO payload for NBD_INFO_NAME: u16 1 | name. */
export function encodeInfoName(name: string): Buffer {
  return Buffer.concat([u16(InfoType.NAME), Buffer.from(name, 'utf8')]);
}

/** NBD_REP_INFO payload for NBD_INFO_DESCRIPTION: u16 2 | description. */
export function encodeInfoDescription(description: string): Buffer {
  return Buffer.concat([u16(InfoType.DESCRIPTION), Buffer.from(truncateUtf8(description), 'utf8')]);
}

/** NBD_REP_INFO payload for NBD_INFO_BLOCK_SIZE: u16 3 | u32 min | u32 preferred | u32 max. */
export function encodeInfoBlockSize(minimum: number, preferred: number, maximum: number): Buffer {
  const b = Buffer.allocUnsafe(14);
  b.writeUInt16BE(InfoType.BLOCK_SIZE, 0);
  b.writeUInt32BE(minimum, 2);
  b.writeUInt32BE(preferred, 6);
  b.writeUInt32BE(maximum, 10);
  return b;
}

/** NBD_REP_SERVER payload: u32 namelen | name [| description]. */
export function encodeRepServer(name: string, description?: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const parts = [u32(n.length), n];
  if (description) parts.push(Buffer.from(truncateUtf8(description), 'utf8'));
  return Buffer.concat(parts);
}

/** NBD_REP_META_CONTEXT payload: u32 context id | name. */
export function encodeRepMetaContext(contextId: number, name: string): Buffer {
  return Buffer.concat([u32(contextId), Buffer.from(name, 'utf8')]);
}

/** Reply to NBD_OPT_EXPORT_NAME: u64 size | u16 flags [| 124 zero bytes unless NO_ZEROES]. */
export function encodeExportNameReply(size: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(10 + (noZeroes ? 0 : EXPORT_NAME_REPLY_PADDING));
  b.writeBigUInt64BE(BigInt(size), 0);
  b.writeUInt16BE(transmissionFlags, 8);
  return b;
}

/** NBD_OPT_EXPORT_NAME data is the bare name. */
export function parseExportName(data: Buffer): ParseResult<string> {
  if (data.length > MAX_STRING_LENGTH) return fail(`export name longer than ${MAX_STRING_LENGTH} bytes`);
  return ok(data.toString('utf8'));
}

/** Parse NBD_OPT_INFO / NBD_OPT_GO data: u32 namelen | name | u16 n | n x u16 info type. */
export function parseInfoRequest(data: Buffer): ParseResult<InfoRequest> {
  if (data.length < 6) return fail('INFO/GO data shorter than 6 bytes');
  const nameLen = data.readUInt32BE(0);
  if (nameLen > MAX_STRING_LENGTH) return fail(`export name longer than ${MAX_STRING_LENGTH} bytes`);
  if (4 + nameLen + 2 > data.length) return fail('export name runs past the option data');
  const exportName = data.toString('utf8', 4, 4 + nameLen);
  let pos = 4 + nameLen;
  const n = data.readUInt16BE(pos);
  pos += 2;
  if (data.length !== pos + 2 * n) return fail(`INFO/GO data length does not match ${n} info requests`);
  const infos: number[] = [];
  for (let i = 0; i < n; i++, pos += 2) infos.push(data.readUInt16BE(pos));
  return ok({ exportName, infos });
}

/** Parse LIST/SET_META_CONTEXT data: u32 namelen | name | u32 nqueries | { u32 len | query }. */
export function parseMetaContextRequest(data: Buffer): ParseResult<MetaContextRequest> {
  if (data.length < 8) return fail('META_CONTEXT data shorter than 8 bytes');
  const nameLen = data.readUInt32BE(0);
  if (nameLen > MAX_STRING_LENGTH) return fail(`export name longer than ${MAX_STRING_LENGTH} bytes`);
  if (4 + nameLen + 4 > data.length) return fail('export name runs past the option data');
  const exportName = data.toString('utf8', 4, 4 + nameLen);
  let pos = 4 + nameLen;
  const n = data.readUInt32BE(pos);
  pos += 4;
  // Each query needs at least its 4-byte length: reject absurd counts before looping.
  if (n > (data.length - pos) / 4) return fail(`${n} queries cannot fit in the option data`);
  const queries: string[] = [];
  for (let i = 0; i < n; i++) {
    if (pos + 4 > data.length) return fail('query length runs past the option data');
    const len = data.readUInt32BE(pos);
    pos += 4;
    if (len > MAX_STRING_LENGTH) return fail(`query longer than ${MAX_STRING_LENGTH} bytes`);
    if (pos + len > data.length) return fail('query runs past the option data');
    queries.push(data.toString('utf8', pos, pos + len));
    pos += len;
  }
  if (pos !== data.length) return fail('trailing bytes after the queries');
  return ok({ exportName, queries });
}

// ---------------------------------------------------------------------------------------------
// Client side (tests, tools)

/** Decoded option reply header. */
export interface OptionReplyHeader {
  magic: bigint;
  option: number;
  replyType: number;
  length: number;
}

/** Decode the 20-byte option reply header at `offset`. */
export function decodeOptionReplyHeader(buf: Buffer, offset = 0): OptionReplyHeader {
  return {
    magic: buf.readBigUInt64BE(offset),
    option: buf.readUInt32BE(offset + 8),
    replyType: buf.readUInt32BE(offset + 12),
    length: buf.readUInt32BE(offset + 16),
  };
}

/** C: u32 client flags. */
export function encodeClientFlags(flags: number): Buffer {
  const b = Buffer.allocUnsafe(CLIENT_FLAGS_SIZE);
  b.writeUInt32BE(flags >>> 0, 0);
  return b;
}

/** C: IHAVEOPT | u32 option | u32 length | data. */
export function encodeOptionRequest(option: number, data?: Buffer): Buffer {
  const len = data ? data.length : 0;
  const b = Buffer.allocUnsafe(OPTION_HEADER_SIZE + len);
  b.writeBigUInt64BE(IHAVEOPT, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(len, 12);
  if (data) data.copy(b, OPTION_HEADER_SIZE);
  return b;
}

/** Data of NBD_OPT_INFO / NBD_OPT_GO. */
export function encodeInfoRequestData(req: InfoRequest): Buffer {
  const name = Buffer.from(req.exportName, 'utf8');
  const b = Buffer.allocUnsafe(4 + name.length + 2 + 2 * req.infos.length);
  b.writeUInt32BE(name.length, 0);
  name.copy(b, 4);
  let pos = 4 + name.length;
  b.writeUInt16BE(req.infos.length, pos);
  pos += 2;
  for (const t of req.infos) {
    b.writeUInt16BE(t, pos);
    pos += 2;
  }
  return b;
}

/** Data of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT. */
export function encodeMetaContextRequestData(req: MetaContextRequest): Buffer {
  const name = Buffer.from(req.exportName, 'utf8');
  const parts: Buffer[] = [u32(name.length), name, u32(req.queries.length)];
  for (const q of req.queries) {
    const qb = Buffer.from(q, 'utf8');
    parts.push(u32(qb.length), qb);
  }
  return Buffer.concat(parts);
}

// ---------------------------------------------------------------------------------------------

function ok<T>(value: T): ParseResult<T> {
  return { ok: true, value };
}

function fail<T>(error: string): ParseResult<T> {
  return { ok: false, error };
}

function u16(v: number): Buffer {
  const b = Buffer.allocUnsafe(2);
  b.writeUInt16BE(v, 0);
  return b;
}

function u32(v: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(v >>> 0, 0);
  return b;
}

/** Keep strings we send within the spec's 4096-byte limit. */
function truncateUtf8(s: string): string {
  if (Buffer.byteLength(s, 'utf8') <= MAX_STRING_LENGTH) return s;
  let b = Buffer.from(s, 'utf8').subarray(0, MAX_STRING_LENGTH);
  // Drop a split multi-byte sequence at the end.
  while (b.length > 0 && (b[b.length - 1] & 0xc0) === 0x80) b = b.subarray(0, b.length - 1);
  if (b.length > 0 && b[b.length - 1] >= 0xc0) b = b.subarray(0, b.length - 1);
  return b.toString('utf8');
}
