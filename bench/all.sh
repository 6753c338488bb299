#!/usr/bin/env bash
# Every headline figure of README's language table and of issues 21 and 26, re-measured in one
# run, one benchmark after another (never two at once: each pins or counts its own process):
#   run        — bench/run.sh: nginx, HAProxy, hyper's floor, weir, weir+2, weir+3; 1 KiB and
#                64 KiB (CPU per request, requests/s, p50, p99);
#   callgrind  — instructions a request: weir with metrics off, on, on with the JSON access
#                log; the weir+3 route; hyper's floor (bench/callgrind.sh);
#   observe    — observability's CPU per request, user and system time apart, beside nginx's
#                own log (bench/observe.sh);
#   memory     — resident memory at rest: no plugins, the four bundled ones, each language's
#                guard alone (bench/memory.sh);
#   handlers   — the Python and JavaScript profile handlers, fresh and reused (bench/handlers.sh);
#   criterion  — the plugin crossing (`hook/on_request/reused_instance`) and each language's
#                guard, reused and fresh (`cargo bench -p weir-host --bench plugins`).
# Each benchmark's whole output goes to $OUT/<name>.log; $OUT/summary.txt gathers the tables
# each one ends with, with the command that made them and how long it took.
#
# Needs what each script needs, built beforehand (none is built here, so a build never shares
# the cores with a measurement):
#   cargo xtask pgo && bench/floor-pgo.sh    # target/pgo/weir, target/pgo-floor/hyper-floor
#   cargo xtask plugins && cargo xtask examples
#   cargo bench -p weir-host --bench plugins --no-run
# About 18 minutes here.
# Usage: bench/all.sh   (env: WEIR=target/pgo/weir FLOOR=target/pgo-floor/hyper-floor,
# OUT=target/bench-all/<time>, ONLY="run callgrind ..." a subset in this order)
set -euo pipefail
cd "$(dirname "$0")/.."

# -m: a build not made yet is reported by the step that needs it, not here.
WEIR=$(realpath -m "${WEIR:-target/pgo/weir}")
FLOOR=$(realpath -m "${FLOOR:-target/pgo-floor/hyper-floor}")
OUT=$(realpath -m "${OUT:-target/bench-all/$(date -u +%Y%m%d-%H%M)}")
ONLY=${ONLY:-run callgrind observe memory handlers criterion}
export WEIR FLOOR
mkdir -p "$OUT"
summary=$OUT/summary.txt
{
  changed=$(git status --porcelain -- host plugins plugin-sdk wit bench | wc -l)
  echo "bench/all.sh, $(date -u '+%Y-%m-%d %H:%M UTC'), $(git rev-parse --short HEAD)$([ "$changed" = 0 ] || echo " ($changed files of host, plugins or bench changed since)")"
  echo "WEIR=$WEIR"
  echo "FLOOR=$FLOOR"
  echo "$(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$summary"

# step NAME LINES COMMAND...: runs COMMAND into $OUT/NAME.log, then copies its last LINES
# lines (where each script prints its table) into the summary. Each script gets its own OUT
# (callgrind.sh keeps its profile there) and no TARGETS of the caller's.
failed=0
step() {
  local name=$1 lines=$2
  shift 2
  local started=$SECONDS
  echo "== $name:$(printf ' %q' "$@")" | tee -a "$summary"
  if ! env -u TARGETS OUT="$OUT/$name" "$@" > "$OUT/$name.log" 2>&1; then
    echo "   failed; see $OUT/$name.log" | tee -a "$summary"
    tail -5 "$OUT/$name.log" >> "$summary"
    failed=$((failed + 1))
    return 0
  fi
  tail -n "$lines" "$OUT/$name.log" >> "$summary"
  echo "   ($((SECONDS - started)) s, load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$summary"
}

. bench/common.sh
wants() { listed "$ONLY" "$1"; }

if wants run; then
  step run 30 bench/run.sh
fi
if wants callgrind; then
  step callgrind-off 2 env OBSERVE=off bench/callgrind.sh "$WEIR" 4000
  step callgrind-metrics 2 env OBSERVE=metrics bench/callgrind.sh "$WEIR" 4000
  step callgrind-log 2 env OBSERVE=all bench/callgrind.sh "$WEIR" 4000
  step callgrind-three 2 env ROUTE=three bench/callgrind.sh "$WEIR" 2000
  step callgrind-floor 2 bench/callgrind.sh "$FLOOR" 4000
fi
if wants observe; then
  step observe 12 env TARGETS="weir-off weir weir-log nginx-off nginx-log floor" bench/observe.sh
fi
if wants memory; then
  step memory 40 bench/memory.sh
fi
if wants handlers; then
  step handlers 16 bench/handlers.sh
fi
if wants criterion; then
  # Criterion prints each benchmark's three lines; keep only the `time:` ones with their names.
  step criterion 0 cargo bench -p weir-host --bench plugins -- 'hook/on_request/|guard/'
  grep -B1 '^ *time:' "$OUT/criterion.log" | grep -v '^--$' >> "$summary" || true
fi
echo "summary: $summary"
[ "$failed" = 0 ] || { echo "$failed of the steps failed" >&2; exit 1; }
