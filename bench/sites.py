#!/usr/bin/env python3
"""Per-request figures from a callgrind profile that callgrind_annotate does not give.

The profile must be made with instruction-level positions, and for `code` with the cache
simulation: `CALLGRIND_ARGS="--dump-instr=yes --cache-sim=yes" OUT=DIR bench/callgrind.sh BIN N`.

  bench/sites.py calls PROFILE N CALLEE [BIN]
      Every call site of a function whose name contains CALLEE (memcpy, say): calls a request,
      instructions a call, with the cache simulation the first-level write misses a call,
      the calling function, and with BIN the source line (addr2line). memcpy's cost a call
      tells a move's size: glibc's AVX2 memcpy, the one valgrind runs, copies up to 256
      bytes without a loop (29 instructions), more in one (52-64).
  bench/sites.py code PROFILE N [TOP]
      Functions by first-level instruction-cache misses a request, with the 64-byte lines of
      code each runs at least once a request and its instructions: what the request path's
      code footprint is made of.

  bench/sites.py lines PROFILE N BIN [FUNCTION] [TOP]
      The instructions the profiled program's own binary ran (not libc's, nor plugins'
      compiled code) in functions whose name contains FUNCTION (all, without it), each
      charged to the innermost line of weir's own source its code was inlined from
      (`addr2line -i`): where the standard library's and the dependencies' code that the
      compiler folded into weir's functions runs from. `moves` as FUNCTION's suffix
      (`CountedFuture:moves`) counts only the code inlined from `core::ptr` and `core::mem`:
      the copies of values an optimised profile shows as no call at all (session 44 found a
      400-byte `mem::swap` around every plugin call this way).

N is the request count the profile covers (bench/callgrind.sh's N).
"""
import collections
import os
import re
import signal
import subprocess
import sys


# The repository's root, as the binary's debug info names weir's own sources.
ROOT = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")) + "/"


def positions(path, objects=None):
    """Yields (function, address, costs, call, object) for each cost line of a callgrind
    file written with `--dump-instr=yes` (positions "instr line"): `call` is `(callee,
    calls)` on a call's line, which carries the callee's inclusive cost, else None; `object`
    is the ELF path the address is relative to (callgrind writes each address relative to its
    own object, so addresses of two objects must not be mixed). With `objects`, a set, only
    the lines of the object files in it."""
    names = {}
    object_names = {}
    function = callee = None
    obj = None
    last = 0
    calls = None

    def name(line, key, table):
        m = re.match(key + r"=\((\d+)\)(?: (.*))?", line.strip())
        if m is None:
            return line.split("=", 1)[1].strip()
        if m.group(2):
            table[m.group(1)] = m.group(2)
        return table.get(m.group(1), m.group(1))

    with open(path) as profile:
        for line in profile:
            if line.startswith("ob="):
                obj = name(line, "ob", object_names)
            elif line.startswith("cob="):
                # The callee's object names an entry too.
                name(line, "cob", object_names)
            elif objects is not None and obj not in objects:
                continue
            elif line.startswith("fn="):
                function = name(line, "fn", names)
            elif line.startswith("cfn="):
                callee = name(line, "cfn", names)
            elif line.startswith("calls="):
                calls = int(line.split("=", 1)[1].split()[0])
            elif line[:1] in "0123456789+-*":
                fields = line.split()
                at = fields[0]
                if at.startswith("0x"):
                    last = int(at, 16)
                elif at[0] == "+":
                    last += int(at[1:])
                elif at[0] == "-":
                    last -= int(at[1:])
                costs = [int(c) for c in fields[2:]]
                if calls is not None:
                    yield function, last, costs, (callee, calls), obj
                    calls = None
                else:
                    yield function, last, costs, None, obj


def event(path, name):
    """A function reading event `name` (Ir, I1mr, D1mw...) from a cost line's costs, by the
    profile's `events:` header; 0 when the profile has no such event (no cache simulation)
    or the line leaves it out (callgrind drops trailing zeros)."""
    with open(path) as profile:
        for line in profile:
            if line.startswith("events:"):
                names = line.split()[1:]
                break
        else:
            names = ["Ir"]
    if name not in names:
        return lambda costs: 0
    at = names.index(name)
    return lambda costs: costs[at] if len(costs) > at else 0


