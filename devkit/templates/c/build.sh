#!/bin/sh
# Builds {{name}}.wasm: C → a wasm32-wasi core module → a weir plugin component.
# Needs weir ($WEIR) and a C compiler for wasm32-wasi: `zig cc` by default ($ZIG), or set
# CC, e.g. CC="clang --target=wasm32-wasip1 --sysroot=/usr/share/wasi-sysroot".
set -eu
cd "$(dirname "$0")"
WEIR=${WEIR:-weir}
CC=${CC:-"${ZIG:-zig} cc -target wasm32-wasi"}
"$WEIR" plugin bindgen --lang c bindings >/dev/null
# shellcheck disable=SC2086
$CC -mexec-model=reactor -Os -s -o {{name}}.core.wasm \
    filter.c bindings/filter.c bindings/filter_component_type.o
"$WEIR" plugin componentize {{name}}.core.wasm -o {{name}}.wasm
