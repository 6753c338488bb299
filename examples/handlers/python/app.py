"""profile: a weir handler in Python. `GET …/profile/{id}` (under whatever prefix the
route has) asks the `users` cluster for `/users/{id}` and the `orders` cluster for
`/orders?user={id}`, both at once, and answers `{"user": …, "orders": …}`; 502 with the
reason if either fails.

It is a plain wasi:http proxy-world component: the same code runs under `wasmtime serve`.
weir routes each outgoing request by its authority, a cluster name, and refuses clusters
the plugin is not granted (`clusters = [...]` in profile.toml).
"""

import asyncio
import json
import os

import poll_loop
from componentize_py_types import Ok
from poll_loop import PollLoop, Sink, Stream
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Get,
    OutgoingRequest,
    OutgoingResponse,
    ResponseOutparam,
    Scheme_Http,
)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        loop = PollLoop()
        asyncio.set_event_loop(loop)
        loop.run_until_complete(handle(request, response_out))


async def handle(request: IncomingRequest, response_out: ResponseOutparam) -> None:
    # weir passes the [config] table of profile.toml as JSON in WEIR_CONFIG.
    config = json.loads(os.environ.get("WEIR_CONFIG") or "{}")
    users = config.get("users_cluster", "users")
    orders = config.get("orders_cluster", "orders")

    path = (request.path_with_query() or "/").split("?", 1)[0]
    parts = path.strip("/").split("/")[-2:]
    if len(parts) != 2 or parts[0] != "profile" or not parts[1].isdigit():
        await respond(response_out, 404, {"error": "try /profile/{id}"})
        return
    user_id = parts[1]
    try:
        user, user_orders = await asyncio.gather(
            get_json(users, f"/users/{user_id}"),
            get_json(orders, f"/orders?user={user_id}"),
        )
    except Exception as e:  # noqa: BLE001 - any failure of a call is the answer's reason
        await respond(response_out, 502, {"error": str(e)})
        return
    await respond(response_out, 200, {"user": user, "orders": user_orders})


async def get_json(cluster: str, path: str) -> object:
    """GET `path` from `cluster` and parse the JSON answer."""
    request = OutgoingRequest(Fields.from_list([("accept", b"application/json")]))
    request.set_method(Method_Get())
    request.set_scheme(Scheme_Http())
    request.set_authority(cluster)
    request.set_path_with_query(path)
    response = await poll_loop.send(request)
    status = response.status()
    stream = Stream(response.consume())
    chunks = []
    while (chunk := await stream.next()) is not None:
        chunks.append(chunk)
    if status != 200:
        raise RuntimeError(f"{cluster} answered {status}")
    return json.loads(b"".join(chunks))


async def respond(response_out: ResponseOutparam, status: int, document: object) -> None:
    response = OutgoingResponse(Fields.from_list([("content-type", b"application/json")]))
    response.set_status_code(status)
    body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    sink = Sink(body)
    await sink.send(json.dumps(document).encode())
    sink.close()
