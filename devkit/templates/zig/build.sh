#!/bin/sh
# Builds {{name}}.wasm: Zig (over the C bindings) → a wasm32-wasi core module → a weir plugin
# component. Needs weir ($WEIR) and Zig 0.17 ($ZIG).
set -eu
cd "$(dirname "$0")"
WEIR=${WEIR:-weir}
ZIG=${ZIG:-zig}
"$WEIR" plugin bindgen --lang c bindings >/dev/null
# Zig 0.17 has no @cImport: the header is translated once, here.
$ZIG translate-c -target wasm32-wasi -lc bindings/filter.h > bindings/filter.zig
$ZIG build-exe filter.zig bindings/filter.c bindings/filter_component_type.o \
    -target wasm32-wasi -mexec-model=reactor -fno-entry -lc -O ReleaseSmall \
    -femit-bin={{name}}.core.wasm
"$WEIR" plugin componentize {{name}}.core.wasm -o {{name}}.wasm
