#!/usr/bin/env bash
# rate-limit's cost with the kv store in memory vs in Redis (issue 23's benchmark), and two
# weir instances sharing one Redis vs one.
#
# Part 1, one weir (one worker thread, pinned to CPU 0) in front of an nginx origin, wrk
# (-t1 -c$CONNS), the origin and redis-server on CPU 1, rounds interleaved:
#   plain     — no plugin;
#   memory    — rate-limit (key = client, a limit never reached) on the memory store;
#   redis     — the same on a local redis-server ([kv] backend = "redis");
#   redis-gcra — the same with algorithm = "gcra" (a get and a compare-and-set each).
# Per target: requests/s, p50, p99, weir's CPU µs per request, and redis-server's.
# Part 2 (TWO=1, the default): one instance vs two sharing Redis, each instance on its own
# wrk (-t1 -c$CONNS/2 for two), all processes unpinned (the machine has 2 cores, so this shows
# what sharing costs, not how it scales); total requests/s.
# Part 3 (DOWN=1, the default): Redis killed under load — rate-limit with fault_tolerant =
# true and the default [kv] timeout (5 ms): requests/s, latency percentiles and the maximum,
# and how many breaker lines weir logged.
#
# Needs a release weir (WEIR=target/release/weir: cargo build --release -p weir-host), the
# bundled plugins (cargo xtask plugins), nginx, wrk, redis-server (apt-get install nginx-light
# wrk redis-server).
# Usage: bench/shared-state.sh  (env: DURATION=10s ROUNDS=3 CONNS=64 TWO=1)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-64}
TWO=${TWO:-1}
DOWN=${DOWN:-1}
WEIR=${WEIR:-target/release/weir}
PLUGINS=${PLUGINS:-target/plugins}
ORIGIN=18481 REDIS=18482 PORT=18490 PORT2=18491
. bench/common.sh
require_tools
command -v redis-server >/dev/null || { echo "missing redis-server: apt-get install redis-server" >&2; exit 1; }
[ -f "$PLUGINS/rate-limit.wasm" ] || { echo "missing $PLUGINS/rate-limit.wasm: cargo xtask plugins" >&2; exit 1; }
tmp=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

write_origin_conf "$tmp/origin.conf" "$ORIGIN"
taskset -c 1 nginx -c "$tmp/origin.conf" -e stderr & pids+=($!)
taskset -c 1 redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$tmp" --logfile "$tmp/redis.log" & redis_pid=$!; pids+=($redis_pid)

# weir.toml for target $1 on port $2 in folder $3.
weir_conf() {
  local name=$1 port=$2 dir=$3
  mkdir -p "$dir/plugins"
  cat > "$dir/weir.toml" <<CONF
[[listeners]]
address = "127.0.0.1:$port"
[server]
worker_threads = 1
[plugins]
cache_dir = "$tmp/cache"
[[clusters]]
name = "origin"
endpoints = ["127.0.0.1:$ORIGIN"]
[[routes]]
name = "limited"
cluster = "origin"
CONF
  local algorithm=sliding-window tolerant=false
  case "$name" in
    redis-down) tolerant=true
      printf '[kv]\nbackend = "redis"\nurl = "redis://127.0.0.1:%s"\n' "$REDIS" >> "$dir/weir.toml" ;;
    plain) printf 'plugins = []\n' >> "$dir/weir.toml"; return ;;
    memory) ;;
    redis) printf '[kv]\nbackend = "redis"\nurl = "redis://127.0.0.1:%s"\ntimeout = "50ms"\n' "$REDIS" >> "$dir/weir.toml" ;;
    redis-gcra) algorithm=gcra
      printf '[kv]\nbackend = "redis"\nurl = "redis://127.0.0.1:%s"\ntimeout = "50ms"\n' "$REDIS" >> "$dir/weir.toml" ;;
  esac
  cp "$PLUGINS/rate-limit.wasm" "$dir/plugins/"
  printf 'kv = true\n[config]\nkey = "client"\nalgorithm = "%s"\nfault_tolerant = %s\n[[config.limits]]\nrequests = 1000000000\nwindow = "1h"\n' \
    "$algorithm" "$tolerant" > "$dir/plugins/rate-limit.toml"
}

# Starts weir with the config in folder $1 on CPU set $2; waits until port $3 answers.
start_weir() {
  (cd "$1" && RUST_LOG=error exec taskset -c "$2" "$OLDPWD/$WEIR" --config weir.toml) & weir_pid=$!
  pids+=($weir_pid)
  for _ in $(seq 300); do
    curl -sf -o /dev/null "http://127.0.0.1:$3/" && return
    sleep 0.1
  done
  echo "weir on $3 did not start" >&2; exit 1
}

