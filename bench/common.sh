# Shared by the load benchmarks in this folder: tool checks, CPU accounting and the load
# generator. Source it after `cd` to the repository root.

# The benchmarks' plugin settings (wherever the sourcing script stands).
BENCH_PLUGINS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/plugins

# listed "LIST" WORD...: whether any WORD is one of LIST's space-separated words (a script's
# TARGETS, say).
listed() {
  local list=" $1 " word
  shift
  for word; do [[ $list == *" $word "* ]] && return 0; done
  return 1
}

# Fails with the install line unless nginx, wrk, taskset and the weir binary ($WEIR) exist.
require_tools() {
  for tool in nginx wrk taskset; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install nginx-light wrk util-linux" >&2; exit 1; }
  done
  [ -x "$WEIR" ] || { echo "missing $WEIR: cargo build --release -p weir-host" >&2; exit 1; }
}

# utime + stime of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# utime and stime of a process apart, in clock ticks: "user system".
cpu_ticks_split() { awk '{print $14, $15}' "/proc/$1/stat"; }
ticks_per_sec=$(getconf CLK_TCK)

# wrk on CPU 1 with $CONNS connections for $1 against URL $2.
load() { taskset -c 1 wrk -t1 -c"$CONNS" -d"$1" --latency "$2"; }

# Microseconds of CPU per request: ticks before, ticks after, requests.
cpu_per_request() {
  awk -v t=$(($2 - $1)) -v hz="$ticks_per_sec" -v n="$3" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }'
}

# A 1 KiB body for the origins' `return 200`.
origin_body() { head -c 1024 /dev/zero | tr '\0' 'x'; }

# nginx config for the 1 KiB origin on port $2, written to $1 (its pid file beside it).
write_origin_conf() {
  write_nginx_origin "$1" "$2" "location / { default_type text/plain; return 200 \"$(origin_body)\"; }"
}

# An nginx origin on port $2 written to $1: one worker, long keep-alive, no access log, and
# the server's location blocks given as $3 (nginx syntax).
write_nginx_origin() {
  cat > "$1" <<CONF
worker_processes 1; daemon off; pid $1.pid; error_log stderr warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$2;
    $3
  } }
CONF
}

# nginx as the reverse proxy under test on port $2 to the origin on port $3, written to $1:
# one process (no master, so the process started is the one doing the work), upstream
# keep-alive, no access log.
write_nginx_proxy_conf() {
  cat > "$1" <<CONF
master_process off; worker_processes 1; daemon off; pid $1.pid; error_log stderr warn;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000;
  upstream origin { server 127.0.0.1:$3; keepalive 128; }
  server {
    listen 127.0.0.1:$2;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
}

# weir config for plain proxying (one worker, no plugins) on port $2 to the origin on port
# $3, written to $1.
write_plain_weir_conf() {
  cat > "$1" <<CONF
[[listeners]]
address = "127.0.0.1:$2"
[server]
worker_threads = 1
[[clusters]]
name = "origin"
endpoints = ["127.0.0.1:$3"]
[[routes]]
name = "plain"
cluster = "origin"
plugins = []
CONF
  # OBSERVE: off (no metrics, no access log), metrics (the default config: metrics on), all
  # (metrics and a JSON access log beside the config), few (the same log with seven of its
  # fields, about what nginx's `combined` format holds), sampled (the full log of one request
  # in ten: `sample = 0.1`) or null (the full log to /dev/null: every record formatted and
  # written, none copied into the page cache).
  case "${OBSERVE:-metrics}" in
    off) printf '[metrics]\nenabled = false\n' >> "$1" ;;
    metrics) ;;
    all) printf '[access_log]\npath = "access.log"\n' >> "$1" ;;
    few) printf '[access_log]\npath = "access.log"\nfields = ["time", "client", "method", "path", "status", "bytes_out", "duration"]\n' >> "$1" ;;
    sampled) printf '[access_log]\npath = "access.log"\nsample = 0.1\n' >> "$1" ;;
    null) printf '[access_log]\npath = "/dev/null"\n' >> "$1" ;;
    *) echo "OBSERVE is off, metrics, all, few, sampled or null" >&2; exit 1 ;;
  esac
}

# The benchmarks' plugin settings are files in bench/plugins/, which `cargo xtask pgo`'s
# training copies too: one place for what the weir+2 and weir+3 routes run.

# Settings for jwt-auth (HS256 with the gateway example's secret, which `cargo xtask token`
# signs with) and rate-limit (per consumer, a limit never reached) in plugin folder $1.
write_auth_settings() {
  cp "$BENCH_PLUGINS/jwt-auth.toml" "$BENCH_PLUGINS/rate-limit.toml" "$1/"
}

# key-auth's settings in folder $1: one consumer, `bench`, with the key `bench-key`.
write_key_auth_settings() {
  cp "$BENCH_PLUGINS/key-auth.toml" "$1/"
}

# The settings of every plugin the weir+2 (key-auth → headers) and weir+3 (jwt-auth →
# rate-limit → rewrite) routes use, in plugin folder $1.
write_plugin_settings() {
  cp "$BENCH_PLUGINS"/*.toml "$1/"
}
