"""guard: refuses clients from listed networks unless they show the bypass token, and tags
every response. The same filter exists in every language under examples/filters/.

weir (weir:plugin@0.3.x) calls the lazy hooks, `on_request_lazy` and `on_response_lazy`: they
get handles and read only what the decision needs, the client's address and, for a listed
client, the token header. The record forms (`on_request`, `on_response`, given whole heads)
must be exported too and share the decision."""

import hmac
import ipaddress
import json
from socket import AF_INET, AF_INET6, inet_pton

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log, types


class Guard:
    def __init__(self, config: dict):
        deny = config.get("deny", [])
        if not isinstance(deny, list):
            raise ValueError("deny: expected a list of networks")
        # Each network as (mask, network) integers, per address family: a client is tested
        # with one `&` a network, its address read by `socket.inet_pton` (C) rather than
        # `ipaddress` (Python, most of what a call cost: docs/plugins/python.md).
        self.deny4: list[tuple[int, int]] = []
        self.deny6: list[tuple[int, int]] = []
        for i, net in enumerate(deny):
            try:
                network = ipaddress.ip_network(net, strict=False)
            except (TypeError, ValueError):
                raise ValueError(f"deny[{i}]: {net!r} is not a network (address/prefix)")
            networks = self.deny4 if network.version == 4 else self.deny6
            networks.append((int(network.netmask), int(network.network_address)))
        token = config.get("token")
        if not isinstance(token, str) or not token:
            raise ValueError("token: required, a non-empty string")
        self.token = token.encode()
        self.token_header = str(config.get("token_header", "x-guard-token")).lower()
        # The answers that do not depend on the request, built once (the bindings only read
        # them). The token never travels upstream.
        self.allowed = types.RequestAction_Continue(
            types.RequestChanges([types.HeaderOp_Remove(self.token_header)], None)
        )
        tag = str(config.get("tag", "python")).encode()
        self.tagged = types.ResponseAction_Continue([types.HeaderOp_Set(("x-guard", tag))])

    def denied(self, client_address: str) -> bool:
        """Whether `client_address` (`host:port` or `[host]:port`) is in a listed network."""
        host = client_address[: client_address.rfind(":")]
        if host.startswith("["):
            family, host, networks = AF_INET6, host[1:-1], self.deny6
        else:
            family, networks = AF_INET, self.deny4
        try:
            ip = int.from_bytes(inet_pton(family, host), "big")
        except OSError:
            return True  # an address we cannot read is not trusted
        for mask, network in networks:
            if ip & mask == network:
                return True
        return False

    def token_ok(self, sent: bytes | None) -> bool:
        return sent is not None and hmac.compare_digest(sent, self.token)

    def refusal(self, client_address: str) -> types.RequestAction:
        log.log(log.Level.INFO, f"refused {client_address}")
        body = json.dumps({"error": "client network not allowed"}).encode()
        return types.RequestAction_Respond(
            types.LocalResponse(403, [("content-type", b"application/json")], body)
        )


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
        # The token header is read only for a listed client.
        address = request.client_address()
        if guard.denied(address) and not guard.token_ok(request.header(guard.token_header)):
            return guard.refusal(address)
        return guard.allowed

    def on_response_lazy(self, request, response) -> types.ResponseAction:
        return guard.tagged

    def on_request(self, request: types.RequestHead) -> types.RequestAction:
        address = request.client_address
        if guard.denied(address) and not guard.token_ok(first(request.headers, guard.token_header)):
            return guard.refusal(address)
        return guard.allowed

    def on_response(self, request, response) -> types.ResponseAction:
        return guard.tagged

    def on_request_body(self, request, body):
        raise NotImplementedError

    def on_response_body(self, request, response, body):
        raise NotImplementedError
