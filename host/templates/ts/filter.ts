// {{name}}: a weir filter in TypeScript. It answers GET /{{name}}/ping itself, tags every
// request it passes on with `x-hello`, and every response with `x-plugin`. The types of
// the contract come from `jco guest-types` (build.sh writes them into types/).
import { log } from 'weir:plugin/log@0.2.0';
import type {
  BodyAction,
  BodyHookSet,
  HookSet,
  RequestAction,
  RequestHead,
  ResponseAction,
  ResponseHead,
} from 'weir:plugin/types@0.2.0';

type HttpFilter = typeof import('weir:plugin/http-filter@0.2.0');

const NAME = '{{name}}';
const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);

export const httpFilter: HttpFilter = {
  configure(config: string): void {
    const table: unknown = JSON.parse(config);
    if (typeof table !== 'object' || table === null || Array.isArray(table)) throw 'expected a table';
  },
  hooks(): HookSet {
    return { onRequest: true, onResponse: true };
  },
  bodyHooks(): BodyHookSet {
    return { onRequestBody: false, onResponseBody: false };
  },
  onRequest(request: RequestHead): RequestAction {
    if (request.method === 'GET' && request.path === `/${NAME}/ping`) {
      log('debug', 'ping');
      return { tag: 'respond', val: { status: 200, headers: [['content-type', bytes('text/plain')]], body: bytes('pong') } };
    }
    return { tag: 'continue', val: { headers: [{ tag: 'set', val: ['x-hello', bytes(NAME)] }] } };
  },
  onResponse(_request: RequestHead, _response: ResponseHead): ResponseAction {
    return { tag: 'continue', val: [{ tag: 'set', val: ['x-plugin', bytes(NAME)] }] };
  },
  onRequestBody(): BodyAction {
    throw new Error('not declared');
  },
  onResponseBody(): BodyAction {
    throw new Error('not declared');
  },
};
