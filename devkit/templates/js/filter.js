// {{name}}: a weir filter. It answers GET /{{name}}/ping itself, tags every request it
// passes on with `x-hello`, and every response with `x-plugin`.
//
// weir calls the lazy hooks (`onRequestLazy`, `onResponseLazy`): they get handles to the
// request and response and read only what they ask for, one call into weir each. The record
// forms (`onRequest`, `onResponse`, given whole heads) must be exported too; here both forms
// share the answer.
import { log } from 'weir:plugin/log@0.3.7';

const NAME = '{{name}}';
const bytes = (text) => new TextEncoder().encode(text);

// The answer to a request: `ping` says whether it is GET /{{name}}/ping.
function answer(ping) {
  if (ping) {
    log('debug', 'ping');
    return {
      tag: 'respond',
      val: { status: 200, headers: [['content-type', bytes('text/plain')]], body: bytes('pong') },
    };
  }
  return { tag: 'continue', val: { headers: [{ tag: 'set', val: ['x-hello', bytes(NAME)] }] } };
}

const tagged = () => ({ tag: 'continue', val: [{ tag: 'set', val: ['x-plugin', bytes(NAME)] }] });

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

  // What weir calls. The path is read only for a GET.
  onRequestLazy(request) {
    return answer(request.method() === 'GET' && request.path() === `/${NAME}/ping`);
  },

  onResponseLazy(_request, _response) {
    return tagged();
  },

  // The same hooks, given whole heads.
  onRequest(request) {
    return answer(request.method === 'GET' && request.path === `/${NAME}/ping`);
  },

  onResponse(_request, _response) {
    return tagged();
  },

  // Body hooks are not declared in bodyHooks(), so weir never calls these.
  onRequestBody() {
    throw new Error('not declared');
  },
  onResponseBody() {
    throw new Error('not declared');
  },
};
