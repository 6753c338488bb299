#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: a figure that does not move with
# this VM's ±20 % CPU-time noise, for comparing builds of weir's request path (plain 1 KiB
# proxying, no plugins). weir runs under valgrind with instrumentation off; after a warm-up,
# `callgrind_control` zeroes the counters, h2load sends N requests over 8 HTTP/1.1
# connections, and the dump's total divided by N is printed. Under valgrind the plugin
# instance pool cannot reserve its address space, so weir logs a warning and allocates
# instances on demand (no plugin runs here).
#
# Needs valgrind, nginx (the origin) and h2load: apt-get install valgrind nginx-light nghttp2-client
# Usage: bench/callgrind.sh BIN [N]   (N defaults to 4000; the profile stays in $OUT, default
# a temporary folder, for callgrind_annotate)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:?usage: bench/callgrind.sh BIN [N]}
N=${2:-4000}
. bench/common.sh
for tool in valgrind callgrind_control nginx h2load; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install valgrind nginx-light nghttp2-client" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "missing $BIN" >&2; exit 1; }

ORIGIN=18281 PORT=18290
OUT=${OUT:-$(mktemp -d)}
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

write_origin_conf "$OUT/origin.conf" "$ORIGIN"
write_plain_weir_conf "$OUT/weir.toml" "$PORT" "$ORIGIN"
nginx -c "$OUT/origin.conf" -e stderr & pids+=($!)
RUST_LOG=error valgrind --tool=callgrind --instr-atstart=no \
  --callgrind-out-file="$OUT/callgrind.out" "$BIN" --config "$OUT/weir.toml" 2> "$OUT/valgrind.log" &
weir=$!
pids+=($weir)
up=
for _ in $(seq 300); do
  curl -sf -o /dev/null "http://127.0.0.1:$PORT/" && { up=1; break; }
  kill -0 "$weir" 2>/dev/null || break
  sleep 0.2
done
[ -n "$up" ] || { echo "weir did not start under valgrind:" >&2; cat "$OUT/valgrind.log" >&2; exit 1; }
h2load --h1 -n 2000 -c 8 "http://127.0.0.1:$PORT/" > /dev/null
callgrind_control -i on "$weir" > /dev/null 2>&1
callgrind_control -z "$weir" > /dev/null 2>&1
h2load --h1 -n "$N" -c 8 "http://127.0.0.1:$PORT/" | grep -E '^requests:'
callgrind_control -d "$weir" > /dev/null 2>&1
total=$(awk '/^summary:/ {print $2}' "$OUT"/callgrind.out.*)
awk -v t="$total" -v n="$N" 'BEGIN { printf "instructions per request: %.0f (%d over %d requests)\n", t / n, t, n }'
echo "profile: $(ls "$OUT"/callgrind.out.*)"
