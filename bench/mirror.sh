#!/usr/bin/env bash
# Mirroring's cost to the client (issue 25's bar): one weir, two routes to the same nginx
# origin, one of them mirroring every request (`percent = 100`) to a cluster that answers
# after 2 s. Rounds interleaved; per route: requests/s, p50, p99, and the mirror's counters.
# weir runs one worker pinned to CPU 0; wrk (-t1 -c$CONNS), the origin and the sleeping
# mirror share CPU 1. The mirror cluster's max_requests (1024) bounds the copies in flight:
# past it copies fail at once and are counted `failed`.
# Needs a release weir (WEIR=target/release/weir), nginx, wrk, python3.
# Usage: bench/mirror.sh  (env: DURATION=10s ROUNDS=3 CONNS=32)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-32}
WEIR=${WEIR:-target/release/weir}
ORIGIN=18681 SLEEPER=18682 PORT=18690 ADMIN=18691
. bench/common.sh
require_tools
tmp=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

write_origin_conf "$tmp/origin.conf" "$ORIGIN"
taskset -c 1 nginx -c "$tmp/origin.conf" -e stderr & pids+=($!)
# The mirror: answers every request after 2 s, as many at once as come.
cat > "$tmp/sleeper.py" <<'PY'
import asyncio, sys
async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if length:
                await reader.readexactly(length)
            await asyncio.sleep(2)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
    except Exception:
        writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    await server.serve_forever()
asyncio.run(main())
PY
taskset -c 1 python3 "$tmp/sleeper.py" "$SLEEPER" & pids+=($!)
cat > "$tmp/weir.toml" <<CONF
[[listeners]]
address = "127.0.0.1:$PORT"
[admin]
address = "127.0.0.1:$ADMIN"
[server]
worker_threads = 1
[[clusters]]
name = "origin"
endpoints = ["127.0.0.1:$ORIGIN"]
[[clusters]]
name = "shadow"
endpoints = ["127.0.0.1:$SLEEPER"]
retries = 0
[[routes]]
name = "mirrored"
path_prefix = "/mirrored"
cluster = "origin"
plugins = []
mirror = { cluster = "shadow", percent = 100 }
[[routes]]
name = "plain"
cluster = "origin"
plugins = []
CONF
RUST_LOG=error taskset -c 0 "$WEIR" --config "$tmp/weir.toml" & pids+=($!)
for _ in $(seq 300); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/plain" && break; sleep 0.1; done

printf '%-9s %10s %9s %9s\n' route "req/s" p50 p99
declare -A rps p50 p99
for round in $(seq "$ROUNDS"); do
  for route in plain mirrored; do
    out=$(load "$DURATION" "http://127.0.0.1:$PORT/$route")
    rps[$route]+="$(echo "$out" | awk '/Requests\/sec/ {print $2}') "
    p50[$route]+="$(echo "$out" | awk '$1=="50%" {print $2}') "
    p99[$route]+="$(echo "$out" | awk '$1=="99%" {print $2}') "
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for route in plain mirrored; do
  printf '%-9s %10s %9s %9s\n' "$route" "$(echo "${rps[$route]}" | median)" \
    "$(echo "${p50[$route]}" | median)" "$(echo "${p99[$route]}" | median)"
done
curl -s "http://127.0.0.1:$ADMIN/metrics" | grep '^weir_mirror_requests_total' || true
