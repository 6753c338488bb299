#!/usr/bin/env bash
# Interleaved A/B of weir binaries on plain proxying (1 KiB, no plugins), with nginx as the
# reference: rounds of nginx, A, B, … each under the same `wrk -t2 -c64` load. Prints, per
# round and target, the process's user and kernel CPU microseconds per request
# (/proc/PID/stat fields 14 and 15), then the medians. On this noisy VM single rounds vary by
# ±20 %: compare medians over 4–6 rounds, and user time for changes to weir's own code (the
# kernel's share per request is the same for every proxy here).
#
# Needs nginx, wrk, taskset and the binaries; each weir runs with one worker thread on CPU 0,
# nginx (the origin) and wrk on CPU 1.
# Usage: bench/ab.sh BIN_A [BIN_B …]  (env: ROUNDS=4 DURATION=8s)
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: bench/ab.sh BIN_A [BIN_B …]" >&2; exit 1; }

ROUNDS=${ROUNDS:-4}
DURATION=${DURATION:-8s}
WEIR=$1
. bench/common.sh
require_tools
for bin in "$@"; do [ -x "$bin" ] || { echo "missing $bin" >&2; exit 1; }; done

ORIGIN=18181 NGINX=18182 FIRST=18190
tmp=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

write_origin_conf "$tmp/origin.conf" "$ORIGIN"
cat > "$tmp/nginx.conf" <<CONF
master_process off; worker_processes 1; daemon off; pid $tmp/nginx.pid; error_log stderr warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream origin { server 127.0.0.1:$ORIGIN; keepalive 128; }
  server { listen 127.0.0.1:$NGINX; location / { proxy_pass http://origin;
    proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
taskset -c 1 nginx -c "$tmp/origin.conf" -e stderr & pids+=($!)
taskset -c 0 nginx -c "$tmp/nginx.conf" -e stderr & pids+=($!)
targets=("nginx:$!:$NGINX")

port=$FIRST
for bin in "$@"; do
  write_plain_weir_conf "$tmp/weir-$port.toml" "$port" "$ORIGIN"
  RUST_LOG=warn taskset -c 0 "$bin" --config "$tmp/weir-$port.toml" & pids+=($!)
  targets+=("$bin:$!:$port")
  port=$((port + 1))
done
for t in "${targets[@]}"; do
  IFS=: read -r _ _ port <<< "$t"
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  taskset -c 1 wrk -t2 -c64 -d2s "http://127.0.0.1:$port/" > /dev/null
done

printf '%-40s %6s %8s %8s %8s\n' target round user sys total
for round in $(seq "$ROUNDS"); do
  for t in "${targets[@]}"; do
    IFS=: read -r name pid port <<< "$t"
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    out=$(taskset -c 1 wrk -t2 -c64 -d"$DURATION" "http://127.0.0.1:$port/")
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    n=$(awk '/requests in/ {print $1}' <<< "$out")
    awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$ticks_per_sec" -v n="$n" -v w="$name" -v r="$round" \
      'BEGIN { f = 1e6 / hz / n; printf "%-40s %6d %8.1f %8.1f %8.1f\n", w, r, u * f, s * f, (u + s) * f }' \
      | tee -a "$tmp/rows"
  done
done

echo
echo "medians over $ROUNDS rounds (CPU µs per request)"
printf '%-40s %8s %8s %8s\n' target user sys total
for t in "${targets[@]}"; do
  IFS=: read -r name _ _ <<< "$t"
  median() { awk -v w="$name" -v c="$1" '$1 == w { print $c }' "$tmp/rows" | sort -n \
    | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
  printf '%-40s %8.1f %8.1f %8.1f\n' "$name" "$(median 3)" "$(median 4)" "$(median 5)"
done
