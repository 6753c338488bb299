#!/usr/bin/env bash
# The soak (issue 22): REQUESTS (1,000,000) requests through one route whose chain is the
# *guard* example filter in four languages — Rust → JavaScript → Python → Go
# (examples/filters/<lang>/guard.wasm) — to an nginx origin, in chunks of CHUNK (100,000,
# `h2load -n`, exact). After each chunk: weir's resident memory (/proc/PID/status: VmRSS,
# VmHWM, RssAnon) and from the admin's /metrics the plugins' linear memory
# (weir_plugin_memory_bytes), live and created instances per plugin and failed plugin calls.
# One row per chunk, then the verdicts:
#   - memory: levelled off when a least-squares line through the RSS of every row after the
#     first chunk rises by less than TOLERANCE percent of their mean (or SLACK_MIB, whichever
#     is more) over the run: a trend, not the spread, since RSS moves with the live instances;
#   - the chain: every chunk raised each plugin's on-request calls by CHUNK (every request ran
#     all four), and how many answers were not 2xx;
#   - Go's GC workaround: the Go guard switches Go's collector off and runs it every 100th hook
#     call, and releases what the bindings pinned (docs/plugins/go.md). Here its instances
#     serve up to GO_MAX_USES calls (default: as many as weir allows, so they are never retired
#     for age) under a GO_MEMORY_MB (8) cap, and nothing but that workaround keeps their heaps
#     under it: without it they trap there ("memory" failures, within the first 100,000
#     requests with the collection left out) and are replaced. Verified when no Go call failed
#     for memory over the run.
# Every request carries each guard's bypass token (127.0.0.0/8 is on every guard's deny list,
# and each has its own token header, which it checks and removes), so each call reads a header
# as well as the client's address; a request missing any one token is refused (checked first).
# The hook deadline is DEADLINE (1s), not weir's 50 ms: on a busy machine a call held off its
# core that long would be cut off and its instance replaced, which is not what is measured.
# Memory, not speed, is measured: run it under `nice` on a shared machine (about 17 minutes
# for 1,000,000 on 2 cores, most of it the JavaScript guard).
#
# Needs a release weir (`cargo build --release -p weir-host`; copy it aside, e.g. to
# /tmp/weir-soak, if others build in this tree meanwhile) and the guards built by
# `cargo xtask examples` (it installs the languages' toolchains, examples/toolchains.sh).
# Installs nginx, h2load and curl from Debian if missing (needs root). Nothing listens beyond
# 127.0.0.1.
# Usage: nice -n 10 bench/soak.sh  (env: REQUESTS=1000000 CHUNK=100000 CONNS=8 PROTO=h1|h2c
# WORKERS= (weir's worker_threads; default one per core) TOLERANCE=5 SLACK_MIB=8 DEADLINE=1s
# GO_MAX_USES=4294967295 GO_MEMORY_MB=8 LANGS="rust js python go" (the chain, in order; one
# language alone makes the wasm column its own) WEIR=target/release/weir
# GUARDS=examples/filters (a folder of <lang>/guard.wasm and guard.toml) LOG= (a file to keep
# weir's log in) ORIGIN=18781 PORT=18790 ADMIN=18791)
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-1000000}
CHUNK=${CHUNK:-100000}
CONNS=${CONNS:-8}
PROTO=${PROTO:-h1}
WORKERS=${WORKERS:-}
TOLERANCE=${TOLERANCE:-5}
SLACK_MIB=${SLACK_MIB:-8}
DEADLINE=${DEADLINE:-1s}
GO_MAX_USES=${GO_MAX_USES:-4294967295}
GO_MEMORY_MB=${GO_MEMORY_MB:-8}
WEIR=${WEIR:-target/release/weir}
GUARDS=${GUARDS:-examples/filters}
LOG=${LOG:-}
ORIGIN=${ORIGIN:-18781} PORT=${PORT:-18790} ADMIN=${ADMIN:-18791}
LANGS=${LANGS:-rust js python go}

