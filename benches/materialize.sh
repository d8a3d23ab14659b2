#!/usr/bin/env bash
# Materialization: 7043 users x 4 views (first run into empty tables, then an idempotent
# re-run) and 1M users x 4 views.
source "$(dirname "$0")/common.sh"
build
machine
for users in ${SIZES:-7043 1000000}; do
  bench_db "skewless_bench_mat_$users" "$users"
  reset="psql $DATABASE_URL -qc 'TRUNCATE feature_store_online.streamflow_subs_profile_fv, feature_store_online.streamflow_usage_agg_30d_fv, feature_store_online.streamflow_payments_agg_90d_fv, feature_store_online.streamflow_support_agg_90d_fv' -c 'DELETE FROM skewless_registry.materializations'"
  cmd="$B --repo $ROOT/feature_repo materialize 2024-01-01 2024-02-01"
  echo "== $users users: first run (empty online tables)"
  hyperfine --warmup 1 --runs "${RUNS:-5}" --prepare "$reset" "$cmd" | grep -E "Time|Range"
  echo "== $users users: idempotent re-run"
  hyperfine --warmup 1 --runs "${RUNS:-5}" "$cmd" | grep -E "Time|Range"
done
