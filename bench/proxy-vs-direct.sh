#!/usr/bin/env bash
# Requests/s and latency of weir (no plugins) vs a direct connection to the same origin, measured
# in one run, interleaved in rounds (direct, weir, direct, weir, ...), plus weir's CPU time per
# request from /proc/PID/stat.
#
# Origin: nginx `return 200` with a 1 KiB body. weir runs with one worker thread pinned to CPU 0;
# origin and wrk share CPU 1, so weir is the bottleneck. Needs: nginx, wrk, taskset (Debian:
# `apt-get install nginx-light wrk util-linux`), and `cargo build --release -p weir-host`.
#
# Usage: bench/proxy-vs-direct.sh   (env: CONNS=64 DURATION=10s ROUNDS=3 ORIGIN_PORT WEIR_PORT,
#        PLUGIN=path/to/filter.wasm to run weir with that one filter on every request)
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-64}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
ORIGIN_PORT=${ORIGIN_PORT:-18081}
WEIR_PORT=${WEIR_PORT:-18080}
WEIR=${WEIR:-target/release/weir}

. bench/common.sh
require_tools

tmp=$(mktemp -d)
cleanup() { kill "${weir_pid:-}" "${nginx_pid:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

body=$(origin_body)
cat > "$tmp/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $tmp/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$ORIGIN_PORT;
    location / { default_type text/plain; return 200 "$body"; }
  }
}
CONF
mkdir -p "$tmp/plugins"
[ -z "${PLUGIN:-}" ] || cp "$PLUGIN" "$tmp/plugins/10-bench.wasm"
cat > "$tmp/weir.toml" <<CONF
[[listeners]]
address = "127.0.0.1:$WEIR_PORT"
[server]
worker_threads = 1
[[clusters]]
name = "origin"
endpoints = ["127.0.0.1:$ORIGIN_PORT"]
[[routes]]
name = "all"
cluster = "origin"
CONF

taskset -c 1 nginx -c "$tmp/nginx.conf" -e stderr & nginx_pid=$!
RUST_LOG=warn taskset -c 0 "$WEIR" --config "$tmp/weir.toml" & weir_pid=$!
for _ in $(seq 100); do
  curl -sf -o /dev/null "http://127.0.0.1:$WEIR_PORT/" && curl -sf -o /dev/null "http://127.0.0.1:$ORIGIN_PORT/" && break
  sleep 0.1
done

echo "warm-up..."
load 2s "http://127.0.0.1:$ORIGIN_PORT/" >/dev/null
load 2s "http://127.0.0.1:$WEIR_PORT/" >/dev/null

printf '%-8s %6s %12s %10s %10s %16s\n' target round "requests/s" p50 p99 "weir CPU us/req"
for round in $(seq "$ROUNDS"); do
  for target in direct weir; do
    port=$ORIGIN_PORT; [ "$target" = weir ] && port=$WEIR_PORT
    before=$(cpu_ticks "$weir_pid")
    out=$(load "$DURATION" "http://127.0.0.1:$port/")
    after=$(cpu_ticks "$weir_pid")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    total=$(awk '/requests in/ {print $1}' <<<"$out")
    cpu="-"
    if [ "$target" = weir ]; then
      cpu=$(cpu_per_request "$before" "$after" "$total")
    fi
    printf '%-8s %6s %12s %10s %10s %16s\n' "$target" "$round" "$rps" "$p50" "$p99" "$cpu"
  done
done
echo "conns=$CONNS duration=$DURATION wrk -t1; weir worker_threads=1 on CPU 0; origin nginx + wrk on CPU 1; plugin: ${PLUGIN:-none}"
