#!/usr/bin/env bash
# weir against nginx and HAProxy with TLS at the proxy, one run, rounds interleaved (nginx,
# haproxy, weir, nginx, ...), the same load on each:
#   nginx    — nginx, one process, `listen ... ssl http2` (`http2 on` from 1.25.1), upstream
#              keepalive;
#   haproxy  — HAProxy, nbthread 1, `bind ... ssl crt ... alpn h2,http/1.1`, http-reuse always;
#   weir     — weir, one worker thread, no plugins, `tls = { certificates = [...] }`.
# Every proxy: pinned to CPU 0, TLS 1.2 and 1.3 allowed, the same ECDSA P-256 certificate
# (made here with openssl), ALPN h2 and http/1.1, session caches and tickets left at each
# one's default (never used: the clients below don't resume), plain HTTP/1.1 with keep-alive
# to the origin (nginx `return 200`, 1 KiB) on CPU 1, no access log. The clients ask for
# X25519 and TLS_AES_128_GCM_SHA256, so all three do the same cryptography; what was
# negotiated (TLS 1.3, X25519) is printed under the tables. Two passes:
#   h2   — HTTP/2 over TLS on long-lived connections: h2load -c64 -m10 (640 streams in flight)
#          on CPU 1, beside the origin. Per target: requests/s and the proxy's CPU
#          microseconds per request (/proc/PID/stat before and after), medians over the
#          rounds, with ratios to nginx and to HAProxy.
#   new  — new TLS connections: full handshakes, no resumption, one HTTP/1.1 request per
#          connection. h2load -c$BATCH -n$BATCH --h1, started again and again for DURATION:
#          each run opens BATCH connections at once, each makes one request and closes, and a
#          new h2load process has no session to resume. BATCH (100) stays under every listen
#          backlog (nginx's is 511, weir's 4096): more connections at once overflow the accept
#          queue, and the dropped SYNs are sent again a second later. Per target: handshakes
#          per second of proxy CPU (the figure to compare) and handshakes/s. The client
#          (OpenSSL 3.0 in h2load, one thread) spends more CPU per handshake than a proxy
#          does, so this pass is client-bound: the proxy is not at 100% and handshakes/s say
#          little, but handshakes per proxy CPU second count only the proxy's own work.
#          (`openssl s_time -new` costs the client as much and has one connection open at a
#          time; curl in a loop costs far more.)
# Both passes print how busy the proxy (CPU 0) and CPU 1 (h2load + origin) were: a proxy
# well under 100% beside CPU 1 near 100% means the client side set the pace, and then only
# the CPU figures compare the proxies.
#
# Installs nginx, haproxy, wrk and h2load from Debian if missing (needs root). Needs
# `cargo build --profile dist -p weir-host` (the production build: thin LTO);
# WEIR=target/release/weir measures a plain release build instead.
# Usage: bench/tls.sh  (env: DURATION=10s ROUNDS=3 CONNS=64 STREAMS=10 BATCH=100)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-64}
STREAMS=${STREAMS:-10}
BATCH=${BATCH:-100}
WEIR=${WEIR:-target/dist/weir}
ORIGIN=18091 NGINX=18092 HAPROXY=18093 WEIRP=18094

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
[ -x "$WEIR" ] || { echo "missing $WEIR: cargo build --profile dist -p weir-host" >&2; exit 1; }

. bench/common.sh
tmp=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

# DURATION in seconds, for the handshake pass's loop (h2load -D takes DURATION as it is).
case $DURATION in
  *ms) seconds=$(awk -v d="${DURATION%ms}" 'BEGIN { print d / 1000 }') ;;
  *s) seconds=${DURATION%s} ;;
  *m) seconds=$((${DURATION%m} * 60)) ;;
  *) seconds=$DURATION ;;
esac

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
cat "$tmp/cert.pem" "$tmp/key.pem" > "$tmp/haproxy.pem"  # HAProxy wants both in one file
# nginx workers run as an unprivileged user when started as root: let them read the files.
chmod 755 "$tmp" && chmod 644 "$tmp/"*.pem
write_origin_conf "$tmp/origin.conf" "$ORIGIN"

# `listen ... ssl http2` until nginx 1.25.1, `listen ... ssl` and `http2 on` from then.
nginx_version=$(nginx -v 2>&1 | sed 's|.*nginx/||')
if [ "$(printf '%s\n' 1.25.1 "$nginx_version" | sort -V | head -1)" = 1.25.1 ]; then
  listen="listen 127.0.0.1:$NGINX ssl; http2 on;"
else
  listen="listen 127.0.0.1:$NGINX ssl http2;"
