#!/bin/sh
# Builds {{name}}.wasm: the contract's types from `jco guest-types`, `tsc` to JavaScript, then
# componentize-js. Uses jco, tsc and componentize-js from PATH if there are all three, else the
# versions package.json pins, installed by npm into node_modules/. componentize-js runs as its
# own command, not as `jco componentize`: jco 1.34 brings its own componentize-js 0.22, whose
# components cost 5x more per call.
# `-d http -d fetch-event`: a filter uses no wasi:http, so the component must not import it.
set -eu
cd "$(dirname "$0")"
if command -v jco >/dev/null && command -v tsc >/dev/null && command -v componentize-js >/dev/null; then
    jco guest-types wit --world-name filter -o types >/dev/null
    tsc -p .
    componentize-js dist/filter.js --wit wit --world-name filter -d http -d fetch-event -o {{name}}.wasm
else
    [ -d node_modules ] || npm install --no-audit --no-fund
    npm run --silent build
fi
echo "built {{name}}.wasm"
