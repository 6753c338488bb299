#!/usr/bin/env bash
# weir against nginx and HAProxy, one run, rounds interleaved (direct, nginx, haproxy, floor,
# weir, weir+2, weir+3, direct, ...), the same load on each:
#   direct   — the origin itself (nginx `return 200`, 1 KiB);
#   nginx    — nginx reverse proxy, worker_processes 1, upstream keepalive;
#   haproxy  — HAProxy, nbthread 1, http-reuse always;
#   floor    — hyper's floor (bench/floor): hyper's server and client forwarding unchanged,
#              nothing else — what weir is built on, without weir's features;
#   weir     — weir, one worker thread, no plugins;
#   weir+2   — weir with the two bundled runtime plugins: key-auth → headers;
#   weir+3   — weir with jwt-auth → rate-limit (never reached) → rewrite;
#   weir-off — weir with metrics off (TARGETS only: the observability cost, issue 21);
#   weir-log — weir with metrics and a JSON access log to a file (TARGETS only; LOG=few or
#              LOG=sampled logs seven fields, or one request in ten: bench/common.sh).
# Every proxy: pinned to CPU 0, upstream keep-alive, no access log. Origin and wrk (-t2 -c64)
# share CPU 1, so the proxy is the bottleneck. Per target: requests/s, p50, p99 and the
# proxy process's CPU microseconds per request (/proc/PID/stat before and after), medians
# over the rounds, with ratios to nginx. Then the same with a 64 KiB body (BIG=0 skips it).
# HTTP/2 with TLS at the proxy (h2load) and new TLS connections per CPU second: bench/tls.sh.
#
# Installs nginx, haproxy, wrk, h2load from Debian if missing (needs root). Needs
# `cargo build --profile dist -p weir-host -p weir-bench-floor` (the production build: thin
# LTO) and `cargo xtask plugins`; WEIR=target/release/weir (and FLOOR=target/release/hyper-floor)
# measure plain release builds instead.
# Usage: bench/run.sh  (env: DURATION=10s ROUNDS=3 CONNS=64 BIG=1, TARGETS="direct nginx
# haproxy floor weir weir+2 weir+3" — a subset, in the order run, e.g. "weir-off weir weir-log")
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-64}
BIG=${BIG:-1}
WEIR=${WEIR:-target/dist/weir}
FLOOR=${FLOOR:-target/dist/hyper-floor}
PLUGINS=${PLUGINS:-target/plugins}
TARGETS=${TARGETS:-direct nginx haproxy floor weir weir+2 weir+3}
ORIGIN=18081 NGINX=18082 HAPROXY=18083 WEIRP=18084 FLOORP=18085 WEIROFF=18086 WEIRLOG=18087

need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v haproxy >/dev/null || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v taskset >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  apt-get install -y -q "${need[@]}" >/dev/null
fi
. bench/common.sh
# weir and the floor are started only when TARGETS names them, so only those must be built
# (bench/floor-pgo.sh trains the floor alone); the origin, nginx and HAProxy always start.
runs() { listed "$TARGETS" "$@"; }
# The plugins of the weir+2 and weir+3 routes.
ROUTE_PLUGINS="key-auth headers jwt-auth rate-limit rewrite"
if runs weir weir+2 weir+3 weir-off weir-log; then
  [ -x "$WEIR" ] || { echo "missing $WEIR: cargo build --profile dist -p weir-host" >&2; exit 1; }
fi
if runs weir weir+2 weir+3; then
  for p in $ROUTE_PLUGINS; do
    [ -f "$PLUGINS/$p.wasm" ] || { echo "missing $PLUGINS/$p.wasm: cargo xtask plugins" >&2; exit 1; }
  done
fi
if runs floor; then
  [ -x "$FLOOR" ] || { echo "missing $FLOOR: cargo build --profile dist -p weir-bench-floor" >&2; exit 1; }
fi

tmp=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

mkdir -p "$tmp/www" "$tmp/plugins"
head -c 1024 /dev/zero | tr '\0' 'x' > "$tmp/www/small"
head -c 65536 /dev/zero | tr '\0' 'x' > "$tmp/www/big"
# nginx workers run as an unprivileged user when started as root: let them read the files.
chmod 755 "$tmp" "$tmp/www" && chmod 644 "$tmp/www/"*
cat > "$tmp/origin.conf" <<CONF
worker_processes 1; daemon off; pid $tmp/origin.pid; error_log stderr warn;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000; sendfile on;
  server {
    listen 127.0.0.1:$ORIGIN;
    location ~ big\$ { alias $tmp/www/big; default_type application/octet-stream; }
    location / { default_type text/plain; return 200 "$(cat "$tmp/www/small")"; }
  }
}
CONF
write_nginx_proxy_conf "$tmp/nginx.conf" "$NGINX" "$ORIGIN"
cat > "$tmp/haproxy.cfg" <<CONF
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend bench
  bind 127.0.0.1:$HAPROXY
  default_backend origin
