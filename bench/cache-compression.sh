#!/usr/bin/env bash
# Response caching and compression (issue 24's benchmark), one run, rounds interleaved:
# a cache hit of a 1 KiB JSON body, weir's route `cache` vs nginx's `proxy_cache`; and the
# compression of a 64 KiB JSON body, weir's `compression` vs nginx's `gzip on`. An nginx
# origin serves both (`Cache-Control: max-age=3600`). Each proxy runs one worker pinned to
# CPU 0 with upstream keep-alive; the origin and wrk (-t1 -c$CONNS, `Accept-Encoding` as the
# target asks) share CPU 1. Per target: requests/s, p50, p99, the proxy's CPU µs per request
# and the bytes of one response as sent:
#   nginx-cache — nginx, proxy_cache (keys_zone in memory, the body in a file on $TMPDIR, read
#                 through the page cache), proxy_cache_valid unset (the origin's max-age rules);
#   weir-cache  — weir, cache = {} (in memory);
#   nginx-gzip — nginx, gzip on, gzip_comp_level 5 (weir's gzip level), gzip_types application/json;
#   weir-gzip  — weir, compression = { algorithms = ["gzip"] };
#   weir-br    — weir, compression = { algorithms = ["br"] } (level 4);
#   weir-zstd  — weir, compression = { algorithms = ["zstd"] } (level 3);
#   weir-plain — weir without compression (what compressing adds).
# Needs a release weir (WEIR=target/release/weir), nginx, wrk, curl.
# Usage: bench/cache-compression.sh  (env: DURATION=10s ROUNDS=3 CONNS=32 TARGETS="nginx-cache weir-cache ...")
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-32}
WEIR=${WEIR:-target/release/weir}
ORIGIN=18581 NGINX=18582 PORT=18590
. bench/common.sh
require_tools
tmp=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

mkdir -p "$tmp/www"
python3 -c 'import json, sys; sys.stdout.write(json.dumps([{"id": i, "name": "item %d" % i, "tags": ["a", "b"], "ok": i % 3 == 0} for i in range(1300)])[:65536])' \
  > "$tmp/www/big.json"
head -c 1024 "$tmp/www/big.json" > "$tmp/www/small.json"
chmod 755 "$tmp" "$tmp/www" && chmod 644 "$tmp/www/big.json" "$tmp/www/small.json"
cat > "$tmp/origin.conf" <<CONF
worker_processes 1; daemon off; pid $tmp/origin.pid; error_log stderr warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; sendfile on;
  types { application/json json; }
  server { listen 127.0.0.1:$ORIGIN; root $tmp/www; add_header Cache-Control "max-age=3600"; } }
CONF
cat > "$tmp/nginx.conf" <<CONF
master_process off; worker_processes 1; daemon off; pid $tmp/nginx.pid; error_log stderr warn;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000;
  gzip on; gzip_comp_level 5; gzip_types application/json; gzip_min_length 1024; gzip_proxied any;
  proxy_cache_path $tmp/nginx-cache levels=1:2 keys_zone=responses:10m max_size=64m;
  upstream origin { server 127.0.0.1:$ORIGIN; keepalive 128; }
  server { listen 127.0.0.1:$NGINX;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache responses; } }
}
CONF
taskset -c 1 nginx -c "$tmp/origin.conf" -e stderr & pids+=($!)

# weir.toml with the route's line $1 ("" for none).
weir_conf() {
  cat > "$tmp/weir.toml" <<CONF
[[listeners]]
address = "127.0.0.1:$PORT"
[server]
worker_threads = 1
[[clusters]]
name = "origin"
endpoints = ["127.0.0.1:$ORIGIN"]
[[routes]]
name = "content"
cluster = "origin"
plugins = []
CONF
  [ -n "$1" ] && printf '%s\n' "$1" >> "$tmp/weir.toml"
  return 0
}

TARGETS=${TARGETS:-"nginx-cache weir-cache nginx-gzip weir-gzip weir-br weir-zstd weir-plain"}
printf '%-11s %10s %9s %9s %13s %13s\n' target "req/s" p50 p99 "CPU µs/req" "bytes/resp"
declare -A rps p50 p99 cpu size
for round in $(seq "$ROUNDS"); do
  for target in $TARGETS; do
    path=/big.json accept=identity
    case "$target" in
      nginx-cache) rm -rf "$tmp/nginx-cache"; path=/small.json ;;
      nginx-gzip) accept=gzip ;;
      weir-cache) weir_conf 'cache = {}'; path=/small.json ;;
      weir-plain) weir_conf ""; accept=gzip ;;
      weir-*) accept=${target#weir-}
              weir_conf "compression = { algorithms = [\"$accept\"] }" ;;
    esac
    case "$target" in
      nginx-*) taskset -c 0 nginx -c "$tmp/nginx.conf" -e stderr & pid=$!; port=$NGINX ;;
      *) RUST_LOG=error taskset -c 0 "$WEIR" --config "$tmp/weir.toml" & pid=$!; port=$PORT ;;
    esac
    pids+=($pid)
    url="http://127.0.0.1:$port$path"
    for _ in $(seq 300); do curl -sf -o /dev/null "$url" && break; sleep 0.1; done
    bytes=$(curl -s -H "accept-encoding: $accept" -o /dev/null -w '%{size_download}' "$url")
    taskset -c 1 wrk -t1 -c"$CONNS" -d2s -H "accept-encoding: $accept" "$url" >/dev/null
    before=$(cpu_ticks "$pid")
    out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" --latency -H "accept-encoding: $accept" "$url")
    after=$(cpu_ticks "$pid")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    rps[$target]+="$(echo "$out" | awk '/Requests\/sec/ {print $2}') "
    p50[$target]+="$(echo "$out" | awk '$1=="50%" {print $2}') "
    p99[$target]+="$(echo "$out" | awk '$1=="99%" {print $2}') "
    cpu[$target]+="$(cpu_per_request "$before" "$after" "$n") "
    size[$target]=$bytes
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for target in $TARGETS; do
  printf '%-11s %10s %9s %9s %13s %13s\n' "$target" \
    "$(echo "${rps[$target]}" | median)" "$(echo "${p50[$target]}" | median)" \
    "$(echo "${p99[$target]}" | median)" "$(echo "${cpu[$target]}" | median)" "${size[$target]}"
done
