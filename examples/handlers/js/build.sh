#!/bin/sh
# Builds profile.wasm with componentize-js 0.23 through jco 1.34
# (`npm install -g @bytecodealliance/jco@1.34.0 @bytecodealliance/componentize-js@0.23.0`).
# wit/ is wasi:http at the version componentize-js's engine implements (see wit/world.wit).
set -eu
cd "$(dirname "$0")"
${JCO:-jco} componentize profile.js --wit wit --world-name handler -o profile.wasm
