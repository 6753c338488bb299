#!/usr/bin/env bash
# What observability costs in CPU per request, user and system time apart, against what
# nginx's own access log costs on the same load (issue 21). Proxies of 1 KiB, each pinned
# to CPU 0 with one worker, the origin and wrk (-t2 -c64) on CPU 1, rounds interleaved:
#   weir-off     — metrics off, no access log;
#   weir         — metrics on (the default), no access log;
#   weir-log     — metrics and the JSON access log (23 fields) to a file;
#   weir-null    — the same log to /dev/null: formatted and written, never copied into the
#                  page cache (the log's user-space cost apart from the kernel's);
#   nginx-off    — nginx, `access_log off` (bench/run.sh's nginx);
#   nginx-log    — nginx's default access log: `combined`, one write(2) per request;
#   nginx-json   — nginx with a JSON log of 13 of weir's fields, buffered (64 KiB, 1 s);
#   floor        — hyper's floor (bench/floor, `FLOOR=target/release/hyper-floor`): where
#                  weir's user and system time stand against the code it is built on (issue 26).
# Per target and round: requests, user µs/request, system µs/request, total; then medians.
# The system time is where a log's bytes are copied into the page cache: it grows with the
# record's length, whoever writes it.
#
# Needs nginx and wrk (apt-get install nginx-light wrk) and a weir build.
# Usage: bench/observe.sh   (env: WEIR=target/release/weir ROUNDS=3 DURATION=8s
# TARGETS="weir-off weir weir-log weir-null nginx-off nginx-log nginx-json")
# A weir target with `-b` after its name (weir-off-b, weir-log-b, ...) runs WEIR_B instead, so
# two builds are compared in one run, their rounds interleaved; "vs off" compares each with
# its own build's off target, which TARGETS must list first (weir-off-b before weir-log-b).
# `floor-b` runs FLOOR_B beside `floor` the same way (a profile-guided floor, say).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
WEIR=$(realpath "${WEIR:-target/release/weir}")
[ -x "$WEIR" ] || { echo "missing $WEIR" >&2; exit 1; }
for t in ${TARGETS:-}; do
  if [[ $t == weir*-b ]]; then
    WEIR_B=$(realpath "${WEIR_B:?a weir -b target needs WEIR_B, a second weir build}")
    [ -x "$WEIR_B" ] || { echo "missing $WEIR_B" >&2; exit 1; }
    break
  fi
done
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
TARGETS=${TARGETS:-weir-off weir weir-log weir-null nginx-off nginx-log nginx-json}
require_tools

tmp=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

ORIGIN=18481
declare -A PORT=([weir-off]=18482 [weir]=18483 [weir-log]=18484 [nginx-off]=18485
  [nginx-log]=18486 [nginx-json]=18487 [weir-null]=18488
  [weir-off-b]=18489 [weir-b]=18490 [weir-log-b]=18491 [weir-null-b]=18492 [floor]=18493
  [floor-b]=18494)
declare -A PID

write_origin_conf "$tmp/origin.conf" "$ORIGIN"
taskset -c 1 nginx -c "$tmp/origin.conf" -e stderr & pids+=($!)

# weir, `OBSERVE` as bench/common.sh reads it; the access log lands in the target's folder.
start_weir() {  # $1 = target, $2 = OBSERVE
  mkdir -p "$tmp/$1"
  local bin=$WEIR
  [[ $1 == *-b ]] && bin=${WEIR_B:?"$1 needs WEIR_B, a second weir build"}
  OBSERVE=$2 write_plain_weir_conf "$tmp/$1/weir.toml" "${PORT[$1]}" "$ORIGIN"
  (cd "$tmp/$1" && RUST_LOG=warn exec taskset -c 0 "$bin" --config weir.toml) & pids+=($!)
  PID[$1]=$!
}

# bench/run.sh's nginx proxy with `access_log off` replaced by $2.
start_nginx() {  # $1 = target, $2 = the access_log directives
  write_nginx_proxy_conf "$tmp/$1.conf" "${PORT[$1]}" "$ORIGIN"
  local log=$2
  sed -i "s|access_log off;|${log//|/\\|}|" "$tmp/$1.conf"
  taskset -c 0 nginx -c "$tmp/$1.conf" -e stderr & pids+=($!)
  PID[$1]=$!
}