fi
# keepalive 1024: CONNS × STREAMS requests in flight, each on its own upstream connection,
# all of them kept (with 128, nginx would close and reopen origin connections all along).
cat > "$tmp/nginx.conf" <<CONF
master_process off; worker_processes 1; daemon off; pid $tmp/nginx.pid; error_log stderr warn;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000;
  upstream origin { server 127.0.0.1:$ORIGIN; keepalive 1024; }
  server {
    $listen
    ssl_certificate $tmp/cert.pem; ssl_certificate_key $tmp/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
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
  bind 127.0.0.1:$HAPROXY ssl crt $tmp/haproxy.pem alpn h2,http/1.1
  default_backend origin
backend origin
  server o1 127.0.0.1:$ORIGIN
CONF
cat > "$tmp/weir.toml" <<CONF
[[listeners]]
address = "127.0.0.1:$WEIRP"
tls = { certificates = [{ cert = "cert.pem", key = "key.pem" }] }
[server]
worker_threads = 1
[[clusters]]
name = "origin"
endpoints = ["127.0.0.1:$ORIGIN"]
[[routes]]
name = "plain"
cluster = "origin"
plugins = []
CONF

taskset -c 1 nginx -c "$tmp/origin.conf" -e stderr & pids+=($!); origin_pid=$!
taskset -c 0 nginx -c "$tmp/nginx.conf" -e stderr & pids+=($!); nginx_pid=$!
taskset -c 0 haproxy -f "$tmp/haproxy.cfg" -db & pids+=($!); haproxy_pid=$!
RUST_LOG=warn taskset -c 0 "$WEIR" --config "$tmp/weir.toml" & pids+=($!); weir_pid=$!

# target → "port pid"
spec() {
  case $1 in
    nginx) echo "$NGINX $nginx_pid" ;;
    haproxy) echo "$HAPROXY $haproxy_pid" ;;
    weir) echo "$WEIRP $weir_pid" ;;
  esac
}
TARGETS="nginx haproxy weir"
url() { read -r port _ <<<"$(spec "$1")"; echo "https://127.0.0.1:$port/small"; }
# h2load on CPU 1 with the same key exchange and cipher for every proxy.
h2() { taskset -c 1 h2load -t1 --groups=X25519 --tls13-ciphers=TLS_AES_128_GCM_SHA256 "$@"; }
# CPU ticks spent on CPU 1: the origin's, and this script's finished children's (the h2load
# runs, and the few awk between them). Near 100% of a second per second: the client side,
# not the proxy, set the pace.
cpu1_ticks() {
  echo $(($(cpu_ticks "$origin_worker") + $(awk '{print $16 + $17}' "/proc/$$/stat")))
}

# Every target answers 200 over HTTP/2 with TLS.
for _ in $(seq 300); do
  ok=1
  for t in $TARGETS; do
    got=$(curl -sk --http2 -o /dev/null -w '%{http_code} %{http_version}' "$(url "$t")" || true)
    [ "$got" = "200 2" ] || ok=0
  done
  [ $ok = 1 ] && break
  sleep 0.1
done
[ $ok = 1 ] || { echo "a target does not answer 200 over h2" >&2; exit 1; }
# The origin's nginx is a master and one worker: the worker does the work.
origin_worker=$(cat "/proc/$origin_pid/task/$origin_pid/children")
origin_worker=${origin_worker%% *}

results="$tmp/results"
negotiated="$tmp/negotiated"
# What h2load output $3 says was negotiated, for pass $1 and target $2.
note_negotiated() {
  awk -v p="$1" -v t="$2" -F': ' '
    /^TLS Protocol/ {v=$2} /^Cipher/ {c=$2} /^Server Temp Key/ {k=$2} /^Application protocol/ {a=$2}
    END { printf "%s %s: %s %s %s, %s\n", p, t, v, c, k, a }' <<<"$3" >> "$negotiated"
}

h2_pass() {
  echo "warm-up (h2)..." >&2
  for t in $TARGETS; do
    out=$(h2 -c"$CONNS" -m"$STREAMS" -D 2 "$(url "$t")")
    note_negotiated h2 "$t" "$out"
  done
  for round in $(seq "$ROUNDS"); do
    for t in $TARGETS; do
      read -r _ pid <<<"$(spec "$t")"
      before=$(cpu_ticks "$pid") c0=$(cpu1_ticks)
      out=$(h2 -c"$CONNS" -m"$STREAMS" -D "$DURATION" "$(url "$t")")
      after=$(cpu_ticks "$pid") c1=$(cpu1_ticks)
      awk -v t="$t" -v r="$round" -v d=$((after - before)) -v c=$((c1 - c0)) \
          -v hz="$ticks_per_sec" -v secs="$seconds" '
        /^finished in/ {rps=$4} /^requests:/ {n=$2} /^status codes:/ {ok=$3}
        END { cpu = (d > 0 && n > 0) ? d / hz * 1e6 / n : 0
              printf "h2 %s %s %.0f %.2f %.0f %.0f %d\n", t, r, rps, cpu,
                100 * d / hz / secs, 100 * c / hz / secs, n - ok }' <<<"$out" >> "$results"
      echo "  h2 round $round $t done" >&2
    done
  done
}