backend origin
  server o1 127.0.0.1:$ORIGIN
CONF
if runs weir weir+2 weir+3; then
  for p in $ROUTE_PLUGINS; do cp "$PLUGINS/$p.wasm" "$tmp/plugins/"; done
  write_plugin_settings "$tmp/plugins"
fi
cat > "$tmp/weir.toml" <<CONF
[[listeners]]
address = "127.0.0.1:$WEIRP"
[server]
worker_threads = 1
[plugins]
cache_dir = "$tmp/cache"
[[clusters]]
name = "origin"
endpoints = ["127.0.0.1:$ORIGIN"]
[[routes]]
name = "two"
path_prefix = "/p2/"
cluster = "origin"
plugins = ["key-auth", "headers"]
[[routes]]
name = "three"
path_prefix = "/p3/"
cluster = "origin"
plugins = ["jwt-auth", "rate-limit", "rewrite"]
[[routes]]
name = "plain"
cluster = "origin"
plugins = []
CONF

taskset -c 1 nginx -c "$tmp/origin.conf" -e stderr & pids+=($!)
taskset -c 0 nginx -c "$tmp/nginx.conf" -e stderr & pids+=($!); nginx_pid=$!
taskset -c 0 haproxy -f "$tmp/haproxy.cfg" -db & pids+=($!); haproxy_pid=$!
floor_pid=0 weir_pid=0 weir_off_pid=0 weir_log_pid=0
if runs floor; then
  taskset -c 0 "$FLOOR" "127.0.0.1:$FLOORP" "127.0.0.1:$ORIGIN" & pids+=($!); floor_pid=$!
fi
if runs weir weir+2 weir+3; then
  RUST_LOG=warn taskset -c 0 "$WEIR" --config "$tmp/weir.toml" & pids+=($!); weir_pid=$!
fi
if runs weir-off; then
  mkdir -p "$tmp/off" && OBSERVE=off write_plain_weir_conf "$tmp/off/weir.toml" "$WEIROFF" "$ORIGIN"
  RUST_LOG=warn taskset -c 0 "$WEIR" --config "$tmp/off/weir.toml" & pids+=($!); weir_off_pid=$!
fi
if runs weir-log; then
  mkdir -p "$tmp/log" && OBSERVE=${LOG:-all} write_plain_weir_conf "$tmp/log/weir.toml" "$WEIRLOG" "$ORIGIN"
  RUST_LOG=warn taskset -c 0 "$WEIR" --config "$tmp/log/weir.toml" & pids+=($!); weir_log_pid=$!
fi
# weir+3's jwt-auth needs a token; the other targets ignore the header.
token=
if runs weir+3; then token=$(cargo xtask token bench 3600 2>/dev/null); fi

# target → "port path-prefix pid"
spec() {
  case $1 in
    direct) echo "$ORIGIN / 0" ;;
    nginx) echo "$NGINX / $nginx_pid" ;;
    haproxy) echo "$HAPROXY / $haproxy_pid" ;;
    floor) echo "$FLOORP / $floor_pid" ;;
    weir) echo "$WEIRP / $weir_pid" ;;
    weir+2) echo "$WEIRP /p2/ $weir_pid" ;;
    weir+3) echo "$WEIRP /p3/ $weir_pid" ;;
    weir-off) echo "$WEIROFF / $weir_off_pid" ;;
    weir-log) echo "$WEIRLOG / $weir_log_pid" ;;
  esac
}
url() { read -r port prefix _ <<<"$(spec "$1")"; echo "http://127.0.0.1:$port${prefix}$2"; }
load() {
  taskset -c 1 wrk -t2 -c"$CONNS" -d"$2" --latency \
    -H "x-api-key: bench-key" -H "authorization: Bearer $token" "$1"
}

for _ in $(seq 300); do
  ok=1
  for t in $TARGETS; do curl -sf -o /dev/null -H "x-api-key: bench-key" -H "authorization: Bearer $token" "$(url "$t" small)" || ok=0; done
  [ $ok = 1 ] && break
  sleep 0.1
