#!/usr/bin/env bash
# The one test command (README): unit, integration and golden tests on real PostgreSQL.
# Each integration test creates its own database and drops it afterwards.
# Needs PostgreSQL on 127.0.0.1:5432 (override with SKEWLESS_TEST_ADMIN_URL).
# With STREAMFLOW_SEEDS pointing at the course data, the real-data tests run too.
set -euo pipefail
cd "$(dirname "$0")/.."
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# The plugins (example ones and the deliberately broken ones the tests load), built for
# wasm32-wasip2; the example plugins are also unit-tested natively. CARGO_TARGET_DIR is
# for the main crate only: the plugin workspaces keep their own target dirs.
scripts/build-plugins.sh
(cd plugins && env -u CARGO_TARGET_DIR cargo test --release --locked 2>&1 | tee -a "$log")
cargo build --release --locked
# -a: the plugins' "test result:" lines are already in the log and count too.
cargo test --release --locked "$@" 2>&1 | tee -a "$log"
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, i }' "$log"
