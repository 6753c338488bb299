#!/bin/sh
# Builds {{name}}.wasm: Go (GOOS=wasip1) → a core module → a weir plugin component. Needs weir
# ($WEIR) and Go 1.25 or later ($GO). Works offline: the bindings' runtime package comes
# with them.
set -eu
cd "$(dirname "$0")"
WEIR=${WEIR:-weir}
GO=${GO:-go}
# The bindings are the module's root: go.mod, wit_exports.go (package main), weir_plugin_*/
# and pkg/. The filter is the package export_weir_plugin_http_filter.
"$WEIR" plugin bindgen --lang go . >/dev/null
# The bindings' runtime reaches into the Go runtime (runtime.sbrk), which the linker must
# be told to allow.
GOOS=wasip1 GOARCH=wasm GOFLAGS=-mod=mod GOPROXY=off \
    $GO build -buildmode=c-shared -ldflags=-checklinkname=0 -o {{name}}.core.wasm .
"$WEIR" plugin componentize {{name}}.core.wasm -o {{name}}.wasm
