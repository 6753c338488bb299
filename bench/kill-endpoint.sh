#!/usr/bin/env bash
# The load-balancing bar, on a release build: a 20 s GET load through weir over three
# endpoints; one endpoint's nginx is killed at 5 s and restarted at 12 s. Prints wrk's error
# counts (the bar: none) and when /clusters saw the endpoint go unhealthy and healthy again.
#
#   cargo build --release -p weir-host && bench/kill-endpoint.sh
# Env: BASE_PORT=18110, INTERVAL=1s (health check interval), CONNS=32.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_PORT=${BASE_PORT:-18110}
INTERVAL=${INTERVAL:-1s}
CONNS=${CONNS:-32}
WEIR=${WEIR:-target/release/weir}
. bench/common.sh
require_tools

tmp=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

body=$(origin_body)
start_origin() { # index → starts nginx for endpoint $1, sets origin_pid
  local port=$((BASE_PORT + $1))
  cat > "$tmp/nginx$1.conf" <<CONF
worker_processes 1;
daemon off;
pid $tmp/nginx$1.pid;
error_log stderr warn;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:$port; location / { default_type text/plain; return 200 "$body"; } } }
CONF
  taskset -c 1 nginx -c "$tmp/nginx$1.conf" -e stderr & origin_pid=$!
}
for i in 1 2 3; do start_origin "$i"; pids+=("$origin_pid"); done
victim=${pids[1]}

cat > "$tmp/weir.toml" <<CONF
[[listeners]]
address = "127.0.0.1:$BASE_PORT"
[admin]
address = "127.0.0.1:$((BASE_PORT + 9))"
[server]
worker_threads = 1
[[clusters]]
name = "app"
endpoints = ["127.0.0.1:$((BASE_PORT + 1))", "127.0.0.1:$((BASE_PORT + 2))", "127.0.0.1:$((BASE_PORT + 3))"]
health_check = { path = "/", interval = "$INTERVAL", timeout = "500ms", healthy_threshold = 2, unhealthy_threshold = 2 }
[[routes]]
name = "all"
cluster = "app"
CONF
RUST_LOG=warn XDG_CACHE_HOME="$tmp" taskset -c 0 "$WEIR" --config "$tmp/weir.toml" 2> "$tmp/weir.log" & pids+=($!)
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$BASE_PORT/" && break; sleep 0.1; done

now() { date +%s.%N; }
state() { curl -s "http://127.0.0.1:$((BASE_PORT + 9))/clusters" | grep -o '"healthy": *[a-z]*' | sed -n 2p | grep -o 'true\|false'; }
load 20s "http://127.0.0.1:$BASE_PORT/" > "$tmp/wrk.txt" & wrk_pid=$!
t0=$(now)
sleep 5
kill "$victim"; wait "$victim" 2>/dev/null || true
killed=$(now)
until [ "$(state)" = false ]; do sleep 0.05; done
down=$(now)
sleep $((12 - 5))
start_origin 2; pids+=("$origin_pid")
restarted=$(now)
until [ "$(state)" = true ]; do sleep 0.05; done
up=$(now)
wait "$wrk_pid"
awk -v k="$killed" -v d="$down" -v r="$restarted" -v u="$up" -v t="$t0" 'BEGIN {
  printf "killed at %.1f s; /clusters unhealthy %.2f s later\n", k - t, d - k
  printf "restarted at %.1f s; /clusters healthy %.2f s later\n", r - t, u - r }'
grep -E "requests in|Requests/sec|Non-2xx|Socket errors" "$tmp/wrk.txt" || true
grep -q -E "Non-2xx|Socket errors" "$tmp/wrk.txt" || echo "client-visible errors: 0"
echo "weir warnings:"; grep -c "retrying on another endpoint" "$tmp/weir.log" | sed 's/^/  retries logged: /'
echo "  failed requests by kind:"; sed 's/\x1b\[[0-9;]*m//g' "$tmp/weir.log" | grep "request failed" | grep -o 'kind=[A-Za-z]*' | sort | uniq -c | sed 's/^/   /' || true
grep -c "retry budget exhausted" "$tmp/weir.log" | sed 's/^/  retry budget exhausted: /' || true
sed 's/\x1b\[[0-9;]*m//g' "$tmp/weir.log" | grep "request failed" | head -3 | cut -c1-400 || true
grep -E "endpoint (un)?healthy|ejected" "$tmp/weir.log" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-200 || true
