#!/bin/sh
# Builds profile.wasm with componentize-py 0.25 (`pip install componentize-py==0.25.0`).
set -eu
cd "$(dirname "$0")"
componentize-py -d ../wit -w handler componentize app -o profile.wasm
