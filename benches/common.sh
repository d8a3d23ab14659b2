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
  reference_sql
}

# PostgreSQL's own speed at the training-set join's kind of work (a hash join on text keys,
# a sort, a DISTINCT ON, 100k rows), with none of skewless's code in it. Sessions run on
# different hardware of the same machine kind, and pgbench -S (primary-key lookups) has
# proved a poor guide to this work (a machine with 50k tps ran the training-set join 2x
# slower than one with 36k), so every run prints it: compare machines through it.
reference_sql() {
  local q="EXPLAIN (ANALYZE, TIMING OFF) SELECT count(*) FROM (SELECT DISTINCT ON (a.g) a.g, b.g AS h
    FROM generate_series(1, 100000) a(g) JOIN generate_series(1, 100000) b(g) ON a.g::text = b.g::text
    ORDER BY a.g, b.g DESC) s"
  local times
  times=$(for _ in 1 2 3 4 5 6 7; do
    psql "$ADMIN_URL" -Atqc "SET work_mem = '256MB'; SET jit = off" -c "$q" | awk '/Execution Time/ {print $3}'
  done | sort -n)
  echo "reference SQL (hash join + sort + DISTINCT ON, 100k text keys, 7 runs): best $(echo "$times" | head -1) ms, median $(echo "$times" | sed -n 4p) ms"
}
