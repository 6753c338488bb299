#!/usr/bin/env bash
# hyper's floor (bench/floor) built profile-guided, as `cargo xtask pgo` builds weir, so the
# two are compared like for like (BENCHMARKS.md, sessions 32 and 42): an instrumented `dist`
# build, trained by one bench/run.sh pass of the floor alone, its counts merged with the
# `llvm-profdata` of rustc's LLVM, then `dist` rebuilt with them. Everything is built in its
# own target folder (TARGET_DIR, default target/floor-pgo), removed first: cargo does not see
# a new profile at the same path, so an earlier build would be reused. The result is
# target/pgo-floor/hyper-floor (the name bench/callgrind.sh recognises):
#   WEIR=target/pgo/weir FLOOR=target/pgo-floor/hyper-floor TARGETS="nginx floor weir weir+3" bench/run.sh
#
# Needs `rustup component add llvm-tools` (or a system llvm-profdata of rustc's LLVM) and what
# bench/run.sh needs. About a minute and a half here.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET_DIR=${TARGET_DIR:-target/floor-pgo}
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
MAJOR=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
PROFDATA=
for candidate in "$(rustc --print sysroot)/lib/rustlib/$TRIPLE/bin/llvm-profdata" \
  "/usr/lib/llvm-$MAJOR/bin/llvm-profdata" "llvm-profdata-$MAJOR"; do
  if command -v "$candidate" >/dev/null; then PROFDATA=$candidate; break; fi
done
[ -n "$PROFDATA" ] || { echo "no llvm-profdata of LLVM $MAJOR: rustup component add llvm-tools" >&2; exit 1; }

rm -rf "$TARGET_DIR"
mkdir -p "$TARGET_DIR/profile"
PROFILE_DIR=$(realpath "$TARGET_DIR/profile")
build() {
  CARGO_TARGET_DIR=$TARGET_DIR CARGO_ENCODED_RUSTFLAGS=$1 \
    cargo build -q --profile dist -p weir-bench-floor --target "$TRIPLE"
}
built=$TARGET_DIR/$TRIPLE/dist/hyper-floor

build "-Cprofile-generate=$PROFILE_DIR"
# The floor exits through exit(3) on SIGTERM, which writes its counts.
FLOOR=$built TARGETS=floor ROUNDS=1 DURATION=5s BIG=1 bench/run.sh >/dev/null
"$PROFDATA" merge -o "$PROFILE_DIR/merged.profdata" "$PROFILE_DIR"/*.profraw
rm -rf "${TARGET_DIR:?}/$TRIPLE/dist"
build "-Cprofile-use=$PROFILE_DIR/merged.profdata"
mkdir -p target/pgo-floor
cp "$built" target/pgo-floor/hyper-floor
echo "built target/pgo-floor/hyper-floor"