need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  apt-get install -y -q "${need[@]}" >/dev/null
fi
[ -x "$WEIR" ] || { echo "missing $WEIR: cargo build --release -p weir-host" >&2; exit 1; }
for lang in $LANGS; do
  [ -f "$GUARDS/$lang/guard.wasm" ] || { echo "missing $GUARDS/$lang/guard.wasm: cargo xtask examples" >&2; exit 1; }
done
case $PROTO in
  h1) h2flags=(--h1) ;;
  h2c) h2flags=() ;;
  *) echo "PROTO is h1 or h2c" >&2; exit 1 ;;
esac
[ $((REQUESTS % CHUNK)) = 0 ] || { echo "REQUESTS must be a multiple of CHUNK" >&2; exit 1; }
for port in "$ORIGIN" "$PORT" "$ADMIN"; do
  if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/"; then
    echo "127.0.0.1:$port is taken (another run?): set ORIGIN, PORT and ADMIN" >&2
    exit 1
  fi
done

. bench/common.sh
tmp=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  [ -z "$LOG" ] || cp "$tmp/weir.log" "$LOG" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# The plugins: each guard as <lang>.wasm, with its example's host settings (the lines of its
# guard.toml above [config]) and a [config] of our own.
mkdir -p "$tmp/plugins"
token_header() { echo "x-guard-$1"; }
token() { echo "soak-token-$1"; }
for lang in $LANGS; do
  cp "$GUARDS/$lang/guard.wasm" "$tmp/plugins/$lang.wasm"
  {
    if [ "$lang" = go ]; then
      sed -n '/^\[config\]/q; /^\(max_uses\|memory_limit_mb\)/!p' "$GUARDS/$lang/guard.toml"
      printf 'max_uses = %s\nmemory_limit_mb = %s\n' "$GO_MAX_USES" "$GO_MEMORY_MB"
    else
      sed -n '/^\[config\]/q; p' "$GUARDS/$lang/guard.toml"
    fi
    cat <<CONF
[config]
deny = ["127.0.0.0/8", "::1/128"]
token = "$(token "$lang")"
token_header = "$(token_header "$lang")"
tag = "$lang"
CONF
  } > "$tmp/plugins/$lang.toml"
done
# Every token, and the same but for one language's ($1).
tokens() { for lang in $LANGS; do [ "$lang" = "${1:-}" ] || printf -- '-H\n%s: %s\n' "$(token_header "$lang")" "$(token "$lang")"; done; }
mapfile -t all_tokens < <(tokens)

write_origin_conf "$tmp/origin.conf" "$ORIGIN"
cat > "$tmp/weir.toml" <<CONF
[[listeners]]
address = "127.0.0.1:$PORT"
[admin]
address = "127.0.0.1:$ADMIN"
open = true
[plugins]
cache_dir = "$tmp/cache"
deadline = "$DEADLINE"
[[clusters]]
name = "origin"
endpoints = ["127.0.0.1:$ORIGIN"]
[[routes]]
name = "soak"
cluster = "origin"
plugins = [$(printf '"%s", ' $LANGS | sed 's/, $//')]
CONF
[ -z "$WORKERS" ] || sed -i "/^\[admin\]/i [server]\nworker_threads = $WORKERS" "$tmp/weir.toml"

