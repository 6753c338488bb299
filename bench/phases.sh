#!/usr/bin/env bash
# Requests/s, latency and weir's CPU per request for the phase plugins, in one run, rounds
# interleaved (plain, chain, dashboard, plain, ...), against one weir process:
#   plain     — route with no plugins;
#   chain     — jwt-auth (HS256) → rate-limit (a limit never reached) → rewrite → transform
#               (a request header set; JSON body hook on the response);
#   dashboard — jwt-auth → rate-limit, then the aggregate handler making two sub-requests.
# Origin: nginx, 1 KiB bodies (`application/json` for the chain and the sub-requests). weir
# has one worker thread pinned to CPU 0; origin and wrk share CPU 1, so weir is the
# bottleneck. Needs nginx, wrk, taskset, `cargo build --release -p weir-host` and
# `cargo xtask plugins`.
#
# Usage: bench/phases.sh   (env: CONNS=64 DURATION=10s ROUNDS=3 ORIGIN_PORT WEIR_PORT)
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-64}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
ORIGIN_PORT=${ORIGIN_PORT:-18081}
WEIR_PORT=${WEIR_PORT:-18080}
WEIR=${WEIR:-target/release/weir}
PLUGINS=${PLUGINS:-target/plugins}

. bench/common.sh
require_tools
for p in jwt-auth rate-limit rewrite transform aggregate; do
  [ -f "$PLUGINS/$p.wasm" ] || { echo "missing $PLUGINS/$p.wasm: cargo xtask plugins" >&2; exit 1; }
done

tmp=$(mktemp -d)
cleanup() { kill "${weir_pid:-}" "${nginx_pid:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

body=$(origin_body)
json="{\"id\":7,\"secret\":\"upstream-only\",\"pad\":\"${body:0:990}\"}"
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
    location /orders/ { default_type application/json; return 200 '$json'; }
    location /json/ { default_type application/json; return 200 '$json'; }
  }
}
CONF

mkdir -p "$tmp/plugins"
for p in jwt-auth rate-limit rewrite transform aggregate; do cp "$PLUGINS/$p.wasm" "$tmp/plugins/"; done
write_auth_settings "$tmp/plugins"
cat > "$tmp/plugins/rewrite.toml" <<'CONF'
[[config.rules]]
path = '^/v1/(.*)$'
rewrite = '/$1'
CONF
cat > "$tmp/plugins/transform.toml" <<'CONF'
[config.request.headers]
set = { "x-gateway-route" = "{route}" }
[config.response.json]
remove = ["secret"]
CONF
cat > "$tmp/plugins/aggregate.toml" <<'CONF'
clusters = ["origin"]
deadline = "5s"
[config]
path = "/dashboard/{id}"
[[config.calls]]
name = "profile"
cluster = "origin"
path = "/json/users/{id}"
[[config.calls]]
name = "orders"
cluster = "origin"
path = "/json/orders/{id}"
CONF
cat > "$tmp/weir.toml" <<CONF
[[listeners]]
address = "127.0.0.1:$WEIR_PORT"
[server]
worker_threads = 1
[plugins]
cache_dir = "$tmp/cache"
[[clusters]]
name = "origin"
endpoints = ["127.0.0.1:$ORIGIN_PORT"]
[[routes]]
name = "plain"
path_prefix = "/plain"
cluster = "origin"
plugins = []
[[routes]]
name = "chain"
path_prefix = "/v1/"
cluster = "origin"
plugins = ["jwt-auth", "rate-limit", "rewrite", "transform"]
[[routes]]
name = "dashboard"
path_prefix = "/dashboard/"
handler = "aggregate"
plugins = ["jwt-auth", "rate-limit"]
CONF

token=$(cargo xtask token bench 3600 2>/dev/null)
taskset -c 1 nginx -c "$tmp/nginx.conf" -e stderr & nginx_pid=$!
RUST_LOG=warn taskset -c 0 "$WEIR" --config "$tmp/weir.toml" & weir_pid=$!
for _ in $(seq 300); do
  curl -sf -o /dev/null "http://127.0.0.1:$WEIR_PORT/plain" && break
  sleep 0.1
done

url() {
  case $1 in
    plain) echo "http://127.0.0.1:$WEIR_PORT/plain" ;;
    chain) echo "http://127.0.0.1:$WEIR_PORT/v1/orders/42" ;;
    dashboard) echo "http://127.0.0.1:$WEIR_PORT/dashboard/7" ;;
  esac
}
run() { taskset -c 1 wrk -t1 -c"$CONNS" -d"$2" --latency -H "authorization: Bearer $token" "$(url "$1")"; }

for target in plain chain dashboard; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $token" "$(url $target)")
  [ "$code" = 200 ] || { echo "$target answered $code, not 200" >&2; exit 1; }
done
echo "warm-up..."
for target in plain chain dashboard; do run "$target" 2s >/dev/null; done

printf '%-10s %6s %12s %10s %10s %16s\n' target round "requests/s" p50 p99 "weir CPU us/req"
for round in $(seq "$ROUNDS"); do
  for target in plain chain dashboard; do
    before=$(cpu_ticks "$weir_pid")
    out=$(run "$target" "$DURATION")
    after=$(cpu_ticks "$weir_pid")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    total=$(awk '/requests in/ {print $1}' <<<"$out")
    non2xx=$(awk '/Non-2xx/ {print $4}' <<<"$out")
    [ -z "$non2xx" ] || echo "warning: $target had $non2xx non-2xx answers" >&2
    printf '%-10s %6s %12s %10s %10s %16s\n' "$target" "$round" "$rps" "$p50" "$p99" "$(cpu_per_request "$before" "$after" "$total")"
  done
done
echo "conns=$CONNS duration=$DURATION wrk -t1; weir worker_threads=1 on CPU 0; origin nginx + wrk on CPU 1"