for t in $TARGETS; do
  case $t in
    weir-off|weir-off-b) start_weir "$t" off ;;
    weir|weir-b) start_weir "$t" metrics ;;
    weir-log|weir-log-b) start_weir "$t" all ;;
    weir-null|weir-null-b) start_weir "$t" null ;;
    nginx-off) start_nginx "$t" "access_log off;" ;;
    floor|floor-b)
      floor=${FLOOR:-target/release/hyper-floor}
      [ "$t" = floor-b ] && floor=${FLOOR_B:?"floor-b needs FLOOR_B, a second floor build"}
      [ -x "$floor" ] || { echo "missing $floor: cargo build --release -p weir-bench-floor" >&2; exit 1; }
      taskset -c 0 "$floor" "127.0.0.1:${PORT[$t]}" "127.0.0.1:$ORIGIN" & pids+=($!)
      PID[$t]=$! ;;
    nginx-log) start_nginx "$t" "access_log $tmp/nginx-log.log;" ;;
    nginx-json)
      start_nginx "$t" "log_format weir escape=json '{\"time\":\"\$time_iso8601\",\"request_id\":\"\$request_id\",\"client\":\"\$remote_addr:\$remote_port\",\"method\":\"\$request_method\",\"host\":\"\$host\",\"path\":\"\$request_uri\",\"protocol\":\"\$server_protocol\",\"status\":\$status,\"bytes_in\":\$request_length,\"bytes_out\":\$body_bytes_sent,\"duration\":\$request_time,\"upstream_duration\":\"\$upstream_response_time\",\"endpoint\":\"\$upstream_addr\"}'; access_log $tmp/nginx-json.log weir buffer=64k flush=1s;" ;;
    *) echo "unknown target $t" >&2; exit 1 ;;
  esac
done

for _ in $(seq 300); do
  ok=1
  for t in $TARGETS; do curl -sf -o /dev/null "http://127.0.0.1:${PORT[$t]}/" || ok=0; done
  [ $ok = 1 ] && break
  sleep 0.1
done
[ $ok = 1 ] || { echo "a target does not answer 200" >&2; exit 1; }

results="$tmp/results"
for t in $TARGETS; do taskset -c 1 wrk -t2 -c64 -d2s "http://127.0.0.1:${PORT[$t]}/" > /dev/null; done
for round in $(seq "$ROUNDS"); do
  for t in $TARGETS; do
    read -r u0 s0 < <(cpu_ticks_split "${PID[$t]}")
    n=$(taskset -c 1 wrk -t2 -c64 -d"$DURATION" "http://127.0.0.1:${PORT[$t]}/" | awk '/requests in/ {print $1}')
    read -r u1 s1 < <(cpu_ticks_split "${PID[$t]}")
    awk -v t="$t" -v r="$round" -v n="$n" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$ticks_per_sec" \
      'BEGIN { printf "%s %d %d %.2f %.2f %.2f\n", t, r, n, u / hz * 1e6 / n, s / hz * 1e6 / n, (u + s) / hz * 1e6 / n }' \
      | tee -a "$results" >&2
  done
done

echo
printf '%-11s %10s %12s %12s %12s %9s\n' target requests/s "user us/req" "sys us/req" "CPU us/req" "vs off"
secs=${DURATION%s}
for t in $TARGETS; do
  awk -v t="$t" '$1 == t' "$results" | sort -k6,6n | awk -v t="$t" -v secs="$secs" '
    { n[NR]=$3; u[NR]=$4; s[NR]=$5; c[NR]=$6 } END { m=int((NR+1)/2); printf "%s %.0f %.2f %.2f %.2f\n", t, n[m]/secs, u[m], s[m], c[m] }'
done | awk '
  { cpu[$1]=$5 }
  { base = ($1 ~ /^nginx/) ? cpu["nginx-off"] : ($1 ~ /^weir.*-b$/) ? cpu["weir-off-b"] : cpu["weir-off"]
    vs = (base > 0) ? sprintf("%+.1f %%", ($5 / base - 1) * 100) : "-"
    printf "%-11s %10s %12s %12s %12s %9s\n", $1, $2, $3, $4, $5, vs }'
echo
echo "rounds=$ROUNDS duration=$DURATION wrk -t2 -c64; proxies on CPU 0 (one worker each), origin + wrk on CPU 1; medians (by total CPU) over rounds"
