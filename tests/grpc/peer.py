"""A real gRPC server and client (grpcio) for weir's gRPC tests, without generated code:
methods take and return raw bytes.

    python3 peer.py server          prints its port, then serves until stdin closes
    python3 peer.py greeter         the same, serving helloworld.Greeter (below)
    python3 peer.py client HOST:PORT [METADATA_KEY=VALUE ...]
                                    runs each call once, prints one JSON line per call

Service echo.Echo:
    Unary(bytes) -> b"unary:" + bytes
    ServerStream(bytes) -> three messages b"part-1:" + bytes ... b"part-3:" + bytes
    Bidi(stream bytes) -> b"bidi:" + each message, as it arrives
    Fail(bytes) -> status NOT_FOUND, details "no such thing"
    Slow(bytes) -> answers after 5 s (the client calls it with a 0.5 s deadline)

Service helloworld.Greeter (proto/helloworld.proto; its tiny messages coded by hand here):
    SayHello(HelloRequest{name}) -> HelloReply{message: "Hello " + name}; an empty name
        -> status INVALID_ARGUMENT, details "name is empty"; name "hidden" -> NOT_FOUND
    SayGoodbye(HelloRequest{name}) -> HelloReply{message: "Goodbye " + name}
    StreamHellos(HelloRequest{name, times}) -> `times` (1 if 0) HelloReply{"Hello NAME #i"};
        name "broken" -> one message, then status UNAVAILABLE "stream broke" (in trailers,
        after the message)
    SetGreeting(SetGreetingRequest{name, greeting{text, shout}, tags}) ->
        HelloReply{"NAME: TEXT" + "!" if shout + " [TAG,...]" if tags}; an empty name ->
        INVALID_ARGUMENT
    DeleteGreeting(HelloRequest{name}) -> HelloReply{"Deleted " + name}; "hidden" -> NOT_FOUND
"""

import json
import sys
import time
from concurrent import futures

import grpc


def identity(b):
    return b


def unary(request, context):
    return b"unary:" + request


def server_stream(request, context):
    for i in range(1, 4):
        yield b"part-%d:" % i + request


def bidi(requests, context):
    for r in requests:
        yield b"bidi:" + r


def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


def slow(request, context):
    # A message of digits is the seconds to take; anything else takes 5 s.
    time.sleep(float(request) if request[:1].isdigit() else 5)
    return request


def varint(data, i):
    value, shift = 0, 0
    while True:
        b = data[i]
        value |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            return value, i
        shift += 7


def fields(data):
    """Every (number, value) of a protobuf message, in order: an int for a varint, bytes for
    a length-delimited field."""
    found, i = [], 0
    while i < len(data):
        key, i = varint(data, i)
        kind = key & 7
        if kind == 0:
            value, i = varint(data, i)
        elif kind == 2:
            length, i = varint(data, i)
            value = data[i:i + length]
            i += length
        elif kind == 1:
            value, i = data[i:i + 8], i + 8
        elif kind == 5:
            value, i = data[i:i + 4], i + 4
        else:
            raise ValueError("unsupported wire type %d" % kind)
        found.append((key >> 3, value))
    return found


def last(data, number, default):
    """The last value of field `number` (`default` if absent)."""
    values = [v for n, v in fields(data) if n == number]
    return values[-1] if values else default


def string_field(data, number):
    """The last value of string field `number` in a protobuf message ("" if absent)."""
    return last(data, number, b"").decode()


def hello_reply(message):
    """HelloReply{message}: field 1, length-delimited."""
    encoded = message.encode()
    length, out = len(encoded), bytearray([0x0A])
    while length >= 0x80:
        out.append((length & 0x7F) | 0x80)
        length >>= 7
    out.append(length)
    return bytes(out) + encoded


def say_hello(request, context):
    name = string_field(request, 1)
    if name == "":
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name is empty")
    if name == "hidden":
        context.abort(grpc.StatusCode.NOT_FOUND, "no one called hidden")
    return hello_reply("Hello " + name)


def say_goodbye(request, context):
    return hello_reply("Goodbye " + string_field(request, 1))


def stream_hellos(request, context):
    name, times = string_field(request, 1), last(request, 2, 0) or 1
    if name == "broken":
        yield hello_reply("Hello broken #1")
        context.abort(grpc.StatusCode.UNAVAILABLE, "stream broke")
    for i in range(1, times + 1):
        yield hello_reply("Hello %s #%d" % (name, i))


def set_greeting(request, context):
    name = string_field(request, 1)
    if name == "":
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name is empty")
    greeting = last(request, 2, b"")
    text = string_field(greeting, 1)
    shout = last(greeting, 2, 0) == 1
    tags = [v.decode() for n, v in fields(request) if n == 3]
    message = "%s: %s%s" % (name, text, "!" if shout else "")
    if tags:
        message += " [%s]" % ",".join(tags)
    return hello_reply(message)


def delete_greeting(request, context):
    name = string_field(request, 1)
    if name == "hidden":
        context.abort(grpc.StatusCode.NOT_FOUND, "no one called hidden")
    return hello_reply("Deleted " + name)


def serve_greeter():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handlers = {
        "SayHello": grpc.unary_unary_rpc_method_handler(say_hello, identity, identity),
        "SayGoodbye": grpc.unary_unary_rpc_method_handler(say_goodbye, identity, identity),
        "StreamHellos": grpc.unary_stream_rpc_method_handler(stream_hellos, identity, identity),
        "SetGreeting": grpc.unary_unary_rpc_method_handler(set_greeting, identity, identity),
        "DeleteGreeting": grpc.unary_unary_rpc_method_handler(delete_greeting, identity, identity),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("helloworld.Greeter", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(0)


def serve():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, identity, identity),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream, identity, identity),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi, identity, identity),
        "Fail": grpc.unary_unary_rpc_method_handler(fail, identity, identity),
        "Slow": grpc.unary_unary_rpc_method_handler(slow, identity, identity),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("echo.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(0)


def outcome(name, call):
    try:
        result = call()
        if isinstance(result, bytes):
            result = [result]
        return {"call": name, "code": 0, "messages": [m.decode() for m in result]}
    except grpc.RpcError as e:
        return {"call": name, "code": e.code().value[0], "details": e.details()}


def client(target, metadata):
    channel = grpc.insecure_channel(target)
    md = tuple(metadata)
    unary_call = channel.unary_unary("/echo.Echo/Unary", identity, identity)
    stream_call = channel.unary_stream("/echo.Echo/ServerStream", identity, identity)
    bidi_call = channel.stream_stream("/echo.Echo/Bidi", identity, identity)
    fail_call = channel.unary_unary("/echo.Echo/Fail", identity, identity)
    slow_call = channel.unary_unary("/echo.Echo/Slow", identity, identity)
    results = [
        outcome("unary", lambda: unary_call(b"hi", metadata=md, timeout=10)),
        outcome("server-stream", lambda: list(stream_call(b"s", metadata=md, timeout=10))),
        outcome("bidi", lambda: list(bidi_call(iter([b"a", b"b", b"c"]), metadata=md, timeout=10))),
        outcome("fail", lambda: fail_call(b"x", metadata=md, timeout=10)),
        outcome("slow", lambda: slow_call(b"z", metadata=md, timeout=0.5)),
    ]
    for r in results:
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve()
    elif sys.argv[1] == "greeter":
        serve_greeter()
    else:
        client(sys.argv[2], [tuple(kv.split("=", 1)) for kv in sys.argv[3:]])
