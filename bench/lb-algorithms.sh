#!/usr/bin/env bash
# Requests/s, latency and weir's CPU time per request for each load-balancing algorithm over
# three endpoints, in one run, interleaved in rounds (round_robin, least_request, random,
# consistent_hash, first, round_robin, ...).
#
# Origins: three nginx `return 200` servers (1 KiB body) in one nginx process. weir runs with
# one worker thread pinned to CPU 0; nginx and wrk share CPU 1. One weir serves every
# algorithm: a route per algorithm (`/rr`, `/lr`, `/random`, `/hash`, `/first`), each to a
# cluster over the same three endpoints. consistent_hash hashes the client address, so one
# wrk sends every request to one endpoint (the figure is the algorithm's cost, not spread).
# Needs: nginx, wrk, taskset, and `cargo build --release -p weir-host`.
#
# Usage: bench/lb-algorithms.sh   (env: CONNS=64 DURATION=5s ROUNDS=3 BASE_PORT=18090)
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-64}
DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
BASE_PORT=${BASE_PORT:-18090}
WEIR=${WEIR:-target/release/weir}
WEIR_PORT=$BASE_PORT

. bench/common.sh
require_tools

tmp=$(mktemp -d)
cleanup() { kill "${weir_pid:-}" "${nginx_pid:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

body=$(origin_body)
servers=""
endpoints=""
for i in 1 2 3; do
  port=$((BASE_PORT + i))
  servers="$servers server { listen 127.0.0.1:$port; location / { default_type text/plain; return 200 \"$body\"; } }"
  endpoints="$endpoints\"127.0.0.1:$port\", "
done
cat > "$tmp/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $tmp/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; $servers }
CONF

algorithms="round_robin least_request random consistent_hash first"
{
  echo "[[listeners]]"; echo "address = \"127.0.0.1:$WEIR_PORT\""
  echo "[server]"; echo "worker_threads = 1"
  for a in $algorithms; do
    echo "[[clusters]]"; echo "name = \"$a\""; echo "endpoints = [${endpoints%, }]"; echo "lb = \"$a\""
    echo "[[routes]]"; echo "name = \"$a\""; echo "path_prefix = \"/$a\""; echo "cluster = \"$a\""
  done
} > "$tmp/weir.toml"

taskset -c 1 nginx -c "$tmp/nginx.conf" -e stderr & nginx_pid=$!
RUST_LOG=warn XDG_CACHE_HOME="$tmp" taskset -c 0 "$WEIR" --config "$tmp/weir.toml" & weir_pid=$!
for _ in $(seq 100); do
  curl -sf -o /dev/null "http://127.0.0.1:$WEIR_PORT/round_robin" && break
  sleep 0.1
done

echo "warm-up..."
for a in $algorithms; do load 1s "http://127.0.0.1:$WEIR_PORT/$a" >/dev/null; done

printf '%-16s %6s %12s %10s %10s %16s\n' algorithm round "requests/s" p50 p99 "weir CPU us/req"
for round in $(seq "$ROUNDS"); do
  for a in $algorithms; do
    before=$(cpu_ticks "$weir_pid")
    out=$(load "$DURATION" "http://127.0.0.1:$WEIR_PORT/$a")
    after=$(cpu_ticks "$weir_pid")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    total=$(awk '/requests in/ {print $1}' <<<"$out")
    errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out")
    cpu=$(cpu_per_request "$before" "$after" "$total")
    printf '%-16s %6s %12s %10s %10s %16s %s\n' "$a" "$round" "$rps" "$p50" "$p99" "$cpu" "$errors"
  done
done
echo "conns=$CONNS duration=$DURATION wrk -t1; weir worker_threads=1 on CPU 0; nginx (3 servers) + wrk on CPU 1"
