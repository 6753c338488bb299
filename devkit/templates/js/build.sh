#!/bin/sh
# Builds {{name}}.wasm with componentize-js: jco from PATH if there is one, else the versions
# package.json pins, installed by npm into node_modules/.
# `-d http -d fetch-event`: a filter uses no wasi:http, so the component must not import it.
set -eu
cd "$(dirname "$0")"
if command -v jco >/dev/null; then
    jco componentize filter.js --wit wit --world-name filter -d http -d fetch-event -o {{name}}.wasm
else
    [ -d node_modules ] || npm install --no-audit --no-fund
    npm run --silent build
fi
echo "built {{name}}.wasm"
