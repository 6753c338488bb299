#!/bin/sh
# Builds {{name}}.wasm with componentize-qjs, on QuickJS: its own command from PATH if there
# is one, else the version package.json pins, installed by npm into node_modules/. `--sync`:
# weir runs components without the component model's async ABI.
set -eu
cd "$(dirname "$0")"
if command -v componentize-qjs >/dev/null; then
    componentize-qjs --wit wit --world filter --js filter.js --sync -o {{name}}.wasm
else
    [ -d node_modules ] || npm install --no-audit --no-fund
    npm run --silent build
fi
echo "built {{name}}.wasm"
