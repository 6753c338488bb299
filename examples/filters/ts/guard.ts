// guard: refuses clients from listed networks unless they show the bypass token, and tags
// every response. The same filter exists in every language under examples/filters/; this is
// the JavaScript one with the contract's types (`jco guest-types`, written by build.sh).
//
// weir (weir:plugin@0.3.x) calls the lazy hooks, `onRequestLazy` and `onResponseLazy`: they
// get handles and read only what the decision needs, the client's address and, for a listed
// client, the token header. The record forms (`onRequest`, `onResponse`, given whole heads)
// must be exported too and share the decision.
import { log } from 'weir:plugin/log@0.3.7';
import type {
  BodyAction,
  BodyHookSet,
  HookSet,
  Request,
  RequestAction,
  RequestHead,
  Response,
  ResponseAction,
  ResponseHead,
} from 'weir:plugin/types@0.3.7';

type HttpFilter = typeof import('weir:plugin/http-filter@0.3.7');

/**
 * A network: IPv4 addresses whose bits under `mask` equal `base`, or IPv6 addresses whose top
 * bits, shifted down by `shift`, equal `base`.
 */
type Network = { v4: true; mask: number; base: number } | { v4: false; shift: bigint; base: bigint };

interface Guard {
  deny: Network[];
  token: Uint8Array;
  tokenHeader: string;
  /** The two answers that do not depend on the request, built once. */
  passed: RequestAction;
  tagged: ResponseAction;
}

let guard: Guard | null = null;
const encoder = new TextEncoder();

// SpiderMonkey inside a component has no JIT: every step of a hook is interpreted. So the
// per-request path takes few steps: one regular expression over the whole address, plain
// numbers for IPv4 (BigInt only for IPv6), no allocation for the usual answer
// (docs/plugins/javascript.md).

const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

/** An IPv4 address as a number below 2^32, from a match of IPV4. */
function ipv4(octets: RegExpExecArray): number | null {
  const a = +octets[1];
  const b = +octets[2];
  const c = +octets[3];
  const d = +octets[4];
  if ((a | b | c | d) > 255) return null;
  return ((a << 24) | (b << 16) | (c << 8) | d) >>> 0;
}

function parseIPv6(text: string): bigint | null {
  const halves = text.split('::');
  if (halves.length > 2) return null;
  const groups = (s: string): string[] => (s === '' ? [] : s.split(':'));
  const head = groups(halves[0]);
  const tail = halves.length === 2 ? groups(halves[1]) : [];
  const missing = 8 - head.length - tail.length;
  if ((halves.length === 1 && missing !== 0) || missing < 0) return null;
  const zeros: string[] = Array(halves.length === 2 ? missing : 0).fill('0');
  let value = 0n;
  for (const g of [...head, ...zeros, ...tail]) {
    if (!/^[0-9a-fA-F]{1,4}$/.test(g)) return null;
    value = (value << 16n) | BigInt(parseInt(g, 16));
  }
  return value;
}

/** A number (IPv4), a bigint (IPv6), or null. */
function parseAddress(text: string): number | bigint | null {
  const octets = IPV4.exec(text);
  return octets ? ipv4(octets) : parseIPv6(text);
}

function parseNetwork(text: unknown, index: number): Network {
  const [addr, prefix, ...rest] = String(text).split('/');
  const ip = parseAddress(addr);
  const bits = typeof ip === 'number' ? 32 : 128;
  const len = prefix === undefined ? bits : Number(prefix);
  if (ip === null || rest.length || !Number.isInteger(len) || len < 0 || len > bits) {
    throw `deny[${index}]: ${JSON.stringify(text)} is not a network (address/prefix)`;
  }
  if (typeof ip === 'number') {
    // `<< 32` shifts by nothing in JavaScript: a /0's mask is 0, every address matches.
    const mask = len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
    return { v4: true, mask, base: (ip & mask) >>> 0 };
  }
  const shift = BigInt(128 - len);
  return { v4: false, shift, base: ip >> shift };
}

/** `address` (`ip:port`, IPv6 in brackets) as parseAddress gives it. */
function clientIp(address: string): number | bigint | null {
  let host = address.slice(0, address.lastIndexOf(':'));
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  return parseAddress(host);
}

function configured(): Guard {
  if (!guard) throw new Error('configure was not called');
  return guard;
}

/** The client is in a listed network, or its address cannot be read (not trusted). */
function listed(address: string): boolean {
  const ip = clientIp(address);
  if (ip === null) return true;
  const deny = configured().deny;
  for (let i = 0; i < deny.length; i++) {
    const n = deny[i];
    if (n.v4 ? typeof ip === 'number' && ((ip & n.mask) >>> 0) === n.base
             : typeof ip === 'bigint' && ip >> n.shift === n.base) {
      return true;
    }
  }
  return false;
}

/** Compares without stopping at the first difference, so timing says nothing. */
function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

/** The answer for a listed client that sent `token` (the header's first value, if any). */
function admit(address: string, token: Uint8Array | undefined): RequestAction {
  const { token: wanted, passed } = configured();
  if (token && sameBytes(token, wanted)) return passed;
  log('info', `refused ${address}`);
  return {
    tag: 'respond',
    val: {
      status: 403,
      headers: [['content-type', encoder.encode('application/json')]],
      body: encoder.encode(JSON.stringify({ error: 'client network not allowed' })),
    },
  };
}

export const httpFilter: HttpFilter = {
  configure(text: string): void {
    const config = JSON.parse(text);
    const deny: unknown = config.deny ?? [];
    if (!Array.isArray(deny)) throw 'deny: expected a list of networks';
    if (typeof config.token !== 'string' || config.token === '') {
      throw 'token: required, a non-empty string';
    }
    const tokenHeader = String(config.token_header ?? 'x-guard-token').toLowerCase();
    const tag = encoder.encode(String(config.tag ?? 'typescript'));
    guard = {
      deny: deny.map(parseNetwork),
      token: encoder.encode(config.token),
      tokenHeader,
      // The token never travels upstream.
      passed: { tag: 'continue', val: { headers: [{ tag: 'remove', val: tokenHeader }] } },
      tagged: { tag: 'continue', val: [{ tag: 'set', val: ['x-guard', tag] }] },
    };
  },

  hooks(): HookSet {
    return { onRequest: true, onResponse: true };
  },

  bodyHooks(): BodyHookSet {
    return { onRequestBody: false, onResponseBody: false };
  },

  // The token header is read only for a listed client.
  onRequestLazy(request: Request): RequestAction {
    const address = request.clientAddress();
    if (!listed(address)) return configured().passed;
    return admit(address, request.header(configured().tokenHeader));
  },

  onResponseLazy(_request: Request, _response: Response): ResponseAction {
    return configured().tagged;
  },

  onRequest(request: RequestHead): RequestAction {
    const address = request.clientAddress;
    if (!listed(address)) return configured().passed;
    const { tokenHeader } = configured();
    const sent = request.headers.find(([name]) => name === tokenHeader);
    return admit(address, sent?.[1]);
  },

  onResponse(_request: RequestHead, _response: ResponseHead): ResponseAction {
    return configured().tagged;
  },

  // Body hooks are not declared in bodyHooks(), so weir never calls these.
  onRequestBody(): BodyAction {
    throw new Error('not declared');
  },

  onResponseBody(): BodyAction {
    throw new Error('not declared');
  },
};