# For DURATION: h2load runs of BATCH new connections, one HTTP/1.1 request each.
# Prints "handshakes failed seconds CPU-1-ticks".
handshakes() {
  local start end now c0 secs hs=0 bad=0 out ok total
  c0=$(cpu1_ticks)
  start=$EPOCHREALTIME
  end=$(awk -v s="$start" -v d="$seconds" 'BEGIN { printf "%.6f", s + d }')
  while now=$EPOCHREALTIME; awk -v n="$now" -v e="$end" 'BEGIN { exit !(n < e) }'; do
    out=$(h2 --h1 -c"$BATCH" -n"$BATCH" "$1")
    read -r ok total <<<"$(awk '/^requests:/ {n=$2} /^status codes:/ {ok=$3} END {print ok+0, n+0}' <<<"$out")"
    hs=$((hs + ok)); bad=$((bad + total - ok))
  done
  secs=$(awk -v s="$start" -v n="$EPOCHREALTIME" 'BEGIN { printf "%.3f", n - s }')
  echo "$hs $bad $secs $(($(cpu1_ticks) - c0))"
}

new_pass() {
  echo "warm-up (new connections)..." >&2
  for t in $TARGETS; do
    out=$(h2 --h1 -c"$BATCH" -n"$BATCH" "$(url "$t")")
    note_negotiated new "$t" "$out"
  done
  for round in $(seq "$ROUNDS"); do
    for t in $TARGETS; do
      read -r _ pid <<<"$(spec "$t")"
      before=$(cpu_ticks "$pid")
      handshakes "$(url "$t")" > "$tmp/hs"
      after=$(cpu_ticks "$pid")
      read -r hs bad secs cticks < "$tmp/hs"
      awk -v t="$t" -v r="$round" -v d=$((after - before)) -v c="$cticks" -v hz="$ticks_per_sec" \
          -v hs="$hs" -v bad="$bad" -v secs="$secs" 'BEGIN {
        printf "new %s %s %.0f %.0f %.0f %.0f %d\n", t, r, (d > 0 ? hs / (d / hz) : 0), hs / secs,
          100 * d / hz / secs, 100 * c / hz / secs, bad }' >> "$results"
      echo "  new round $round $t done ($hs handshakes)" >&2
    done
  done
}

h2_pass
new_pass

# Medians per pass and target, with ratios to nginx and HAProxy.
awk '
  { key=$1" "$2; n[key]++; for (f=4; f<NF; f++) v[key, f, n[key]]=$f; bad[key]+=$NF }
  function med(k, f,   i, j, c, tmp, t) { c=n[k]; for (i=1;i<=c;i++) tmp[i]=v[k,f,i]
    for (i=1;i<=c;i++) for (j=i+1;j<=c;j++) if (tmp[j]<tmp[i]) {t=tmp[i];tmp[i]=tmp[j];tmp[j]=t}
    return tmp[int((c+1)/2)] }
  function ratio(a, b) { return (a > 0 && b > 0) ? sprintf("%.2f", a / b) : "-" }
  END {
    split("nginx haproxy weir", targets, " ")
    if ("h2 nginx" in n) {
      printf "\nHTTP/2 over TLS (1 KiB)\n"
      printf "%-8s %12s %12s %8s %8s %10s %10s %10s %10s %8s\n", "target", "requests/s", "CPU us/req",
        "proxy %", "CPU 1 %", "rps/nginx", "rps/hap", "nginx/cpu", "hap/cpu", "non-2xx"
      nr=med("h2 nginx", 4); nc=med("h2 nginx", 5); hr=med("h2 haproxy", 4); hc=med("h2 haproxy", 5)
      for (i=1; i<=3; i++) { k="h2 "targets[i]; if (!(k in n)) continue
        r=med(k, 4); c=med(k, 5)
        printf "%-8s %12.0f %12.1f %8.0f %8.0f %10s %10s %10s %10s %8d\n", targets[i], r, c,
          med(k, 6), med(k, 7), ratio(r, nr), ratio(r, hr), ratio(nc, c), ratio(hc, c), bad[k] }
    }
    if ("new nginx" in n) {
      printf "\nNew TLS connections (full handshake, one HTTP/1.1 request each)\n"
      printf "%-8s %14s %12s %8s %9s %10s %10s %8s\n", "target", "hs/CPU s", "hs/s", "proxy %",
        "CPU 1 %", "vs nginx", "vs hap", "failed"
      nh=med("new nginx", 4); hh=med("new haproxy", 4)
      for (i=1; i<=3; i++) { k="new "targets[i]; if (!(k in n)) continue
        h=med(k, 4)
        printf "%-8s %14.0f %12.0f %8.0f %9.0f %10s %10s %8d\n", targets[i], h, med(k, 5),
          med(k, 6), med(k, 7), ratio(h, nh), ratio(h, hh), bad[k] }
    }
  }' "$results"
echo
echo "rounds=$ROUNDS duration=$DURATION; h2: h2load -t1 -c$CONNS -m$STREAMS;" \
  "new: h2load -t1 --h1 -c$BATCH -n$BATCH in a loop"
echo "proxies on CPU 0 (one worker each), origin + h2load on CPU 1; medians over rounds"
echo "nginx/cpu, hap/cpu >= 1.00: no more CPU per request than nginx, HAProxy"
echo "hs/CPU s: handshakes per proxy CPU second; vs nginx, vs hap >= 1.00: at least as many"
echo "negotiated:"
sed 's/^/  /' "$negotiated"
