// {{name}}: a weir filter in TypeScript. It answers GET /{{name}}/ping itself, tags every
// request it passes on with `x-hello`, and every response with `x-plugin`. The types of
// the contract come from `jco guest-types` (build.sh writes them into types/).
//
// weir calls the lazy hooks (`onRequestLazy`, `onResponseLazy`): they get handles to the
// request and response and read only what they ask for, one call into weir each. The record
// forms (`onRequest`, `onResponse`, given whole heads) must be exported too; here both forms
// share the answer.
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

const NAME = '{{name}}';
const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);

/** The answer to a request: `ping` says whether it is GET /{{name}}/ping. */
function answer(ping: boolean): RequestAction {
  if (ping) {
    log('debug', 'ping');
    return { tag: 'respond', val: { status: 200, headers: [['content-type', bytes('text/plain')]], body: bytes('pong') } };
  }
  return { tag: 'continue', val: { headers: [{ tag: 'set', val: ['x-hello', bytes(NAME)] }] } };
}

function tagged(): ResponseAction {
  return { tag: 'continue', val: [{ tag: 'set', val: ['x-plugin', bytes(NAME)] }] };
}

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
  // What weir calls. The path is read only for a GET.
  onRequestLazy(request: Request): RequestAction {
    return answer(request.method() === 'GET' && request.path() === `/${NAME}/ping`);
  },
  onResponseLazy(_request: Request, _response: Response): ResponseAction {
    return tagged();
  },
  // The same hooks, given whole heads.
  onRequest(request: RequestHead): RequestAction {
    return answer(request.method === 'GET' && request.path === `/${NAME}/ping`);
  },
  onResponse(_request: RequestHead, _response: ResponseHead): ResponseAction {
    return tagged();
  },
  // Body hooks are not declared in bodyHooks(), so weir never calls these.
  onRequestBody(): BodyAction {
    throw new Error('not declared');
  },
  onResponseBody(): BodyAction {
    throw new Error('not declared');
  },
};
