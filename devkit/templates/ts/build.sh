#!/bin/sh
# Builds {{name}}.wasm: the contract's types from `jco guest-types`, `tsc` to JavaScript, then
# componentize-js. Uses jco and tsc from PATH if there are both, else the versions
# package.json pins, installed by npm into node_modules/.
# `-d http -d fetch-event`: a filter uses no wasi:http, so the component must not import it.
set -eu
cd "$(dirname "$0")"
if command -v jco >/dev/null && command -v tsc >/dev/null; then
    jco guest-types wit --world-name filter -o types >/dev/null
    tsc -p .
    jco componentize dist/filter.js --wit wit --world-name filter -d http -d fetch-event -o {{name}}.wasm
else
    [ -d node_modules ] || npm install --no-audit --no-fund
    npm run --silent build
fi
echo "built {{name}}.wasm"
