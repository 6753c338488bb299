#!/bin/sh
# Builds guard.wasm with cargo (`rustup target add wasm32-wasip2`).
set -eu
cd "$(dirname "$0")"
cargo build --profile plugin --target wasm32-wasip2 -p weir-example-guard
cp "${CARGO_TARGET_DIR:-../../../target}/wasm32-wasip2/plugin/guard.wasm" guard.wasm
