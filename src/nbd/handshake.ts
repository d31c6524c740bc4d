/**
 * Option negotiation (fixed newstyle), like nbdkit's protocol-handshake-newstyle.c. A state
 * machine with no socket: it takes decoded client messages and returns the bytes to send and
 * what the connection should do next.
 */
import type { Logger } from '../core/log';
import {
  BASE_ALLOCATION,
  ClientFlag,
  HandshakeFlag,
  InfoType,
  Option,
  OptionReply,
} from './codec/constants';
import {
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoDescription,
  encodeInfoExport,
  encodeInfoName,
  encodeOptionError,
  encodeOptionReply,
  encodeRepMetaContext,
  encodeRepServer,
  encodeServerGreeting,
  parseExportName,
  parseInfoRequest,
  parseMetaContextRequest,
} from './codec/handshake';
import { resolveExport, transmissionFlags, type ExportConfig, type ResolvedExport } from './export';

/** Context id of base:allocation in BLOCK_STATUS replies (the only context offered). */
export const BASE_ALLOCATION_ID = 1;

export const HANDSHAKE_FLAGS = HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES;

/** What negotiation settled on when the transmission phase starts. */
export interface TransmissionParams {
  export: ResolvedExport;
  structuredReplies: boolean;
  /** Transmission flags as sent to the client. */
  flags: number;
  /** base:allocation context id, when the client SET it for this export. */
  metaContextId?: number;
}

export type OptionOutcome =
  /** Send `replies`, keep negotiating. */
  | { action: 'continue'; replies: Buffer[] }
  /** Send `replies` (possibly none), then close the connection. */
  | { action: 'close'; replies: Buffer[]; reason: string }
  /** Send `replies`, then switch to the transmission phase. */
  | { action: 'transmit'; replies: Buffer[]; params: TransmissionParams };

export interface HandshakeLimits {
  /** More options than this on one connection is abuse: disconnect. nbdkit uses a similar bound. */
  maxOptions: number;
}

export class Handshake {
  private structuredReplies = false;
  private noZeroes = false;
  /** Export the client SET base:allocation for (undefined: no context selected). */
  private metaExport: ExportConfig | undefined;
  private optionCount = 0;
  private readonly resolved = new Map<ExportConfig, ResolvedExport>();

  constructor(
    private readonly exports: readonly ExportConfig[],
    private readonly log: Logger,
    private readonly limits: HandshakeLimits = { maxOptions: 256 },
  ) {}

  greeting(): Buffer {
    return encodeServerGreeting(HANDSHAKE_FLAGS);
  }

  /** Returns a reason to drop the connection, or undefined if the flags are acceptable. */
  clientFlags(flags: number): string | undefined {
    const known = ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES;
    // Spec: the server MUST close the connection on client flags it does not recognise.
    if ((flags & ~known) !== 0) return `unknown client flags 0x${flags.toString(16)}`;
    this.noZeroes = (flags & ClientFlag.NO_ZEROES) !== 0;
    return undefined;
  }

  /** An option whose data was too large to read (already skipped by the decoder). */
  optionTooBig(option: number, length: number): OptionOutcome {
    const limit = this.countOption();
    if (limit) return limit;
    this.log.warn({ option, length }, 'option data too large');
    if (option === Option.EXPORT_NAME) {
      return { action: 'close', replies: [], reason: 'EXPORT_NAME with oversized name' };
    }
    return this.reply([encodeOptionError(option, OptionReply.ERR_TOO_BIG, 'option data too large')]);
  }

  option(option: number, data: Buffer): OptionOutcome {
    const limit = this.countOption();
    if (limit) return limit;
    switch (option) {
      case Option.EXPORT_NAME:
        return this.exportName(data);
      case Option.ABORT:
        return { action: 'close', replies: [encodeOptionReply(option, OptionReply.ACK)], reason: 'client sent ABORT' };
      case Option.LIST:
        return this.list(data);
      case Option.STARTTLS:
        return this.error(option, OptionReply.ERR_POLICY, 'TLS is not configured on this server');
      case Option.INFO:
      case Option.GO:
        return this.infoOrGo(option, data);
      case Option.STRUCTURED_REPLY:
        if (data.length !== 0) return this.error(option, OptionReply.ERR_INVALID, 'STRUCTURED_REPLY takes no data');
        if (this.structuredReplies) {
          return this.error(option, OptionReply.ERR_INVALID, 'structured replies already negotiated');
        }
        this.structuredReplies = true;
        return this.reply([encodeOptionReply(option, OptionReply.ACK)]);
      case Option.LIST_META_CONTEXT:
      case Option.SET_META_CONTEXT:
        return this.metaContext(option, data);
      default:
        this.log.debug({ option }, 'unsupported option');
        return this.error(option, OptionReply.ERR_UNSUP, `option ${option} is not supported`);
    }
  }

  private countOption(): OptionOutcome | undefined {
    if (++this.optionCount > this.limits.maxOptions) {
      this.log.warn({ options: this.optionCount }, 'too many options, disconnecting');
      return { action: 'close', replies: [], reason: 'too many options' };
    }
    return undefined;
  }

  private findExport(name: string): ExportConfig | undefined {
    if (name === '') return this.exports[0];
    return this.exports.find((e) => e.name === name);
  }

