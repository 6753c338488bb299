#!/bin/sh
# Builds guard.wasm with componentize-js 0.23 through jco 1.34
# (`npm install -g @bytecodealliance/jco@1.34.0 @bytecodealliance/componentize-js@0.23.0`).
# `-d http -d fetch-event`: a filter uses no wasi:http, so the component must not import it.
set -eu
cd "$(dirname "$0")"
${JCO:-jco} componentize guard.js --wit ../../../wit --world-name filter -d http -d fetch-event \
    -o guard.wasm
