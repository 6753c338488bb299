#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: a figure that does not move with
# this VM's ±20 % CPU-time noise, for comparing builds of weir's request path. ROUTE=plain
# (the default) is 1 KiB proxying without plugins; ROUTE=two and ROUTE=three are bench/run.sh's
# weir+2 route (key-auth → headers) and weir+3 route (jwt-auth → rate-limit, never reached →
# rewrite, with a bearer token from `cargo xtask token`), with the same plugin settings. weir runs under valgrind with instrumentation off; after a warm-up,
# `callgrind_control` zeroes the counters, h2load sends N requests over 8 HTTP/1.1
# connections, and the dump's total divided by N is printed. Under valgrind the plugin
# instance pool cannot reserve its address space, so weir logs a warning and allocates
# instances on demand. For the plugin routes the plugins are compiled first by a run outside
# valgrind with the same engine settings (under `ulimit -v`), into a compile cache the
# valgrind run then loads, so no compiling is counted or waited for.
#
# Needs valgrind, nginx (the origin) and h2load: apt-get install valgrind nginx-light nghttp2-client
# ROUTE=chain CHAIN="rate-limit" (any of those plugins, in any order) measures another chain
# on the weir+3 route's path, to attribute a route's cost to its plugins.
# BIN may also be `nginx` (nginx as the reverse proxy, bench/run.sh's settings) or a
# `hyper-floor` binary (bench/floor: hyper forwarding unchanged), counted the same way, for
# what weir costs above the floor it is built on and what that floor costs above nginx.
# OBSERVE=off|metrics|all|few|sampled|null (bench/common.sh) measures the plain route with
# metrics off, on (the default config), on with a JSON access log, with seven of its fields,
# with one request in ten logged, or with the full log to /dev/null (BENCHMARKS.md, issue 21).
# CONNS (default 8) is how many connections h2load spreads the requests over. BODY=N makes
# each request a POST of N bytes (the plain route only; the origin answers it as a GET).
# Usage: bench/callgrind.sh BIN [N]   (N defaults to 4000; env ROUTE=plain|two|three|chain, PLUGINS
# (default target/plugins, from `cargo xtask plugins`), CALLGRIND_ARGS (more valgrind options,
# such as --dump-instr=yes for callgrind_annotate by source line); the profile stays in $OUT,
# default a temporary folder, for callgrind_annotate, and for bench/sites.py when made with
# CALLGRIND_ARGS="--dump-instr=yes --cache-sim=yes": each call site of memcpy with its cost,
# which tells the size of each move, and the code each function runs a request)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:?usage: bench/callgrind.sh BIN [N]}
N=${2:-4000}
. bench/common.sh
for tool in valgrind callgrind_control nginx h2load; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install valgrind nginx-light nghttp2-client" >&2; exit 1; }
done
case "$(basename "$BIN")" in
  nginx) KIND=nginx BIN=$(command -v nginx) ;;
  hyper-floor) KIND=floor ;;
  *) KIND=weir ;;
esac
[ -x "$BIN" ] || { echo "missing $BIN" >&2; exit 1; }

ROUTE=${ROUTE:-plain}
PLUGINS=${PLUGINS:-target/plugins}
ORIGIN=18281 PORT=18290
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

# Waits until the proxy (pid $1) answers on the route; $2 is what to show if it does not.
wait_up() {
  for _ in $(seq 300); do
    curl -sf -m 5 -o /dev/null "${auth[@]}" "http://127.0.0.1:$PORT$path" && return 0
    kill -0 "$1" 2>/dev/null || break
    sleep 0.2
  done
  echo "$KIND did not start:" >&2; cat "$2" >&2; exit 1
}

