// The control stream's lines (docs/protocol.md "The control stream"): what a peer may say, parsed
// with a schema where it enters, into the events of a link's machine (src/tunnel/linklife.ts).
import { z } from 'zod';
import { IpdeadgateError } from '../errors';
import { SERVICE_NAME } from './config';
import type { LinkEvent } from './linklife';

/**
 * The control stream's messages (docs/protocol.md "The control stream"), as the peer may send
 * them: a JSON object with a string `type`; the known types with their fields. Extra fields are
 * room for later versions; the services map is checked entry by entry (sanitizeServices).
 */
const controlLine = z.object({ type: z.string().max(64) }).passthrough();
const controlMessage = z.discriminatedUnion('type', [
  z.object({
    type: z.literal('hello'),
    name: z.string().min(1).max(255),
    role: z.string().max(64),
    services: z.unknown().optional(),
  }),
  z.object({ type: z.literal('tell'), services: z.unknown().optional() }),
  z.object({ type: z.literal('bye'), reason: z.string().optional(), detail: z.string().optional() }),
]);
const KNOWN_CONTROL = new Set(['hello', 'tell', 'bye']);

/**
 * What the peer says on the control stream, one JSON object a line: an event for the link's
 * machine, undefined for a type from a later version (not ours to judge), or an Error naming what
 * is wrong with the line (the link is closed for it).
 */
export function parseControlLine(line: string): LinkEvent | undefined | Error {
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch {
    return new IpdeadgateError('ERR_TUNNEL_HANDSHAKE', 'malformed control message: not JSON');
  }
  const head = controlLine.safeParse(v);
  if (!head.success)
    return new IpdeadgateError(
      'ERR_TUNNEL_HANDSHAKE',
      'malformed control message: not a JSON object with a string "type"',
    );
  if (!KNOWN_CONTROL.has(head.data.type)) return undefined;
  const r = controlMessage.safeParse(v);
  if (!r.success) {
    const issue = r.error.issues[0];
    return new IpdeadgateError(
      'ERR_TUNNEL_HANDSHAKE',
      `malformed control message "${head.data.type}": ${issue ? `${issue.path.join('.') || 'message'}: ${issue.message}` : 'invalid'}`,
    );
  }
  const m = r.data;
  switch (m.type) {
    case 'bye':
      return {
        type: 'bye',
        detail: `the peer refused the link (${(m.reason ?? '').slice(0, 64)}): ${(m.detail ?? '').slice(0, 512)}`,
      };
    case 'hello':
      return {
        type: 'hello',
        name: m.name.slice(0, 63),
        role: m.role.slice(0, 32),
        services: sanitizeServices(m.services),
      };
    case 'tell':
      return { type: 'tell', services: sanitizeServices(m.services) };
  }
}

/** The well-formed entries of an announced services map (name syntax, hops 0..63); the rest is dropped. */
function sanitizeServices(v: unknown): Record<string, number> {
  const out: Record<string, number> = {};
  if (!v || typeof v !== 'object' || Array.isArray(v)) return out;
  for (const [k, h] of Object.entries(v as Record<string, unknown>)) {
    if (SERVICE_NAME.test(k) && typeof h === 'number' && Number.isInteger(h) && h >= 0 && h < 64) out[k] = h;
  }
  return out;
}
