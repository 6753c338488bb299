// {{name}}: a weir filter. It answers GET /{{name}}/ping itself, tags every request it
// passes on with `x-hello`, and every response with `x-plugin`.
import { log } from 'weir:plugin/log@0.2.0';

const NAME = '{{name}}';
const bytes = (text) => new TextEncoder().encode(text);

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

  // Body hooks are not declared in bodyHooks(), so weir never calls these.
  onRequestBody() {
    throw new Error('not declared');
  },
  onResponseBody() {
    throw new Error('not declared');
  },
};
