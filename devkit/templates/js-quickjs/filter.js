// {{name}}: a weir filter on QuickJS (componentize-qjs). It answers GET /{{name}}/ping
// itself, tags every request it passes on with `x-hello`, and every response with
// `x-plugin`.
//
// componentize-qjs 0.4.5 cannot give back the handle a lazy hook is lent, so {{name}}.toml
// must say `whole_heads = true`: weir then calls the record forms, `onRequest` and
// `onResponse`, with whole heads, and never the lazy hooks, which throw here. A record form
// has no handle, so it cannot leave header changes for the response, the cache key, the
// method or the body: the response hook sets the response's headers instead.
import { log } from 'weir:plugin/log@0.3.7';

const NAME = '{{name}}';

// UTF-8 bytes of `text` (QuickJS has no TextEncoder).
function bytes(text) {
  const raw = unescape(encodeURIComponent(text));
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

export const httpFilter = {
  // The [config] table of {{name}}.toml, as JSON. Throw a string to reject it.
  configure(config) {
    const table = JSON.parse(config);
    if (typeof table !== 'object' || Array.isArray(table)) throw 'expected a table';
  },

  hooks() {
    return { onRequest: true, onResponse: true };
  },

  bodyHooks() {
    return { onRequestBody: false, onResponseBody: false };
  },

  // What weir calls, given the whole request head.
  onRequest(request) {
    if (request.method === 'GET' && request.path === `/${NAME}/ping`) {
      log('debug', 'ping');
      return {
        tag: 'respond',
        val: { status: 200, headers: [['content-type', bytes('text/plain')]], body: bytes('pong') },
      };
    }
    return { tag: 'continue', val: { headers: [{ tag: 'set', val: ['x-hello', bytes(NAME)] }] } };
  },

  onResponse(_request, _response) {
    return { tag: 'continue', val: [{ tag: 'set', val: ['x-plugin', bytes(NAME)] }] };
  },

  // Never called with `whole_heads = true`.
  onRequestLazy() {
    throw new Error('onRequestLazy: set whole_heads = true in {{name}}.toml');
  },
  onResponseLazy() {
    throw new Error('onResponseLazy: set whole_heads = true in {{name}}.toml');
  },

  // Body hooks are not declared in bodyHooks(), so weir never calls these.
  onRequestBody() {
    throw new Error('not declared');
  },
  onResponseBody() {
    throw new Error('not declared');
  },
};
