#!/bin/sh
# Builds guard.wasm: the contract's types from `jco guest-types`, tsc, then componentize-js.
# Needs jco 1.34, componentize-js 0.23 and TypeScript 5.9
# (`npm install -g @bytecodealliance/jco@1.34.0 @bytecodealliance/componentize-js@0.23.0 typescript@5.9.3`).
set -eu
cd "$(dirname "$0")"
${JCO:-jco} guest-types ../../../wit --world-name filter -o types >/dev/null
${TSC:-tsc} -p .
${JCO:-jco} componentize dist/guard.js --wit ../../../wit --world-name filter -d http -d fetch-event \
    -o guard.wasm
