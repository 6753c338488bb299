#!/bin/sh
# Builds {{name}}.wasm with componentize-js: its own command from PATH if there is one, else
# the version package.json pins, installed by npm into node_modules/. Not `jco componentize`:
# jco 1.34 brings its own componentize-js 0.22, whose components cost 5x more per call.
# `-d http -d fetch-event`: a filter uses no wasi:http, so the component must not import it.
set -eu
cd "$(dirname "$0")"
if command -v componentize-js >/dev/null; then
    componentize-js filter.js --wit wit --world-name filter -d http -d fetch-event -o {{name}}.wasm
else
    [ -d node_modules ] || npm install --no-audit --no-fund
    npm run --silent build
fi
echo "built {{name}}.wasm"
