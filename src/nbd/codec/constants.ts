/**
 * Every NBD wire constant, in one place. Values from the NBD protocol spec (doc/proto.md).
 * Shared by the codecs, the server and the tests.
 */

/** "NBDMAGIC": first 8 bytes the server sends. */
export const NBDMAGIC = 0x4e42444d41474943n;
/** "IHAVEOPT": newstyle negotiation magic, sent by the server and prefixed to each option. */
export const IHAVEOPT = 0x49484156454f5054n;
/** Prefix of every option reply. */
export const OPT_REPLY_MAGIC = 0x0003e889045565a9n;
/** Transmission request magic. */
export const REQUEST_MAGIC = 0x25609513;
/** Simple reply magic. */
export const SIMPLE_REPLY_MAGIC = 0x67446698;
/** Structured reply chunk magic. */
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Size of a request header: magic, flags, type, cookie, offset, length. */
export const REQUEST_HEADER_SIZE = 28;
/** Size of a simple reply header. */
export const SIMPLE_REPLY_HEADER_SIZE = 16;
/** Size of a structured reply chunk header. */
export const STRUCTURED_REPLY_HEADER_SIZE = 20;
/** Size of an option request header after the client flags: magic, option, length. */
export const OPTION_HEADER_SIZE = 16;

/** Handshake flags (server -> client, u16). */
export enum HandshakeFlag {
  FIXED_NEWSTYLE = 1 << 0,
  NO_ZEROES = 1 << 1,
}

/** Client flags (client -> server, u32). */
export enum ClientFlag {
  FIXED_NEWSTYLE = 1 << 0,
  NO_ZEROES = 1 << 1,
}

/** Negotiation options. */
export enum Option {
  EXPORT_NAME = 1,
  ABORT = 2,
  LIST = 3,
  PEEK_EXPORT = 4,
  STARTTLS = 5,
  INFO = 6,
  GO = 7,
  STRUCTURED_REPLY = 8,
  LIST_META_CONTEXT = 9,
  SET_META_CONTEXT = 10,
  EXTENDED_HEADERS = 11,
}

/** Option reply types. Errors have bit 31 set. */
export enum OptionReply {
  ACK = 1,
  SERVER = 2,
  INFO = 3,
  META_CONTEXT = 4,
  ERR_UNSUP = 0x80000001,
  ERR_POLICY = 0x80000002,
  ERR_INVALID = 0x80000003,
  ERR_PLATFORM = 0x80000004,
  ERR_TLS_REQD = 0x80000005,
  ERR_UNKNOWN = 0x80000006,
  ERR_SHUTDOWN = 0x80000007,
  ERR_BLOCK_SIZE_REQD = 0x80000008,
  ERR_TOO_BIG = 0x80000009,
}

/** NBD_INFO_* types, used by INFO and GO. */
export enum InfoType {
  EXPORT = 0,
  NAME = 1,
  DESCRIPTION = 2,
  BLOCK_SIZE = 3,
}

/** Transmission flags (u16, part of the export info). */
export enum TransmissionFlag {
  HAS_FLAGS = 1 << 0,
  READ_ONLY = 1 << 1,
  SEND_FLUSH = 1 << 2,
  SEND_FUA = 1 << 3,
  ROTATIONAL = 1 << 4,
  SEND_TRIM = 1 << 5,
  SEND_WRITE_ZEROES = 1 << 6,
  SEND_DF = 1 << 7,
  CAN_MULTI_CONN = 1 << 8,
  SEND_RESIZE = 1 << 9,
  SEND_CACHE = 1 << 10,
  SEND_FAST_ZERO = 1 << 11,
}

/** Transmission commands. */
export enum Command {
  READ = 0,
  WRITE = 1,
  DISC = 2,
  FLUSH = 3,
  TRIM = 4,
  CACHE = 5,
  WRITE_ZEROES = 6,
  BLOCK_STATUS = 7,
  RESIZE = 8,
}

/** Command flags (u16 in the request header). */
export enum CommandFlag {
  FUA = 1 << 0,
  NO_HOLE = 1 << 1,
  DF = 1 << 2,
  REQ_ONE = 1 << 3,
  FAST_ZERO = 1 << 4,
}

/** Structured reply chunk flags. */
export enum ReplyFlag {
  DONE = 1 << 0,
}

/** Structured reply chunk types. Errors have bit 15 set. */
export enum ReplyType {
  NONE = 0,
  OFFSET_DATA = 1,
  OFFSET_HOLE = 2,
  BLOCK_STATUS = 5,
  ERROR = 0x8001,
  ERROR_OFFSET = 0x8002,
}

/** base:allocation extent flags. */
export enum AllocationFlag {
  HOLE = 1 << 0,
  ZERO = 1 << 1,
}

/** Error values on the wire (Linux errno numbers, as the spec fixes them). */
export enum NbdError {
  OK = 0,
  EPERM = 1,
  EIO = 5,
  ENOMEM = 12,
  EINVAL = 22,
  ENOSPC = 28,
  EOVERFLOW = 75,
  ENOTSUP = 95,
  ESHUTDOWN = 108,
}

/** The only meta context this server offers. */
export const BASE_ALLOCATION = 'base:allocation';

/** Default TCP port for NBD. */
export const NBD_DEFAULT_PORT = 10809;

/** Size of an option reply header: magic, option, reply type, length. */
export const OPTION_REPLY_HEADER_SIZE = 20;
/** Size of the client flags word that starts the client's side of the handshake. */
export const CLIENT_FLAGS_SIZE = 4;
/** Size of the server greeting: NBDMAGIC, IHAVEOPT, handshake flags. */
export const SERVER_GREETING_SIZE = 18;
/** Zero padding after the NBD_OPT_EXPORT_NAME reply unless NO_ZEROES was agreed. */
export const EXPORT_NAME_REPLY_PADDING = 124;
/** Spec: strings (export names, messages, queries) MUST be no longer than 4096 bytes. */
export const MAX_STRING_LENGTH = 4096;
/** Size of one base:allocation block status descriptor: u32 length, u32 flags. */
export const BLOCK_DESCRIPTOR_SIZE = 8;
