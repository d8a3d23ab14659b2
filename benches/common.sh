# Shared by the benchmark scripts: a scratch database loaded with generated StreamFlow
# data (N users x 2 months), applied and, on request, materialized.
# Usage: source benches/common.sh; bench_db NAME USERS [materialize]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/skewless/target}"
B="$CARGO_TARGET_DIR/release/skewless"
ADMIN_URL="${SKEWLESS_BENCH_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
WORK="${SKEWLESS_BENCH_DIR:-/tmp/skewless-bench}"
mkdir -p "$WORK"

build() { (cd "$ROOT" && cargo build --release --quiet); }

# bench_db NAME USERS [materialize]: creates (or reuses) database NAME with USERS users.
bench_db() {
  local name="$1" users="$2" mat="${3:-}"
  export DATABASE_URL="${ADMIN_URL%/*}/$name"
  if psql "$ADMIN_URL" -Atqc "SELECT 1 FROM pg_database WHERE datname = '$name'" | grep -q 1; then
    echo "reusing database $name" >&2
  else
    psql "$ADMIN_URL" -qc "CREATE DATABASE \"$name\""
    local seeds="$WORK/seeds-$users"
    [ -d "$seeds/month_001" ] || "$B" generate --users "$users" --months 2 --out "$seeds" >/dev/null
    "$B" --repo "$ROOT/feature_repo" ingest --seeds "$seeds/month_000" --as-of 2024-01-31 >/dev/null
    "$B" --repo "$ROOT/feature_repo" ingest --seeds "$seeds/month_001" --as-of 2024-02-29 >/dev/null
    "$B" --repo "$ROOT/feature_repo" apply >/dev/null
    psql "$DATABASE_URL" -qc "VACUUM ANALYZE"
  fi
  if [ -n "$mat" ]; then
    "$B" --repo "$ROOT/feature_repo" materialize 2024-01-01 2024-03-01 >/dev/null
  fi
}

machine() {
  echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), $(psql "$ADMIN_URL" -Atc 'select version()' | cut -d, -f1)"
}
