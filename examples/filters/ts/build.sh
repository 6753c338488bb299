#!/bin/sh
# Builds guard.wasm: the contract's types from `jco guest-types`, tsc, then componentize-js.
# Needs jco 1.34 (for the types only), componentize-js 0.23 and TypeScript 5.9
# (`npm install -g @bytecodealliance/jco@1.34.0 @bytecodealliance/componentize-js@0.23.0 typescript@5.9.3`).
# componentize-js runs as its own command, not as `jco componentize`: jco 1.34 brings its own
# componentize-js 0.22, whose components cost 5x more per call (docs/plugins/javascript.md).
set -eu
cd "$(dirname "$0")"
${JCO:-jco} guest-types ../../../wit --world-name filter -o types >/dev/null
${TSC:-tsc} -p .
${COMPONENTIZE_JS:-componentize-js} dist/guard.js --wit ../../../wit --world-name filter \
    -d http -d fetch-event -o guard.wasm