def call_sites(path, n, pattern, binary):
    count = collections.Counter()
    cost = collections.Counter()
    write_misses = collections.Counter()
    d1mw = event(path, "D1mw")
    # Only the program's own call sites are named: another object's addresses are not BIN's.
    program = profiled(path) or set()
    own = set()
    for function, address, costs, call, obj in positions(path):
        if call and pattern in (call[0] or "") and costs:
            count[(function, address)] += call[1]
            cost[(function, address)] += costs[0]
            write_misses[(function, address)] += d1mw(costs)
            if obj in program:
                own.add(address)
    total = sum(count.values())
    print(f"{total / n:.1f} calls a request, {sum(cost.values()) / n:.0f} instructions, "
          f"{sum(write_misses.values()) / n:.0f} D1 write misses")
    shown = [site for site, calls in count.items() if calls >= n / 2]
    frames = inline_frames(binary, sorted({a for _, a in shown} & own)) if binary else {}
    for (function, address), calls in sorted(count.items(), key=lambda kv: -kv[1]):
        if calls < n / 2:
            continue
        # The innermost frame outside the standard library: hyper's or weir's line.
        locations = [loc for _, loc in frames.get(address, [])]
        outside = [loc for loc in locations if "/rustc/" not in loc] or locations
        where = ""
        if outside:
            where = re.sub(r".*/registry/src/[^/]*/", "", outside[0]).removeprefix(ROOT)
        each = cost[(function, address)] / calls
        misses = write_misses[(function, address)] / calls
        print(f"{calls / n:5.2f} {each:5.1f}/call {misses:4.1f} D1mw/call {hex(address)} "
              f"{function[:90]} {where}")


def code(path, n, top):
    lines = collections.defaultdict(set)
    instructions = collections.Counter()
    misses = collections.Counter()
    i1mr = event(path, "I1mr")
    for function, address, costs, call, _ in positions(path):
        if call or not costs:
            continue
        instructions[function] += costs[0]
        misses[function] += i1mr(costs)
        if costs[0] >= n:
            lines[function].add(address >> 6)
    hot = sum(len(v) for v in lines.values())
    print(f"{hot} lines of code run at least once a request ({hot * 64 / 1024:.1f} KiB), "
          f"{sum(misses.values()) / n:.0f} I1 misses a request")
    for function in sorted(misses, key=lambda f: -misses[f])[:top]:
        print(f"{misses[function] / n:7.1f} misses {len(lines[function]):4d} lines "
              f"{instructions[function] / n:7.0f} instructions  {function[:120]}")


def profiled(path):
    """The object files of the program the profile ran (its `cmd:`), by name: the addresses
    `lines` looks up in BIN (which may be a copy of that program, under another path)."""
    program, objects = None, set()
    with open(path) as profile:
        # `cmd:` is in the header, before any object is named.
        for line in profile:
            if program is None:
                if line.startswith("cmd:"):
                    program = os.path.basename(line.split()[1])
                continue
            m = re.match(r"c?ob=\(\d+\) (.*)", line.strip())
            if m and os.path.basename(m.group(1)) == program:
                objects.add(m.group(1))
    return objects if program is not None else None


def inline_frames(binary, addresses):
    """Each address's frames in BIN, innermost first, as (function, file:line), the frames of
    code inlined into it included (`addr2line -i`, one run for all of them). A line whose
    code comes in several blocks is one location (` (discriminator N)` dropped)."""
    out = subprocess.run(
        ["addr2line", "-e", binary, "-a", "-i", "-f", "-C"],
        input="\n".join(hex(a) for a in addresses) + "\n",
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    # `-a` starts each address's frames with the address; each frame is a function line and
    # a file:line line.
    frames = collections.defaultdict(list)
    at, i = None, 0
    while i < len(out):
        if out[i].startswith("0x"):
            at, i = int(out[i], 16), i + 1
        elif at is not None and i + 1 < len(out):
            frames[at].append((out[i], re.sub(r" \(discriminator \d+\)$", "", out[i + 1])))
            i += 2
        else:
            i += 1
    return frames


def weir_lines(path, n, binary, pattern, top):
    moves = pattern.endswith(":moves")
    pattern = pattern.removesuffix(":moves")
    cost = collections.Counter()
    for function, address, costs, call, _ in positions(path, profiled(path)):
        if not call and costs and pattern in (function or ""):
            cost[address] += costs[0]
    addresses = sorted(cost)
    frames = inline_frames(binary, addresses)
    charged = collections.Counter()
    for address in addresses:
        chain = frames.get(address, [])
        if moves and not (chain and re.search(r"core/src/(ptr|mem)/", chain[0][1])):
            continue
        ours = [(f, loc) for f, loc in chain if loc.startswith(ROOT)]
        if ours:
            function, loc = ours[0]
            where = loc.removeprefix(ROOT) + "  " + function[:70]
        elif chain:
            function, loc = chain[-1]
            where = "(not weir's) " + re.sub(r".*/", "", loc) + "  " + function[:70]
        else:
            where = "?"
        charged[where] += cost[address]
    print(f"{sum(charged.values()) / n:.0f} instructions a request")
    for where, c in charged.most_common(top):
        print(f"{c / n:8.1f}  {where}")


def main(argv):
    if len(argv) >= 5 and argv[1] == "calls":
        call_sites(argv[2], int(argv[3]), argv[4], argv[5] if len(argv) > 5 else None)
    elif len(argv) >= 5 and argv[1] == "lines":
        pattern = argv[5] if len(argv) > 5 else ""
        weir_lines(argv[2], int(argv[3]), argv[4], pattern, int(argv[6]) if len(argv) > 6 else 40)
    elif len(argv) >= 4 and argv[1] == "code":
        code(argv[2], int(argv[3]), int(argv[4]) if len(argv) > 4 else 40)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    main(sys.argv)
