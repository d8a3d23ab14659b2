#!/usr/bin/env bash
# The one test command (README): unit, integration and golden tests on real PostgreSQL.
# Each integration test creates its own database and drops it afterwards.
# Needs PostgreSQL on 127.0.0.1:5432 (override with SKEWLESS_TEST_ADMIN_URL).
# With STREAMFLOW_SEEDS pointing at the course data, the real-data tests run too.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
cargo test --release --locked -- "$@"
