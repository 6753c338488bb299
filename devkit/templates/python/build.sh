#!/bin/sh
# Builds {{name}}.wasm. Needs componentize-py: `pip install componentize-py==0.25.0`.
set -eu
cd "$(dirname "$0")"
componentize-py -d wit -w filter componentize app -o {{name}}.wasm
echo "built {{name}}.wasm"
