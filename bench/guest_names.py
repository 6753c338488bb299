#!/usr/bin/env python3
"""Names the plugin code in a callgrind profile: the self cost a call of each guest function.

callgrind shows the machine code wasmtime compiled from a plugin as `???:0xADDR`. weir writes
a perf map of it (`/tmp/perf-PID.map`) when `WEIR_PERF_MAP=1`; build the plugin with its
symbols (`CARGO_PROFILE_PLUGIN_STRIP=false cargo build --profile plugin --target
wasm32-wasip2 -p weir-plugin-NAME --target-dir DIR`) for names rather than function numbers.
Two runs of the plugin bench's counting mode, N1 and N2 calls, each under callgrind with the
perf map on, give the cost a call as the difference over N2 - N1 (loading left out):

  WEIR_PERF_MAP=1 WEIR_PLUGINS_DIR=DIR WEIR_COUNT_CALLS=2000 valgrind --tool=callgrind \\
      --callgrind-out-file=cg.2000 target/release/deps/plugins-HASH        # and 42000
  bench/guest_names.py cg.2000 /tmp/perf-PID1.map cg.42000 /tmp/perf-PID2.map 40000

(each run compiles its code at other addresses, so each profile needs its own run's map).
"""
import bisect
import re
import signal
import subprocess
import sys


def self_costs(profile):
    """Self cost by function, from callgrind_annotate."""
    out = subprocess.run(
        ["callgrind_annotate", "--auto=no", "--threshold=100", profile],
        capture_output=True, text=True, check=True).stdout
    costs = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(\S.*)$", line)
        if m and "PROGRAM TOTALS" not in line:
            name = m.group(2).strip()
            costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", ""))
    return costs


def guest(profile, perf_map):
    """The guest functions' self costs, named from the perf map."""
    spans = sorted(
        (int(a, 16), int(s, 16), n.strip())
        for a, s, n in (line.split(" ", 2) for line in open(perf_map)))
    starts = [start for start, _, _ in spans]
    named = {}
    for name, cost in self_costs(profile).items():
        m = re.match(r"\?\?\?:0x([0-9a-f]+)", name)
        if not m:
            continue
        address = int(m.group(1), 16)
        i = bisect.bisect_right(starts, address) - 1
        if i >= 0 and address < spans[i][0] + spans[i][1]:
            name = spans[i][2]
        named[name] = named.get(name, 0) + cost
    return named


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    first = guest(sys.argv[1], sys.argv[2])
    second = guest(sys.argv[3], sys.argv[4])
    calls = float(sys.argv[5])
    rows = sorted(((second.get(k, 0) - first.get(k, 0)) / calls, k) for k in set(first) | set(second))
    print(f"guest, a call: {sum(cost for cost, _ in rows):.0f} instructions")
    for cost, name in reversed(rows):
        if cost >= 5:
            print(f"{cost:8.0f}  {name}")


if __name__ == "__main__":
    main()