write_origin_conf "$OUT/origin.conf" "$ORIGIN"
write_plain_weir_conf "$OUT/weir.toml" "$PORT" "$ORIGIN"
nginx -c "$OUT/origin.conf" -e stderr & pids+=($!)
path=/ auth=()
case "$ROUTE" in
  plain) ;;
  two|three|chain)
    if [ "$ROUTE" = two ]; then
      chain=(key-auth headers) path=/p2/ auth=(-H "x-api-key: bench-key")
    elif [ "$ROUTE" = three ]; then
      chain=(jwt-auth rate-limit rewrite) path=/p3/
      auth=(-H "authorization: Bearer $(cargo xtask token bench 3600 2>/dev/null)")
    else
      # Any of the plugins above, alone or in another order, with both routes' credentials
      # and the consumer header rate-limit counts by (set by jwt-auth on the weir+3 route).
      read -r -a chain <<< "${CHAIN:?ROUTE=chain needs CHAIN=\"plugin ...\"}"
      path=/p3/ auth=(-H "authorization: Bearer $(cargo xtask token bench 3600 2>/dev/null)"
        -H "x-api-key: bench-key" -H "x-consumer-id: bench")
    fi
    mkdir -p "$OUT/plugins"
    for p in "${chain[@]}"; do
      [ -f "$PLUGINS/$p.wasm" ] || { echo "missing $PLUGINS/$p.wasm: cargo xtask plugins" >&2; exit 1; }
      cp "$PLUGINS/$p.wasm" "$OUT/plugins/"
    done
    write_plugin_settings "$OUT/plugins"
    names=$(printf '"%s", ' "${chain[@]}")
    cat >> "$OUT/weir.toml" <<CONF
[plugins]
dir = "$OUT/plugins"
cache_dir = "$OUT/cache"
[[routes]]
name = "$ROUTE"
path_prefix = "$path"
cluster = "origin"
plugins = [${names%, }]
CONF
    # Compile into the cache with the engine valgrind's run will have (no instance pool).
    (ulimit -v 67108864; RUST_LOG=error exec "$BIN" --config "$OUT/weir.toml") 2> "$OUT/compile.log" &
    compiler=$!
    wait_up "$compiler" "$OUT/compile.log"
    kill "$compiler"; wait "$compiler" 2>/dev/null || true
    ;;
  *) echo "ROUTE must be plain, two, three or chain" >&2; exit 1 ;;
esac
case $KIND in
  weir) run=("$BIN" --config "$OUT/weir.toml") ;;
  nginx)
    [ "$ROUTE" = plain ] || { echo "nginx measures ROUTE=plain only" >&2; exit 1; }
    write_nginx_proxy_conf "$OUT/nginx.conf" "$PORT" "$ORIGIN"
    run=("$BIN" -c "$OUT/nginx.conf" -e stderr) ;;
  floor)
    [ "$ROUTE" = plain ] || { echo "hyper-floor measures ROUTE=plain only" >&2; exit 1; }
    run=("$BIN" "127.0.0.1:$PORT" "127.0.0.1:$ORIGIN") ;;
esac
post=()
if [ -n "${BODY:-}" ]; then
  [ "$ROUTE" = plain ] || { echo "BODY is for ROUTE=plain" >&2; exit 1; }
  head -c "$BODY" /dev/zero | tr '\0' a > "$OUT/body"
  post=(-d "$OUT/body")
fi
RUST_LOG=error valgrind --tool=callgrind --instr-atstart=no ${CALLGRIND_ARGS:-} \
  --callgrind-out-file="$OUT/callgrind.out" "${run[@]}" 2> "$OUT/valgrind.log" &
weir=$!
pids+=($weir)
wait_up "$weir" "$OUT/valgrind.log"
h2load --h1 -n 2000 -c "${CONNS:-8}" "${auth[@]}" "${post[@]}" "http://127.0.0.1:$PORT$path" > /dev/null
callgrind_control -i on "$weir" > /dev/null 2>&1
callgrind_control -z "$weir" > /dev/null 2>&1
h2load --h1 -n "$N" -c "${CONNS:-8}" "${auth[@]}" "${post[@]}" "http://127.0.0.1:$PORT$path" | grep -E '^(requests|status codes):'
callgrind_control -d "$weir" > /dev/null 2>&1
total=$(awk '/^summary:/ {print $2}' "$OUT"/callgrind.out.*)
awk -v t="$total" -v n="$N" 'BEGIN { printf "instructions per request: %.0f (%d over %d requests)\n", t / n, t, n }'
echo "profile: $(ls "$OUT"/callgrind.out.*)"
