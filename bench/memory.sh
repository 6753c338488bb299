#!/usr/bin/env bash
# weir's resident memory at rest: started, ready, no request served, then left for a few
# seconds; VmRSS (and its anonymous and file-backed parts) from /proc/PID/status. Measured
# with no plugins, with the four bundled plugins of issue 26 (headers, rate-limit, rewrite,
# jwt-auth), and with the *guard* filter of each language alone; each configuration started
# twice, the first start compiling (an empty cache folder) and the second loading from the
# compiled-plugin cache, which is what a restart does. Needs a release weir
# (`cargo build --release -p weir-host`), `cargo xtask plugins`, and for the languages
# `cargo xtask examples`.
#
# Usage: bench/memory.sh   (env: WEIR, WEIRS="label=path ..." to compare builds, SETTLE=3)
set -euo pipefail
cd "$(dirname "$0")/.."

WEIR=${WEIR:-target/release/weir}
WEIRS=${WEIRS:-weir=$WEIR}
PLUGINS=${PLUGINS:-target/plugins}
SETTLE=${SETTLE:-3}

. bench/common.sh

for p in headers rate-limit rewrite jwt-auth; do
  [ -f "$PLUGINS/$p.wasm" ] || { echo "missing $PLUGINS/$p.wasm: cargo xtask plugins" >&2; exit 1; }
done

tmp=$(mktemp -d)
cleanup() { kill "${weir_pid:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

# A folder per configuration: weir.toml, and plugins/ with each plugin's settings.
setup() {
  local dir=$tmp/$1
  mkdir -p "$dir/plugins"
  cat > "$dir/weir.toml" <<CONF
[[listeners]]
address = "127.0.0.1:0"
[server]
worker_threads = 1
[plugins]
cache_dir = "$dir/cache"
[[clusters]]
name = "origin"
endpoints = ["127.0.0.1:9"]
[[routes]]
name = "all"
cluster = "origin"
CONF
  echo "$dir"
}

# Starts weir on $2's config, waits until it listens, lets it settle, prints
# "VmRSS RssAnon RssFile" in KiB, and stops it. $1 is the weir binary.
rss_at_rest() {
  "$1" --config "$2/weir.toml" --log-format json 2>"$2/log" & weir_pid=$!
  for _ in $(seq 600); do
    grep -q '"listening"\|listening on' "$2/log" 2>/dev/null && break
    kill -0 "$weir_pid" 2>/dev/null || { cat "$2/log" >&2; echo "weir exited" >&2; exit 1; }
    sleep 0.1
  done
  sleep "$SETTLE"
  awk '/^VmRSS/ {r=$2} /^RssAnon/ {a=$2} /^RssFile/ {f=$2} END {print r, a, f}' "/proc/$weir_pid/status"
  kill "$weir_pid"; wait "$weir_pid" 2>/dev/null || true; weir_pid=
}

none=$(setup none)
four=$(setup four)
for p in headers rate-limit rewrite jwt-auth; do cp "$PLUGINS/$p.wasm" "$four/plugins/"; done
write_plugin_settings "$four/plugins"
rm -f "$four/plugins/key-auth.toml"
configs="none four"
for lang in rust c zig go python js js-quickjs ts; do
  wasm=examples/filters/$lang/guard.wasm
  [ -f "$wasm" ] || continue
  dir=$(setup "guard-$lang")
  cp "$wasm" "$dir/plugins/guard.wasm"
  [ -f "examples/filters/$lang/guard.toml" ] && cp "examples/filters/$lang/guard.toml" "$dir/plugins/"
  configs="$configs guard-$lang"
done

printf '%-12s %-12s %-9s %12s %12s %12s\n' build config start "VmRSS MiB" "anon MiB" "file MiB"
for build in $WEIRS; do
  label=${build%%=*}
  binary=${build#*=}
  [ -x "$binary" ] || { echo "missing $binary: cargo build --release -p weir-host" >&2; exit 1; }
  for config in $configs; do
    rm -rf "$tmp/$config/cache"
    for start in compiling cached; do
      read -r rss anon file < <(rss_at_rest "$binary" "$tmp/$config")
      printf '%-12s %-12s %-9s %12.1f %12.1f %12.1f\n' "$label" "$config" "$start" \
        "$(bc -l <<<"$rss/1024")" "$(bc -l <<<"$anon/1024")" "$(bc -l <<<"$file/1024")"
    done
  done
done
