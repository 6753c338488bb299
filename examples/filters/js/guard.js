// guard: refuses clients from listed networks unless they show the bypass token, and tags
// every response. The same filter exists in every language under examples/filters/.
//
// weir (weir:plugin@0.3.x) calls the lazy hooks, `onRequestLazy` and `onResponseLazy`: they
// get handles and read only what the decision needs, the client's address and, for a listed
// client, the token header. The record forms (`onRequest`, `onResponse`, given whole heads)
// must be exported too and share the decision.
import { log } from 'weir:plugin/log@0.3.7';

let guard = null;

// SpiderMonkey inside a component has no JIT: every step of a hook is interpreted. So the
// per-request path takes few steps: one regular expression over the whole address, plain
// numbers for IPv4 (BigInt only for IPv6), no allocation for the usual answer
// (docs/plugins/javascript.md).

const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

// An IPv4 address as a number below 2^32, from a match of IPV4.
function ipv4(octets) {
  const a = +octets[1];
  const b = +octets[2];
  const c = +octets[3];
  const d = +octets[4];
  if ((a | b | c | d) > 255) return null;
  return ((a << 24) | (b << 16) | (c << 8) | d) >>> 0;
}

// An IPv6 address as a BigInt.
function parseIPv6(text) {
  const halves = text.split('::');
  if (halves.length > 2) return null;
  const groups = (s) => (s === '' ? [] : s.split(':'));
  const head = groups(halves[0]);
  const tail = halves.length === 2 ? groups(halves[1]) : [];
  const missing = 8 - head.length - tail.length;
  if ((halves.length === 1 && missing !== 0) || missing < 0) return null;
  let value = 0n;
  for (const g of [...head, ...Array(halves.length === 2 ? missing : 0).fill('0'), ...tail]) {
    if (!/^[0-9a-fA-F]{1,4}$/.test(g)) return null;
    value = (value << 16n) | BigInt(parseInt(g, 16));
  }
  return value;
}

// A number (IPv4), a BigInt (IPv6), or null.
function parseAddress(text) {
  const octets = IPV4.exec(text);
  return octets ? ipv4(octets) : parseIPv6(text);
}

function parseNetwork(text, index) {
  const [addr, prefix, ...rest] = String(text).split('/');
  const ip = parseAddress(addr);
  const v4 = typeof ip === 'number';
  const bits = v4 ? 32 : 128;
  const len = prefix === undefined ? bits : Number(prefix);
  if (ip === null || rest.length || !Number.isInteger(len) || len < 0 || len > bits) {
    throw `deny[${index}]: ${JSON.stringify(text)} is not a network (address/prefix)`;
  }
  if (v4) {
    // `<< 32` shifts by nothing in JavaScript: a /0's mask is 0, every address matches.
    const mask = len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
    return { v4, mask, base: (ip & mask) >>> 0 };
  }
  const shift = BigInt(128 - len);
  return { v4, shift, base: ip >> shift };
}

// `address` (`ip:port`, IPv6 in brackets) as parseAddress gives it.
function clientIp(address) {
  let host = address.slice(0, address.lastIndexOf(':'));
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  return parseAddress(host);
}

// The client is in a listed network, or its address cannot be read (not trusted).
function listed(address) {
  const ip = clientIp(address);
  if (ip === null) return true;
  const v4 = typeof ip === 'number';
  const deny = guard.deny;
  for (let i = 0; i < deny.length; i++) {
    const n = deny[i];
    if (n.v4 !== v4) continue;
    if (v4 ? ((ip & n.mask) >>> 0) === n.base : ip >> n.shift === n.base) return true;
  }
  return false;
}

function sameBytes(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

const encoder = new TextEncoder();

// The answer for a listed client that sent `token` (the header's first value, if any).
function admit(address, token) {
  if (token && sameBytes(token, guard.token)) return guard.passed;
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

export const httpFilter = {
  configure(text) {
    const config = JSON.parse(text);
    const deny = config.deny ?? [];
    if (!Array.isArray(deny)) throw 'deny: expected a list of networks';
    if (typeof config.token !== 'string' || config.token === '') {
      throw 'token: required, a non-empty string';
    }
    const tokenHeader = String(config.token_header ?? 'x-guard-token').toLowerCase();
    const tag = encoder.encode(String(config.tag ?? 'javascript'));
    guard = {
      deny: deny.map(parseNetwork),
      token: encoder.encode(config.token),
      tokenHeader,
      // The two answers that do not depend on the request, built once: returning them
      // allocates nothing per call.
      passed: { tag: 'continue', val: { headers: [{ tag: 'remove', val: tokenHeader }] } },
      tagged: { tag: 'continue', val: [{ tag: 'set', val: ['x-guard', tag] }] },
    };
  },

  hooks() {
    return { onRequest: true, onResponse: true };
  },

  bodyHooks() {
    return { onRequestBody: false, onResponseBody: false };
  },

  // The token header is read only for a listed client. The token never travels upstream
  // (`guard.passed` removes it).
  onRequestLazy(request) {
    const address = request.clientAddress();
    if (!listed(address)) return guard.passed;
    return admit(address, request.header(guard.tokenHeader));
  },

  onResponseLazy(_request, _response) {
    return guard.tagged;
  },

  onRequest(request) {
    const address = request.clientAddress;
    if (!listed(address)) return guard.passed;
    const sent = request.headers.find(([name]) => name === guard.tokenHeader);
    return admit(address, sent?.[1]);
  },

  onResponse(_request, _response) {
    return guard.tagged;
  },

  onRequestBody() {
    throw new Error('not implemented');
  },

  onResponseBody() {
    throw new Error('not implemented');
  },
};
