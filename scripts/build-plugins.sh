#!/usr/bin/env bash
# Builds the WebAssembly plugins the tests and the feature repo use:
#   plugins/           the example plugins  -> plugins/target/wasm32-wasip2/release/<name>.wasm
#   tests/hostile_plugin  test plugins, one per cargo feature -> tests/hostile_plugin/out/
#                         (hostile_<mode>.wasm: broken on purpose; tenure_v2, tenure_mismatch)
# Each is a workspace of its own with its own target dir (CARGO_TARGET_DIR is the main crate's).
set -euo pipefail
cd "$(dirname "$0")/.."
(cd plugins && env -u CARGO_TARGET_DIR cargo build --release --locked --target wasm32-wasip2)
cd tests/hostile_plugin
mkdir -p out
for mode in spin alloc panic rows types big describe_spin; do
  env -u CARGO_TARGET_DIR cargo build --quiet --release --target wasm32-wasip2 --features "$mode"
  cp target/wasm32-wasip2/release/hostile_plugin.wasm "out/hostile_$mode.wasm"
done
for variant in tenure_v2 tenure_mismatch; do
  env -u CARGO_TARGET_DIR cargo build --quiet --release --target wasm32-wasip2 --features "$variant"
  cp target/wasm32-wasip2/release/hostile_plugin.wasm "out/$variant.wasm"
done
