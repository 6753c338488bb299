"""profile: a weir handler in Python. `GET …/profile/{id}` (under whatever prefix the
route has) asks the `users` cluster for `/users/{id}` and the `orders` cluster for
`/orders?user={id}`, both at once, and answers `{"user": …, "orders": …}`; 502 with the
reason if either fails.

It is a plain wasi:http proxy-world component: the same code runs under `wasmtime serve`.
weir routes each outgoing request by its authority, a cluster name, and refuses clusters
the plugin is not granted (`clusters = [...]` in profile.toml).

Both requests are sent before either answer is waited for, so they are in flight at the
same time; waiting is a plain blocking wait on each answer in turn, not an asyncio event
loop, which would cost more than the rest of the request. An answer's body is read to its
`Content-Length`: reading past its end is answered by an exception, which costs CPython more
than the header's lookup (BENCHMARKS.md, session 23). Every handle is closed with `with` as
soon as it is done, so an instance weir reuses (`reuse = true`) keeps none.
"""

import gc
import json
import os

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import outgoing_handler
from wit_world.imports.streams import StreamError_Closed
from wit_world.imports.types import (
    Fields,
    FutureIncomingResponse,
    IncomingRequest,
    OutgoingBody,
    OutgoingRequest,
    OutgoingResponse,
    ResponseOutparam,
)

# Everything imported so far (the interpreter's start, the standard library) is part of the
# component's snapshot and lives as long as the instance: the cycle collector need not walk
# it. What a request makes is freed by reference counting as the request ends; the collector
# is only needed for the rare cycle (an exception's traceback), so instead of running every
# 2,000 allocations (in the middle of requests, a tenth of their time) it runs after every
# 1,000th answer, once the response has gone. This matters when weir reuses the instance
# (`reuse = true`); a fresh instance per request never gets that far.
gc.freeze()
gc.disable()
_answered = 0

# The [config] table, read on the first request: module-level code runs when the component
# is built, before weir has set WEIR_CONFIG.
_config: dict | None = None


def config() -> dict:
    global _config
    if _config is None:
        _config = json.loads(os.environ.get("WEIR_CONFIG") or "{}")
    return _config


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        with request:
            path = (request.path_with_query() or "/").split("?", 1)[0]
        parts = path.strip("/").split("/")[-2:]
        if len(parts) != 2 or parts[0] != "profile" or not parts[1].isdigit():
            respond(response_out, 404, {"error": "try /profile/{id}"})
            return
        user_id = parts[1]
        users = config().get("users_cluster", "users")
        orders = config().get("orders_cluster", "orders")
        try:
            # Both on their way before waiting for either.
            calls = [
                (users, send(users, f"/users/{user_id}")),
                (orders, send(orders, f"/orders?user={user_id}")),
            ]
            user, user_orders = [receive_json(cluster, future) for cluster, future in calls]
        except Exception as e:  # noqa: BLE001 - any failure of a call is the answer's reason
            respond(response_out, 502, {"error": str(e)})
            return
        merged = b'{"user": ' + user + b', "orders": ' + user_orders + b"}"
        respond_bytes(response_out, 200, merged)


def send(cluster: str, path: str) -> FutureIncomingResponse:
    """Sends `GET path` to `cluster`; the answer arrives on the returned future."""
    # GET is the default method; weir's default scheme is http.
    request = OutgoingRequest(Fields.from_list([("accept", b"application/json")]))
    request.set_authority(cluster)
    request.set_path_with_query(path)
    return outgoing_handler.handle(request, None)


def receive_json(cluster: str, future: FutureIncomingResponse) -> bytes:
    """Waits for the answer on `future` and returns its body, checked to be UTF-8 JSON."""
    with future:
        with future.subscribe() as ready:
            ready.block()
        answer = future.get()
    # `get` is some(ok(ok(response))) once ready; an error at either level is the reason.
    if not isinstance(answer, Ok) or not isinstance(answer.value, Ok):
        reason = answer.value if isinstance(answer, Ok) else answer
        raise RuntimeError(f"{cluster} could not be reached: {reason}")
    with answer.value.value as response:
        status = response.status()
        with response.headers() as headers:
            length = headers.get("content-length")
        body = response.consume()
    # With a Content-Length, reading that many bytes ends the body: no read past its end,
    # whose "closed" answer would be an exception.
    left = int(length[0]) if len(length) == 1 and length[0].isdigit() else None
    chunks = []
    with body.stream() as stream:
        while left is None or left > 0:
            try:
                chunk = stream.blocking_read(64 * 1024 if left is None else min(left, 64 * 1024))
            except Err as e:
                if isinstance(e.value, StreamError_Closed):
                    break
                raise
            chunks.append(chunk)
            if left is not None:
                left -= len(chunk)
    # Dropped rather than finished: the trailers are of no interest.
    body.__exit__(None, None, None)
    if status != 200:
        raise RuntimeError(f"{cluster} answered {status}")
    data = b"".join(chunks)
    # Parsed only to check it: the merged answer is written from these bytes, not serialised
    # again from the parsed objects (`json.dumps` cost CPython more than both parses).
    json.loads(data.decode())
    return data


def respond(response_out: ResponseOutparam, status: int, document: object) -> None:
    respond_bytes(response_out, status, json.dumps(document).encode())


def respond_bytes(response_out: ResponseOutparam, status: int, data: bytes) -> None:
    """Answers `status` with `data`, a JSON document, as the body."""
    response = OutgoingResponse(Fields.from_list([("content-type", b"application/json")]))
    response.set_status_code(status)
    body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    with body.write() as stream:
        if len(data) <= stream.check_write():
            # Room for all of it: written without waiting for the flush.
            stream.write(data)
        else:
            # blocking-write-and-flush takes at most 4096 bytes at a time.
            for start in range(0, len(data), 4096):
                stream.blocking_write_and_flush(data[start : start + 4096])
    OutgoingBody.finish(body, None)
    # The response has gone: the time a collection takes is no one's wait.
    global _answered
    _answered += 1
    if _answered % 1000 == 0:
        gc.collect()
