// guard: refuses clients from listed networks unless they show the bypass token, and tags
// every response. The same filter exists in every language under examples/filters/.
//
// weir (weir:plugin@0.3.x) calls the lazy hooks, `onRequestLazy` and `onResponseLazy`: they
// get handles and read only what the decision needs, the client's address and, for a listed
// client, the token header. The record forms (`onRequest`, `onResponse`, given whole heads)
// must be exported too and share the decision.
import { log } from 'weir:plugin/log@0.3.6';

let guard = null;

// One regular expression for the whole address, and plain numbers: the engine interprets
// every regular expression test and every BigInt step, so fewer per request is faster
// (docs/plugins/javascript.md).
const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

function parseIPv4(text) {
  const octets = IPV4.exec(text);
  if (!octets) return null;
  let value = 0;
  for (let i = 1; i <= 4; i++) {
    const octet = Number(octets[i]);
    if (octet > 255) return null;
    value = value * 256 + octet;
  }
  return { bits: 32, value: BigInt(value) };
}

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
  return { bits: 128, value };
}

const parseAddress = (text) => parseIPv4(text) ?? parseIPv6(text);

function parseNetwork(text, index) {
  const [addr, prefix, ...rest] = String(text).split('/');
  const ip = parseAddress(addr);
  const len = prefix === undefined ? ip?.bits : Number(prefix);
  if (!ip || rest.length || !Number.isInteger(len) || len < 0 || len > ip.bits) {
    throw `deny[${index}]: ${JSON.stringify(text)} is not a network (address/prefix)`;
  }
  const shift = BigInt(ip.bits - len);
  return { bits: ip.bits, shift, base: ip.value >> shift };
}

function clientIp(address) {
  let host = address.slice(0, address.lastIndexOf(':'));
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  return parseAddress(host);
}

function sameBytes(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

const encoder = new TextEncoder();

// The decision for a request from `clientAddress`. `sentToken()` gives the token header's
// first value, if any: it is asked for only when the client is listed.
function decide(clientAddress, sentToken) {
  const ip = clientIp(clientAddress);
  // An address we cannot read is not trusted.
  const denied = !ip || guard.deny.some((n) => n.bits === ip.bits && ip.value >> n.shift === n.base);
  if (denied) {
    const token = sentToken();
    if (!(token && sameBytes(token, guard.token))) {
      log('info', `refused ${clientAddress}`);
      return {
        tag: 'respond',
        val: {
          status: 403,
          headers: [['content-type', encoder.encode('application/json')]],
          body: encoder.encode(JSON.stringify({ error: 'client network not allowed' })),
        },
      };
    }
  }
  // The token never travels upstream.
  return { tag: 'continue', val: { headers: [{ tag: 'remove', val: guard.tokenHeader }] } };
}

function tagged() {
  return { tag: 'continue', val: [{ tag: 'set', val: ['x-guard', guard.tag] }] };
}

export const httpFilter = {
  configure(text) {
    const config = JSON.parse(text);
    const deny = config.deny ?? [];
    if (!Array.isArray(deny)) throw 'deny: expected a list of networks';
    if (typeof config.token !== 'string' || config.token === '') {
      throw 'token: required, a non-empty string';
    }
    guard = {
      deny: deny.map(parseNetwork),
      token: encoder.encode(config.token),
      tokenHeader: String(config.token_header ?? 'x-guard-token').toLowerCase(),
      tag: encoder.encode(String(config.tag ?? 'javascript')),
    };
  },

  hooks() {
    return { onRequest: true, onResponse: true };
  },

  bodyHooks() {
    return { onRequestBody: false, onResponseBody: false };
  },

  onRequestLazy(request) {
    return decide(request.clientAddress(), () => request.header(guard.tokenHeader));
  },

  onResponseLazy(_request, _response) {
    return tagged();
  },

  onRequest(request) {
    const sent = () => request.headers.find(([name]) => name === guard.tokenHeader)?.[1];
    return decide(request.clientAddress, sent);
  },

  onResponse(_request, _response) {
    return tagged();
  },

  onRequestBody() {
    throw new Error('not implemented');
  },

  onResponseBody() {
    throw new Error('not implemented');
  },
};
