#!/bin/sh
# Builds guard.wasm with componentize-qjs 0.4.5 (`npm install -g componentize-qjs@0.4.5`), on
# QuickJS. `--sync`: weir's engine runs components without the component model's async ABI.
set -eu
cd "$(dirname "$0")"
componentize-qjs --wit ../../../wit --world filter --js guard.js --sync -o guard.wasm
