#!/usr/bin/env bash
# A hostile plugin's cost to everyone else (issue 22's bar): weir with one worker thread and
# the test plugin (tests/plugins: `/loop` spins until its deadline, `/hog` grows its memory
# until its cap, `/sleep` sleeps in WASI until cut off), an nginx origin. First wrk alone on a
# plain route, then the same wrk while one client hammers the hostile route (one connection,
# one request at a time, back to back). Prints requests/s and p50/p99 of the plain route both
# ways, and how many hostile calls ended meanwhile.
#
# Needs: a release weir (WEIR=target/release/weir), the test plugin built by the tests
# (`cargo test -p weir-tests --no-run` builds target/wasm-guests/.../weir_test_plugin.wasm),
# nginx, wrk, curl.
# Usage: bench/hostile.sh  (env: DURATION=10s CONNS=32 WEIR=target/release/weir
#   HOSTILE=/loop|/hog|/sleep DEADLINE=50ms, WRK_LOG=file keeps wrk's output, WEIR_LOG=file
#   weir's stderr)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
WEIR=${WEIR:-target/release/weir}
HOSTILE=${HOSTILE:-/loop}
PLUGIN=${PLUGIN:-target/wasm-guests/wasm32-wasip2/release/weir_test_plugin.wasm}
ORIGIN=18381 PORT=18390
for tool in nginx wrk curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
[ -x "$WEIR" ] || { echo "missing $WEIR: cargo build --release -p weir-host" >&2; exit 1; }
[ -f "$PLUGIN" ] || { echo "missing $PLUGIN: cargo test -p weir-tests --no-run" >&2; exit 1; }
. bench/common.sh
tmp=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

write_origin_conf "$tmp/origin.conf" "$ORIGIN"
mkdir -p "$tmp/plugins"
cp "$PLUGIN" "$tmp/plugins/test.wasm"
# The plugin's breaker is off unless PLUGIN_SETTINGS says otherwise: with it, five deadlines in
# a row stop the loop being called at all, and the yield is what is measured here.
printf 'deadline = "%s"\n%s\n' "${DEADLINE:-50ms}" "${PLUGIN_SETTINGS-breaker = { failures = 0 \}}" > "$tmp/plugins/test.toml"
cat > "$tmp/weir.toml" <<CONF
[[listeners]]
address = "127.0.0.1:$PORT"
[server]
worker_threads = 1
[plugins]
cache_dir = "$tmp/cache"
[[clusters]]
name = "origin"
endpoints = ["127.0.0.1:$ORIGIN"]
[[routes]]
name = "hostile"
path_prefix = "$HOSTILE"
cluster = "origin"
plugins = ["test"]
[[routes]]
name = "plain"
cluster = "origin"
plugins = []
CONF
taskset -c 1 nginx -c "$tmp/origin.conf" -e stderr & pids+=($!)
RUST_LOG=error taskset -c 0 "$WEIR" --config "$tmp/weir.toml" 2>>"${WEIR_LOG:-/dev/stderr}" & pids+=($!)
for _ in $(seq 300); do
  curl -sf -o /dev/null "http://127.0.0.1:$PORT/" && break
  sleep 0.1
done

plain() {
  taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$PORT/" | tee -a "${WRK_LOG:-/dev/null}" |
    awk -v what="$1" '/Requests\/sec/ {rps=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2}
      END { printf "%-28s %10s req/s  p50 %8s  p99 %8s\n", what, rps, p50, p99 }'
}

taskset -c 1 wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$PORT/" >/dev/null  # warm-up
plain "plain route alone"
# One hostile client: one connection sending /loop back to back, each call spinning until
# its deadline (a 500). A wrk with one connection, not a curl per request: spawning a process
# per request took CPU from the origin and the measuring wrk (a hostile route whose plugin
# only sleeps cost the plain route's p99 as much as one that spins).
taskset -c 1 wrk -t1 -c1 -d1h "http://127.0.0.1:$PORT$HOSTILE" > "$tmp/hammer" &
hammer=$!
plain "plain route, $HOSTILE hammered"
kill -INT "$hammer"
wait "$hammer" || true
calls=$(awk '/requests in/ {print $1}' "$tmp/hammer")
echo "$HOSTILE calls ended while measured: ${calls:-?} (deadline ${DEADLINE:-50ms})"
echo "weir: one worker thread on CPU 0; origin and wrk -c$CONNS on CPU 1; $DURATION each"
