#!/bin/sh
# Builds {{name}}.wasm with componentize-js (installed by npm into node_modules/).
set -eu
cd "$(dirname "$0")"
[ -d node_modules ] || npm install --no-audit --no-fund
npm run --silent build
echo "built {{name}}.wasm"
