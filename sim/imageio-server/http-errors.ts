/**
 * The HTTP error a request handler raises, and how imageio writes responses: `server` and
 * `date` first, lower-case header names, error bodies as one line of text/plain plus "\n".
 */
import type { ServerResponse } from 'node:http';
import { pyJsonDumps, JsonData } from './py-format';

export const IMAGEIO_VERSION = '2.5.3';
export const SERVER_HEADER = `imageio/${IMAGEIO_VERSION}`;

/** Python's reason phrases where they differ from Node's. */
const REASONS: Record<number, string> = {
  413: 'Request Entity Too Large',
  416: 'Requested Range Not Satisfiable',
};

/** An error response: status, one-line message, and whether the connection must close. */
export class ImageioHttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly opts: { contentRange?: string; close?: boolean } = {},
  ) {
    super(message);
    this.name = 'ImageioHttpError';
  }
}

/** 403 for an unknown, expired, cancelled or forbidding ticket; always closes the connection. */
export function forbidden(reason: string): ImageioHttpError {
  return new ImageioHttpError(403, `You are not allowed to access this resource: ${reason}`, { close: true });
}

export const INTERNAL_ERROR_MESSAGE = 'Server failed to perform the request, check logs';

/** Start a response the way imageio does. Node's automatic Date/Connection headers are replaced. */
export function beginResponse(res: ServerResponse, status: number, close: boolean): void {
  res.statusCode = status;
  const reason = REASONS[status];
  if (reason) res.statusMessage = reason;
  res.sendDate = false;
  res.setHeader('server', SERVER_HEADER);
  res.setHeader('date', new Date().toUTCString());
  if (close) res.setHeader('connection', 'close');
  // Without a connection header Node still closes for HTTP/1.0 and "Connection: close".
  else res.removeHeader('connection');
}

export function sendError(res: ServerResponse, err: ImageioHttpError, close: boolean): void {
  const body = Buffer.from(`${err.message}\n`, 'utf8');
  beginResponse(res, err.status, close);
  res.setHeader('content-length', body.length);
  res.setHeader('content-type', 'text/plain; charset=UTF-8');
  if (err.opts.contentRange) res.setHeader('content-range', err.opts.contentRange);
  res.end(body);
}

export function sendJson(res: ServerResponse, data: JsonData, close: boolean, headers: Record<string, string> = {}): void {
  const body = Buffer.from(`${pyJsonDumps(data)}\n`, 'utf8');
  beginResponse(res, 200, close);
  res.setHeader('content-length', body.length);
  for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
  res.setHeader('content-type', 'application/json');
  res.end(body);
}

export function sendEmpty(res: ServerResponse, status: number, close: boolean): void {
  beginResponse(res, status, close);
  if (status !== 204) res.setHeader('content-length', 0);
  res.end();
}

/** Raw bytes of an error written straight to a socket, for requests Node's parser rejected. */
export function rawErrorResponse(status: number, reason: string, message: string): string {
  const body = Buffer.from(`${message}\n`, 'utf8');
  return (
    `HTTP/1.1 ${status} ${reason}\r\nserver: ${SERVER_HEADER}\r\ndate: ${new Date().toUTCString()}\r\n` +
    `content-length: ${body.length}\r\nconnection: close\r\ncontent-type: text/plain; charset=UTF-8\r\n\r\n` +
    body.toString('utf8')
  );
}

/** Python BaseHTTPRequestHandler's HTML error page (what imageio sends for unparsable requests). */
export function rawHtmlError(status: number, reason: string, message: string, explain: string): string {
  const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  const body = Buffer.from(
    '<!DOCTYPE HTML>\n<html lang="en">\n    <head>\n        <meta charset="utf-8">\n' +
      '        <title>Error response</title>\n    </head>\n    <body>\n        <h1>Error response</h1>\n' +
      `        <p>Error code: ${status}</p>\n        <p>Message: ${esc(message)}.</p>\n` +
      `        <p>Error code explanation: ${status} - ${esc(explain)}.</p>\n    </body>\n</html>\n`,
    'utf8',
  );
  return (
    `HTTP/1.1 ${status} ${reason}\r\nServer: ${SERVER_HEADER}\r\nDate: ${new Date().toUTCString()}\r\n` +
    `Connection: close\r\nContent-Type: text/html;charset=utf-8\r\nContent-Length: ${body.length}\r\n\r\n` +
    body.toString('utf8')
  );
}