nginx -c "$tmp/origin.conf" -e stderr & pids+=($!)
RUST_LOG=warn "$WEIR" --config "$tmp/weir.toml" 2> "$tmp/weir.log" & pids+=($!); weir_pid=$!
# Compiling the four components (Python's is 19 MB) takes a while on a busy machine.
ready=0
for _ in $(seq 1200); do
  kill -0 "$weir_pid" 2>/dev/null || { cat "$tmp/weir.log" >&2; echo "weir exited" >&2; exit 1; }
  if [ "$(curl -s -o /dev/null -w '%{http_code}' "${all_tokens[@]}" "http://127.0.0.1:$PORT/")" = 200 ]; then
    ready=1
    break
  fi
  sleep 0.5
done
[ $ready = 1 ] || { cat "$tmp/weir.log" >&2; echo "weir did not answer 200 within 10 minutes" >&2; exit 1; }

# Each guard is on the chain and enforcing: without its token, 403.
for lang in $LANGS; do
  mapfile -t some < <(tokens "$lang")
  code=$(curl -s -o /dev/null -w '%{http_code}' "${some[@]}" "http://127.0.0.1:$PORT/")
  [ "$code" = 403 ] || { echo "without $lang's token: $code, not 403" >&2; exit 1; }
done

status() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$weir_pid/status"; }
metrics() { curl -sf "http://127.0.0.1:$ADMIN/metrics" > "$tmp/metrics"; }
# A metric's value, summed over the series whose labels include every one given:
# metric NAME [LABEL=VALUE ...].
metric() {
  local name=$1
  shift
  awk -v name="$name" -v want="$*" '
    { series = $1; sub(/\{.*/, "", series) }
    series != name { next }
    { for (i = split(want, w, " "); i > 0; i--) { split(w[i], kv, "="); if (index($1, kv[1] "=\"" kv[2] "\"") == 0) next }
      sum += $NF }
    END { printf "%d\n", sum }' "$tmp/metrics"
}
per_plugin() {  # NAME [LABEL=VALUE ...]: the value for each language, joined by /
  local out=() lang
  for lang in $LANGS; do out+=("$(metric "$@" plugin="$lang")"); done
  (IFS=/; echo "${out[*]}")
}
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

rows="$tmp/rows"
printf '%-9s %8s %8s %8s %9s %10s %-14s %-17s %5s %7s %6s\n' requests "RSS MiB" "HWM MiB" "anon MiB" "wasm MiB" "RSS-wasm" \
  "instances" "created" fails non-2xx secs
echo "# requests rss_kb go_memory_failures calls_ok non2xx" > "$rows"
row() {  # $1 requests so far, $2 non-2xx in the chunk, $3 seconds, $4 calls ok (1/0)
  metrics
  local rss hwm anon wasm
  rss=$(status VmRSS) hwm=$(status VmHWM) anon=$(status RssAnon)
  wasm=$(($(metric weir_plugin_memory_bytes) / 1024))
  printf '%-9s %8s %8s %8s %9s %10s %-14s %-17s %5s %7s %6s\n' "$1" "$(mib "$rss")" "$(mib "$hwm")" "$(mib "$anon")" \
    "$(mib "$wasm")" "$(mib $((rss - wasm)))" \
    "$(per_plugin weir_plugin_instances)" "$(per_plugin weir_plugin_instances_created_total)" \
    "$(metric weir_plugin_failures_total)" "$2" "$3"
  echo "$1 $rss $(metric weir_plugin_failures_total plugin=go kind=memory) $4 ${2/-/0}" >> "$rows"
}
calls() { per_plugin weir_plugin_hook_duration_seconds_count hook=on-request; }

row 0 - - 1
done_requests=0
metrics
before=$(calls)
while [ "$done_requests" -lt "$REQUESTS" ]; do
  started=$(date +%s.%N)
  out=$(h2load "${h2flags[@]}" -n "$CHUNK" -c "$CONNS" "${all_tokens[@]}" "http://127.0.0.1:$PORT/")
  kill -0 "$weir_pid" 2>/dev/null || { tail -20 "$tmp/weir.log" >&2; echo "weir exited" >&2; exit 1; }
  secs=$(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN { printf "%.0f", e - s }')
  ok=$(awk '/^status codes:/ { print $3 + 0 }' <<<"$out")
  done_requests=$((done_requests + CHUNK))
  metrics
  after=$(calls)
  # Each plugin's on-request calls went up by exactly CHUNK: every request ran every guard.
  calls_ok=$(awk -v b="$before" -v a="$after" -v n="$CHUNK" 'BEGIN {
    k = split(b, x, "/"); split(a, y, "/"); ok = 1; for (i = 1; i <= k; i++) if (y[i] - x[i] != n) ok = 0; print ok }')
  before=$after
  row "$done_requests" $((CHUNK - ${ok:-0})) "$secs" "$calls_ok"
done

echo
echo "instances and created: ${LANGS// //} (live instances; instances created so far)"
echo "wasm: weir_plugin_memory_bytes, the linear memory of all instances (RSS-wasm: the rest, weir's own"
echo "heap and code among it); fails: failed plugin calls"
awk -v tol="$TOLERANCE" -v slack="$SLACK_MIB" -v chunk="$CHUNK" '
  /^#/ { next }
  { n++; req[n] = $1; rss[n] = $2; gomem[n] = $3; calls[n] = $4; bad += $5 }
  END {
    # A trend, not the spread: RSS moves with how many instances are alive (each JavaScript
    # or Python one holds tens of MiB, and they are replaced every max_uses calls), so rows
    # differ by more than any tolerance without growing. Levelled off when the least-squares
    # line through the rows after the first chunk (the warm-up) rises less than TOLERANCE
    # percent of their mean (or SLACK_MIB, whichever is more) from first to last.
    m = 0; sx = sy = sxx = sxy = 0; lo = hi = rss[2]
    for (i = 2; i <= n; i++) {
      m++; sx += i; sy += rss[i]; sxx += i * i; sxy += i * rss[i]
      if (rss[i] < lo) lo = rss[i]; if (rss[i] > hi) hi = rss[i]
    }
    slope = (m > 1) ? (m * sxy - sx * sy) / (m * sxx - sx * sx) : 0
    mean = sy / m; rise = slope * (m - 1); allowed = mean * tol / 100
    if (allowed < slack * 1024) allowed = slack * 1024
    printf "memory: RSS after the first chunk %.1f–%.1f MiB (mean %.1f); fitted trend %+.2f MiB per %d requests, %+.1f MiB over the run: ", lo/1024, hi/1024, mean/1024, slope/1024, chunk, rise/1024
    if (rise <= allowed) print "LEVELLED OFF"
    else printf "STILL GROWING (more than %s %% or %s MiB)\n", tol, slack
    full = 0; for (i = 2; i <= n; i++) full += calls[i]
    printf "chain: every guard'"'"'s on-request calls = the requests sent in %d of %d chunks%s; %d answers not 2xx\n",
      full, n - 1, (full < n - 1 ? " (a failed call stops the chain: see fails)" : ""), bad
    printf "go GC: %d Go calls failed for memory: %s\n", gomem[n], (gomem[n] == 0 ? "VERIFIED" : "FAILED")
  }' "$rows"
# What the Go instances served, and every failure by plugin and kind.
go_calls=$(metric weir_plugin_hook_duration_seconds_count plugin=go)
go_created=$(metric weir_plugin_instances_created_total plugin=go)
echo "go: $go_calls hook calls on $go_created instances ($((go_calls / (go_created > 0 ? go_created : 1))) each on average; max_uses $GO_MAX_USES)"
awk '$1 ~ /^weir_plugin_failures_total\{/ && $NF > 0 { print "failed: " $1 " " $NF }' "$tmp/metrics"
echo "weir log: $(grep -c . "$tmp/weir.log" || true) lines at warn or above"
sed 's/\x1b\[[0-9;]*m//g' "$tmp/weir.log" | grep -m5 'WARN\|ERROR' | cut -c1-300 || true
echo "guards (sha256): $(for lang in $LANGS; do printf '%s %s  ' "$lang" "$(sha256sum "$GUARDS/$lang/guard.wasm" | cut -c1-12)"; done)"
echo "weir: $WEIR, worker_threads ${WORKERS:-default (one per core)}; h2load $PROTO -c$CONNS, $CHUNK requests a chunk; go max_uses $GO_MAX_USES, memory_limit_mb $GO_MEMORY_MB"