done
[ $ok = 1 ] || { echo "a target does not answer 200" >&2; exit 1; }

results="$tmp/results"
pass() {  # $1 = file name on the origin (small | big)
  echo "warm-up ($1)..." >&2
  for t in $TARGETS; do load "$(url "$t" "$1")" 2s >/dev/null; done
  for round in $(seq "$ROUNDS"); do
    for t in $TARGETS; do
      read -r _ _ pid <<<"$(spec "$t")"
      before=0; [ "$pid" = 0 ] || before=$(cpu_ticks "$pid")
      out=$(load "$(url "$t" "$1")" "$DURATION")
      after=0; [ "$pid" = 0 ] || after=$(cpu_ticks "$pid")
      awk -v t="$t" -v r="$round" -v d=$((after - before)) -v hz="$ticks_per_sec" -v body="$1" '
        /Requests\/sec/ {rps=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2} /requests in/ {n=$1}
        /Non-2xx/ {bad=$4}
        function us(v) { if (v ~ /us$/) return v+0; if (v ~ /ms$/) return v*1000; if (v ~ /s$/) return v*1e6; return v }
        END { cpu = (d > 0 && n > 0) ? d / hz * 1e6 / n : 0
              printf "%s %s %s %.0f %.0f %.0f %.2f %d\n", body, t, r, rps, us(p50), us(p99), cpu, bad+0 }' <<<"$out" >> "$results"
      echo "  $1 round $round $t done" >&2
    done
  done
}
pass small
[ "$BIG" = 1 ] && pass big

# Medians per body and target, with ratios to nginx.
sort -k1,1 -k2,2 -k4,4n "$results" | awk -v targets="$TARGETS" '
  { key=$1" "$2; n[key]++; rps[key, n[key]]=$4; p50[key, n[key]]=$5; p99[key, n[key]]=$6; cpu[key, n[key]]=$7; bad[key]+=$8; order[key]=1 }
  function med(a, k, c,   i, v, tmp, j, t) { for (i=1;i<=c;i++) tmp[i]=a[k,i]
    for (i=1;i<=c;i++) for (j=i+1;j<=c;j++) if (tmp[j]<tmp[i]) {t=tmp[i];tmp[i]=tmp[j];tmp[j]=t}
    return tmp[int((c+1)/2)] }
  # The spread of a value over the rounds, as a share of its median: (highest - lowest) / median.
  function spread(a, k, c,   i, lo, hi, m) { lo=a[k,1]; hi=a[k,1]
    for (i=2;i<=c;i++) { if (a[k,i]<lo) lo=a[k,i]; if (a[k,i]>hi) hi=a[k,i] }
    m=med(a,k,c); return m>0 ? (hi-lo)/m*100 : 0 }
  END {
    count=split(targets, names, " ")
    split("small big", bodies, " ")
    for (b=1; b<=2; b++) {
      body=bodies[b]
      # Ratios are to nginx when it ran, else to the first target.
      base="nginx"; if (!((body" nginx") in n)) base=names[1]
      kn=body" "base; if (!(kn in n)) continue
      nrps=med(rps,kn,n[kn]); ncpu=med(cpu,kn,n[kn])
      printf "\n%s body (%s)\n", body, body=="small" ? "1 KiB" : "64 KiB"
      printf "%-8s %12s %9s %9s %12s %10s %10s %10s %8s\n", "target", "requests/s", "p50 us", "p99 us", "CPU us/req", "CPU spread", "rps/" base, base "/cpu", "non-2xx"
      for (i=1; i<=count; i++) { k=body" "names[i]; if (!(k in n)) continue
        r=med(rps,k,n[k]); c=med(cpu,k,n[k])
        printf "%-8s %12.0f %9.0f %9.0f %12s %10s %10.2f %10s %8d\n", names[i], r, med(p50,k,n[k]), med(p99,k,n[k]),
          (c>0 ? sprintf("%.1f", c) : "-"), (c>0 ? sprintf("%.0f %%", spread(cpu,k,n[k])) : "-"), r/nrps,
          (c>0 ? sprintf("%.2f", ncpu/c) : "-"), bad[k] }
    }
  }'
echo
echo "rounds=$ROUNDS duration=$DURATION wrk -t2 -c$CONNS; proxies on CPU 0 (one worker each), origin + wrk on CPU 1; medians over rounds"
echo "X/cpu >= 1.00 means the target spends no more CPU per request than X; CPU spread is (highest - lowest) / median over the rounds"