stop_weir() { kill "$1"; wait "$1" 2>/dev/null || true; }

echo "part 1: one weir on CPU 0, $CONNS connections, $DURATION x $ROUNDS rounds"
printf '%-11s %10s %9s %9s %14s %15s\n' target "req/s" p50 p99 "weir µs/req" "redis µs/req"
declare -A rps p50 p99 cpu rcpu
for round in $(seq "$ROUNDS"); do
  for target in plain memory redis redis-gcra; do
    weir_conf "$target" "$PORT" "$tmp/$target"
    start_weir "$tmp/$target" 0 "$PORT"
    load 2s "http://127.0.0.1:$PORT/" >/dev/null   # warm: instances, connections
    before=$(cpu_ticks "$weir_pid"); rbefore=$(cpu_ticks "$redis_pid")
    out=$(load "$DURATION" "http://127.0.0.1:$PORT/")
    after=$(cpu_ticks "$weir_pid"); rafter=$(cpu_ticks "$redis_pid")
    stop_weir "$weir_pid"
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    rps[$target]+="$(echo "$out" | awk '/Requests\/sec/ {print $2}') "
    p50[$target]+="$(echo "$out" | awk '$1=="50%" {print $2}') "
    p99[$target]+="$(echo "$out" | awk '$1=="99%" {print $2}') "
    cpu[$target]+="$(cpu_per_request "$before" "$after" "$n") "
    rcpu[$target]+="$(cpu_per_request "$rbefore" "$rafter" "$n") "
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for target in plain memory redis redis-gcra; do
  printf '%-11s %10s %9s %9s %14s %15s\n' "$target" \
    "$(echo "${rps[$target]}" | median)" "$(echo "${p50[$target]}" | median)" \
    "$(echo "${p99[$target]}" | median)" "$(echo "${cpu[$target]}" | median)" \
    "$(echo "${rcpu[$target]}" | median)"
done

if [ "$TWO" = 1 ]; then
echo
echo "part 2: one weir vs two sharing Redis (unpinned; 2 cores), $DURATION"
weir_conf redis "$PORT" "$tmp/one"
start_weir "$tmp/one" 0-1 "$PORT"
one=$(taskset -c 0-1 wrk -t1 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$PORT/" | awk '/Requests\/sec/ {print $2}')
stop_weir "$weir_pid"
weir_conf redis "$PORT" "$tmp/a"; weir_conf redis "$PORT2" "$tmp/b"
start_weir "$tmp/a" 0-1 "$PORT"; a_pid=$weir_pid
start_weir "$tmp/b" 0-1 "$PORT2"; b_pid=$weir_pid
half=$((CONNS / 2))
taskset -c 0-1 wrk -t1 -c"$half" -d"$DURATION" "http://127.0.0.1:$PORT/" > "$tmp/a.out" & wrk_a=$!
taskset -c 0-1 wrk -t1 -c"$half" -d"$DURATION" "http://127.0.0.1:$PORT2/" > "$tmp/b.out"
wait "$wrk_a"
two=$(cat "$tmp/a.out" "$tmp/b.out" | awk '/Requests\/sec/ {s += $2} END {printf "%.0f", s}')
stop_weir "$a_pid"; stop_weir "$b_pid"
printf 'one instance:  %s req/s\ntwo instances: %s req/s (sum)\n' "$one" "$two"
fi

[ "$DOWN" = 1 ] || exit 0
echo
echo "part 3: Redis killed, rate-limit fault_tolerant = true, [kv] timeout 5 ms (default), $DURATION"
weir_conf redis-down "$PORT" "$tmp/down"
(cd "$tmp/down" && RUST_LOG=warn exec taskset -c 0 "$OLDPWD/$WEIR" --config weir.toml 2> weir.log) & weir_pid=$!
pids+=($weir_pid)
for _ in $(seq 300); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
kill "$redis_pid"; wait "$redis_pid" 2>/dev/null || true
out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$PORT/")
echo "$out" | awk '/Requests\/sec/ {print "req/s " $2} $1=="50%" || $1=="99%" {print $1 " " $2} /Latency/ && !/Distribution/ {print "max " $4}'
echo "breaker lines: $(grep -c 'circuit breaker open' "$tmp/down/weir.log" || true), store-failure lines: $(grep -c 'store failed' "$tmp/down/weir.log" || true)"
stop_weir "$weir_pid"
