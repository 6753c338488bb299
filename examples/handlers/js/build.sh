#!/bin/sh
# Builds profile.wasm with componentize-js 0.23's own command
# (`npm install -g @bytecodealliance/componentize-js@0.23.0`). Not `jco componentize`: jco 1.34
# brings its own componentize-js 0.22, which is slower (docs/plugins/javascript.md).
# wit/ is wasi:http at the version componentize-js's engine implements (see wit/world.wit).
set -eu
cd "$(dirname "$0")"
${COMPONENTIZE_JS:-componentize-js} profile.js --wit wit --world-name handler -o profile.wasm
