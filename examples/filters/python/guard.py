"""guard: refuses clients from listed networks unless they show the bypass token, and tags
every response. The same filter exists in every language under examples/filters/.

weir (weir:plugin@0.3.x) calls the lazy hooks, `on_request_lazy` and `on_response_lazy`: they
get handles and read only what the decision needs, the client's address and, for a listed
client, the token header. The record forms (`on_request`, `on_response`, given whole heads)
must be exported too and share the decision."""

import hmac
import ipaddress
import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log, types


class Guard:
    def __init__(self, config: dict):
        deny = config.get("deny", [])
        if not isinstance(deny, list):
            raise ValueError("deny: expected a list of networks")
        self.deny = []
        for i, net in enumerate(deny):
            try:
                self.deny.append(ipaddress.ip_network(net, strict=False))
            except (TypeError, ValueError):
                raise ValueError(f"deny[{i}]: {net!r} is not a network (address/prefix)")
        self.token = config.get("token")
        if not isinstance(self.token, str) or not self.token:
            raise ValueError("token: required, a non-empty string")
        self.token_header = str(config.get("token_header", "x-guard-token")).lower()
        self.tag = str(config.get("tag", "python"))

    def denied(self, client_address: str) -> bool:
        host = client_address.rsplit(":", 1)[0].strip("[]")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return True  # an address we cannot read is not trusted
        return any(ip in net for net in self.deny)

    def token_ok(self, sent: bytes | None) -> bool:
        return sent is not None and hmac.compare_digest(sent, self.token.encode())

    def on_request(self, client_address: str, sent_token) -> types.RequestAction:
        """The decision for a request from `client_address`. `sent_token()` gives the token
        header's first value, if any: it is asked for only when the client is listed."""
        if self.denied(client_address) and not self.token_ok(sent_token()):
            log.log(log.Level.INFO, f"refused {client_address}")
            body = json.dumps({"error": "client network not allowed"}).encode()
            return types.RequestAction_Respond(
                types.LocalResponse(403, [("content-type", b"application/json")], body)
            )
        # The token never travels upstream.
        strip = [types.HeaderOp_Remove(self.token_header)]
        return types.RequestAction_Continue(types.RequestChanges(strip, None))

    def on_response(self) -> types.ResponseAction:
        return types.ResponseAction_Continue([types.HeaderOp_Set(("x-guard", self.tag.encode()))])


def first(headers, name: str) -> bytes | None:
    return next((value for key, value in headers if key == name), None)


guard: Guard | None = None


class HttpFilter(exports.HttpFilter):
    def configure(self, config: str) -> None:
        global guard
        try:
            guard = Guard(json.loads(config))
        except ValueError as e:
            raise Err(str(e))

    def hooks(self) -> types.HookSet:
        return types.HookSet.ON_REQUEST | types.HookSet.ON_RESPONSE

    def body_hooks(self) -> types.BodyHookSet:
        return types.BodyHookSet(0)

    def on_request_lazy(self, request: types.Request) -> types.RequestAction:
        return guard.on_request(request.client_address(), lambda: request.header(guard.token_header))

    def on_response_lazy(self, request, response) -> types.ResponseAction:
        return guard.on_response()

    def on_request(self, request: types.RequestHead) -> types.RequestAction:
        return guard.on_request(
            request.client_address, lambda: first(request.headers, guard.token_header)
        )

    def on_response(self, request, response) -> types.ResponseAction:
        return guard.on_response()

    def on_request_body(self, request, body):
        raise NotImplementedError

    def on_response_body(self, request, response, body):
        raise NotImplementedError