  private resolve(cfg: ExportConfig): ResolvedExport {
    let r = this.resolved.get(cfg);
    if (!r) {
      r = resolveExport(cfg);
      this.resolved.set(cfg, r);
    }
    return r;
  }

  private exportName(data: Buffer): OptionOutcome {
    const parsed = parseExportName(data);
    // EXPORT_NAME cannot carry an error: anything wrong is a hard disconnect.
    if (!parsed.ok) return { action: 'close', replies: [], reason: parsed.error };
    const cfg = this.findExport(parsed.value);
    if (!cfg) {
      this.log.warn({ export: parsed.value }, 'EXPORT_NAME for an unknown export');
      return { action: 'close', replies: [], reason: `unknown export ${JSON.stringify(parsed.value)}` };
    }
    const exp = this.resolve(cfg);
    const flags = transmissionFlags(exp, this.structuredReplies);
    return {
      action: 'transmit',
      replies: [encodeExportNameReply(exp.size, flags, this.noZeroes)],
      params: this.params(exp, flags),
    };
  }

  private params(exp: ResolvedExport, flags: number): TransmissionParams {
    return {
      export: exp,
      structuredReplies: this.structuredReplies,
      flags,
      metaContextId: this.structuredReplies && this.metaExport === exp.config ? BASE_ALLOCATION_ID : undefined,
    };
  }

  private list(data: Buffer): OptionOutcome {
    if (data.length !== 0) return this.error(Option.LIST, OptionReply.ERR_INVALID, 'LIST takes no data');
    const replies = this.exports.map((e) =>
      encodeOptionReply(Option.LIST, OptionReply.SERVER, encodeRepServer(e.name, e.description)),
    );
    replies.push(encodeOptionReply(Option.LIST, OptionReply.ACK));
    return this.reply(replies);
  }

  private infoOrGo(option: Option.INFO | Option.GO, data: Buffer): OptionOutcome {
    const parsed = parseInfoRequest(data);
    if (!parsed.ok) return this.error(option, OptionReply.ERR_INVALID, parsed.error);
    const { exportName, infos } = parsed.value;
    const cfg = this.findExport(exportName);
    if (!cfg) return this.error(option, OptionReply.ERR_UNKNOWN, `unknown export ${JSON.stringify(exportName)}`);
    const exp = this.resolve(cfg);
    const flags = transmissionFlags(exp, this.structuredReplies);
    const info = (payload: Buffer) => encodeOptionReply(option, OptionReply.INFO, payload);
    const replies = [info(encodeInfoExport(exp.size, flags))];
    const asked = new Set(infos);
    if (asked.has(InfoType.NAME)) replies.push(info(encodeInfoName(cfg.name)));
    if (asked.has(InfoType.DESCRIPTION) && cfg.description) replies.push(info(encodeInfoDescription(cfg.description)));
    // Sent even when not asked (allowed; minimum 1 imposes nothing on the client).
    const bs = exp.blockSize;
    if (bs) replies.push(info(encodeInfoBlockSize(bs.minimum, bs.preferred, bs.maximum)));
    replies.push(encodeOptionReply(option, OptionReply.ACK));
    if (option === Option.INFO) return this.reply(replies);
    return { action: 'transmit', replies, params: this.params(exp, flags) };
  }

  private metaContext(option: Option.LIST_META_CONTEXT | Option.SET_META_CONTEXT, data: Buffer): OptionOutcome {
    if (!this.structuredReplies) {
      return this.error(option, OptionReply.ERR_INVALID, 'meta contexts need structured replies first');
    }
    const parsed = parseMetaContextRequest(data);
    if (!parsed.ok) return this.error(option, OptionReply.ERR_INVALID, parsed.error);
    const { exportName, queries } = parsed.value;
    const cfg = this.findExport(exportName);
    if (!cfg) return this.error(option, OptionReply.ERR_UNKNOWN, `unknown export ${JSON.stringify(exportName)}`);
    let match: boolean;
    if (option === Option.LIST_META_CONTEXT) {
      // No query, or "base:" (the whole namespace), lists everything we have.
      match = queries.length === 0 || queries.some((q) => q === 'base:' || q === BASE_ALLOCATION);
    } else {
      match = queries.some((q) => q === BASE_ALLOCATION);
      // Each SET replaces the previous selection; unknown namespaces are ignored, not errors.
      this.metaExport = match ? cfg : undefined;
    }
    const replies: Buffer[] = [];
    if (match) {
      replies.push(
        encodeOptionReply(option, OptionReply.META_CONTEXT, encodeRepMetaContext(BASE_ALLOCATION_ID, BASE_ALLOCATION)),
      );
    }
    replies.push(encodeOptionReply(option, OptionReply.ACK));
    return this.reply(replies);
  }

  private reply(replies: Buffer[]): OptionOutcome {
    return { action: 'continue', replies };
  }

  private error(option: number, type: OptionReply, message: string): OptionOutcome {
    if (type !== OptionReply.ERR_UNSUP) this.log.debug({ option, reply: type, message }, 'option refused');
    return { action: 'continue', replies: [encodeOptionError(option, type, message)] };
  }
}
