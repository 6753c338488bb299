#!/usr/bin/env bash
# Hot-reload latency: the time from a plugin file landing in weir's plugin folder to the new
# behaviour serving, and from its deletion to the old behaviour.
#
#   cargo build --release -p weir-host && cargo xtask plugins && bench/reload-latency.sh
#
# weir runs with an empty plugin folder and a fresh compile cache in a temporary folder; its
# only cluster points at a closed port, so without a plugin every request is 502. Each round
# copies key-auth.wasm (+ key-auth.toml) in and polls with curl until a request without a key
# gets key-auth's 401, then deletes it and polls until 502 again. Round 1 compiles the plugin;
# later rounds load the same bytes from the compile cache. Resolution: one curl (~5 ms).
# Environment: WEIR (binary), PLUGINS (folder with key-auth.wasm), ROUNDS (default 10).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
weir=${WEIR:-$root/target/release/weir}
plugins=${PLUGINS:-$root/target/plugins}
rounds=${ROUNDS:-10}
. "$root/bench/common.sh"
[ -x "$weir" ] || { echo "no $weir: cargo build --release -p weir-host" >&2; exit 1; }
[ -f "$plugins/key-auth.wasm" ] || { echo "no $plugins/key-auth.wasm: cargo xtask plugins" >&2; exit 1; }

work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/plugins"
cat > "$work/weir.toml" <<TOML
[[listeners]]
address = "127.0.0.1:0"
[plugins]
cache_dir = "$work/cache"
[[clusters]]
name = "closed"
endpoints = ["127.0.0.1:9"]
connect_timeout = "200ms"
[[routes]]
name = "all"
cluster = "closed"
TOML
write_key_auth_settings "$work"

"$weir" --config "$work/weir.toml" --log-format json 2> "$work/log" &
pid=$!
for _ in $(seq 1 200); do
    port=$(grep -o '"kind":"proxy","address":"127.0.0.1:[0-9]*"' "$work/log" | grep -o '[0-9]*"$' | tr -d '"' || true)
    [ -n "$port" ] && break
    sleep 0.05
done
[ -n "$port" ] || { echo "weir did not start:" >&2; cat "$work/log" >&2; exit 1; }
url="http://127.0.0.1:$port/"

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
wait_for() { # status → milliseconds until a request answers it
    local start; start=$(now_ms)
    until [ "$(curl -s -o /dev/null -w '%{http_code}' "$url")" = "$1" ]; do
        if [ $(( $(now_ms) - start )) -gt 20000 ]; then echo "timeout waiting for $1" >&2; exit 1; fi
    done
    echo $(( $(now_ms) - start ))
}

wait_for 502 > /dev/null
printf '%-6s %-14s %-16s %s\n' round "add → 401 ms" "delete → 502 ms" "compile (weir's log)"
adds=(); deletes=()
for round in $(seq 1 "$rounds"); do
    cp "$work/key-auth.toml" "$work/plugins/key-auth.toml"
    cp "$plugins/key-auth.wasm" "$work/plugins/key-auth.wasm"
    add=$(wait_for 401)
    rm "$work/plugins/key-auth.wasm"
    del=$(wait_for 502)
    compile=$(grep '"plugin loaded"' "$work/log" | tail -1 | grep -o '"compile_ms":[0-9]*,"from_cache":[a-z]*' || true)
    printf '%-6s %-14s %-16s %s\n' "$round" "$add" "$del" "$compile"
    adds+=("$add"); deletes+=("$del")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo "median add → 401: $(median "${adds[@]}") ms; median delete → 502: $(median "${deletes[@]}") ms (debounce is 100 ms)"
