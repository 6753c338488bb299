#!/usr/bin/env bash
# Requests/s, p99 and weir's CPU per request for the example *profile* handlers
# (examples/handlers/{python,js}: two sub-requests, to clusters `users` and `orders`, merged
# into one JSON answer), each on a fresh instance per request (the default) and with
# `reuse = true`, in one run, rounds interleaved (py, py-reuse, js, py, ...), against one weir
# process. `js-reuse` (TARGETS only) is the JavaScript example with `reuse = true`, which it
# cannot serve: componentize-js 0.23's `fetch` event answers one request per instance
# (examples/handlers/js/profile.toml): an instance's second call returns without an answer,
# weir answers 500 and replaces the instance, and the requests/s wrk reports for it are
# mostly those failures (session 45: 128,000–153,000 a second, nearly all of them not 2xx).
# Origin: nginx answering both clusters. weir has one worker thread pinned
# to CPU 0; origin and wrk share CPU 1. Needs nginx, wrk, taskset, a release weir
# (`cargo build --release -p weir-host`) and the examples built (`cargo xtask examples`).
#
# Usage: bench/handlers.sh   (env: WEIR, CONNS=16 DURATION=10s ROUNDS=3 TARGETS, ORIGIN_PORT,
# WEIR_PORT; PY_BEFORE and JS_BEFORE: another build of each example, measured on a fresh
# instance per request as targets py-before and js-before)
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-16}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
PY_BEFORE=${PY_BEFORE:-}
JS_BEFORE=${JS_BEFORE:-}
TARGETS=${TARGETS:-${PY_BEFORE:+py-before }py py-reuse ${JS_BEFORE:+js-before }js}
ORIGIN_PORT=${ORIGIN_PORT:-18091}
WEIR_PORT=${WEIR_PORT:-18090}
WEIR=${WEIR:-target/release/weir}

. bench/common.sh
require_tools
for lang in python js; do
  [ -f "examples/handlers/$lang/profile.wasm" ] || { echo "missing examples/handlers/$lang/profile.wasm: cargo xtask examples" >&2; exit 1; }
done

tmp=$(mktemp -d)
cleanup() { kill "${weir_pid:-}" "${nginx_pid:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

write_nginx_origin "$tmp/nginx.conf" "$ORIGIN_PORT" "default_type application/json;
    location /users/ { return 200 '{\"id\":7,\"name\":\"Ada Lovelace\",\"email\":\"ada@example.com\"}'; }
    location /orders { return 200 '[{\"id\":1,\"total\":12.5},{\"id\":2,\"total\":99.0}]'; }"

mkdir -p "$tmp/plugins"
routes=""
for target in $TARGETS; do
  case $target in py*) lang=python ;; js*) lang=js ;; esac
  case $target in
    py-before) wasm=$PY_BEFORE ;;
    js-before) wasm=$JS_BEFORE ;;
    *) wasm=examples/handlers/$lang/profile.wasm ;;
  esac
  cp "$wasm" "$tmp/plugins/$target.wasm"
  cp "examples/handlers/$lang/profile.toml" "$tmp/plugins/$target.toml"
  # Whatever the example's own settings say, reuse only where the target asks for it (as
  # the first line: a top-level key, before [config]).
  sed -i '/^reuse *=/d' "$tmp/plugins/$target.toml"
  case $target in
    *-reuse) sed -i '1i reuse = true' "$tmp/plugins/$target.toml" ;;
  esac
  routes="$routes
[[routes]]
name = \"$target\"
path_prefix = \"/$target/\"
handler = \"$target\"
plugins = []"
done

cat > "$tmp/weir.toml" <<CONF
[[listeners]]
address = "127.0.0.1:$WEIR_PORT"
[server]
worker_threads = 1
[plugins]
cache_dir = "$tmp/cache"
[[clusters]]
name = "users"
endpoints = ["127.0.0.1:$ORIGIN_PORT"]
[[clusters]]
name = "orders"
endpoints = ["127.0.0.1:$ORIGIN_PORT"]
$routes
CONF

taskset -c 1 nginx -c "$tmp/nginx.conf" -e stderr & nginx_pid=$!
RUST_LOG=error taskset -c 0 "$WEIR" --config "$tmp/weir.toml" & weir_pid=$!
url() { echo "http://127.0.0.1:$WEIR_PORT/$1/profile/7"; }
for _ in $(seq 600); do
  curl -sf -o /dev/null "$(url "${TARGETS%% *}")" && break
  sleep 0.1
done
for target in $TARGETS; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "$(url "$target")")
  [ "$code" = 200 ] || echo "warning: $target answered $code, not 200" >&2
done
echo "warm-up..."
for target in $TARGETS; do taskset -c 1 wrk -t1 -c"$CONNS" -d2s "$(url "$target")" >/dev/null; done

printf '%-10s %6s %12s %10s %10s %16s %8s\n' target round "requests/s" p50 p99 "weir CPU us/req" non-2xx
for round in $(seq "$ROUNDS"); do
  for target in $TARGETS; do
    before=$(cpu_ticks "$weir_pid")
    out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$(url "$target")")
    after=$(cpu_ticks "$weir_pid")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    total=$(awk '/requests in/ {print $1}' <<<"$out")
    non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
    printf '%-10s %6s %12s %10s %10s %16s %8s\n' "$target" "$round" "$rps" "$p50" "$p99" \
      "$(cpu_per_request "$before" "$after" "$total")" "${non2xx:-0}"
  done
done
echo "RSS after the run: $(awk '/VmRSS/ {print $2, $3}' "/proc/$weir_pid/status")"
echo "conns=$CONNS duration=$DURATION wrk -t1; weir worker_threads=1 on CPU 0; origin nginx + wrk on CPU 1"
