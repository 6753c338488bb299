#!/usr/bin/env bash
# Mirroring's cost to the client (issue 25's bar): one weir, two routes to the same nginx
# origin, one of them mirroring every request (PERCENT, default 100) to a cluster that
# answers after 2 s (bench/floor's `slow-origin`). Rounds interleaved, a pause after each
# mirrored round for its copies' answers; per route the median of the rounds' requests/s,
# p50 and p99, and the mirror's counters. weir runs one worker pinned to CPU 0; wrk (-t1
# -c$CONNS), the origin and the slow mirror share CPU 1. The mirror cluster's max_requests
# (SHADOW_MAX, default 1024) bounds the copies in flight: past it copies are refused at once
# and counted `failed`.
# Needs release builds of weir and bench/floor (`cargo build --release -p weir-host -p
# weir-bench-floor`), nginx, wrk.
# Usage: bench/mirror.sh  (env: DURATION=10s ROUNDS=3 CONNS=32 PERCENT=100 SHADOW_MAX=1024 DELAY_MS=2000
#   WEIR=target/release/weir SLOW=target/release/slow-origin)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-32}
WEIR=${WEIR:-target/release/weir}
SLOW=${SLOW:-target/release/slow-origin}
[ -x "$SLOW" ] || { echo "missing $SLOW: cargo build --release -p weir-bench-floor" >&2; exit 1; }
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
taskset -c 1 "$SLOW" "127.0.0.1:$SLEEPER" "${DELAY_MS:-2000}" & pids+=($!)
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
max_requests = ${SHADOW_MAX:-1024}
retries = 0
[[routes]]
name = "mirrored"
path_prefix = "/mirrored"
cluster = "origin"
plugins = []
mirror = { cluster = "shadow", percent = ${PERCENT:-100} }
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
    # The copies of a mirrored round are answered up to 2 s after it: not during the next.
    [ "$route" = plain ] && [ "$round" -gt 1 ] && sleep 3
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
curl -s "http://127.0.0.1:$ADMIN/metrics" | grep -E "^weir_mirror_requests_total|^weir_cluster_connections_open" || true
