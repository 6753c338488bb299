#!/bin/sh
# Builds guard.wasm with componentize-js 0.23's own command
# (`npm install -g @bytecodealliance/componentize-js@0.23.0`). Not `jco componentize`: jco 1.34
# brings its own componentize-js 0.22, whose components cost 5x more per call
# (docs/plugins/javascript.md).
# `-d http -d fetch-event`: a filter uses no wasi:http, so the component must not import it.
set -eu
cd "$(dirname "$0")"
${COMPONENTIZE_JS:-componentize-js} guard.js --wit ../../../wit --world-name filter \
    -d http -d fetch-event -o guard.wasm
