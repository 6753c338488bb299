"""{{name}}: a weir filter. It answers GET /{{name}}/ping itself, tags every request it
passes on with `x-hello`, and every response with `x-plugin`.

weir calls the lazy hooks (`on_request_lazy`, `on_response_lazy`): they get handles to the
request and response and read only what they ask for, one call into weir each. The record
forms (`on_request`, `on_response`, given whole heads) must be exported too; here both forms
share the answer."""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log, types

NAME = "{{name}}"


def answer(ping: bool) -> types.RequestAction:
    """The answer to a request: `ping` says whether it is GET /{{name}}/ping."""
    if ping:
        log.log(log.Level.DEBUG, "ping")
        response = types.LocalResponse(200, [("content-type", b"text/plain")], b"pong")
        return types.RequestAction_Respond(response)
    tag = types.HeaderOp_Set(("x-hello", NAME.encode()))
    return types.RequestAction_Continue(types.RequestChanges([tag], None))


def tagged() -> types.ResponseAction:
    return types.ResponseAction_Continue([types.HeaderOp_Set(("x-plugin", NAME.encode()))])


class HttpFilter(exports.HttpFilter):
    def configure(self, config: str) -> None:
        # The [config] table of {{name}}.toml, as JSON. Raise Err to reject it.
        if not isinstance(json.loads(config), dict):
            raise Err("expected a table")

    def hooks(self) -> types.HookSet:
        return types.HookSet.ON_REQUEST | types.HookSet.ON_RESPONSE

    def body_hooks(self) -> types.BodyHookSet:
        return types.BodyHookSet(0)

    # What weir calls. The path is read only for a GET.
    def on_request_lazy(self, request: types.Request) -> types.RequestAction:
        return answer(request.method() == "GET" and request.path() == f"/{NAME}/ping")

    def on_response_lazy(self, request, response) -> types.ResponseAction:
        return tagged()

    # The same hooks, given whole heads.
    def on_request(self, request: types.RequestHead) -> types.RequestAction:
        return answer(request.method == "GET" and request.path == f"/{NAME}/ping")

    def on_response(self, request, response) -> types.ResponseAction:
        return tagged()

    # Body hooks are not declared in body_hooks(), so weir never calls these.
    def on_request_body(self, request, body):
        raise NotImplementedError

    def on_response_body(self, request, response, body):
        raise NotImplementedError
