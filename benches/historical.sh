#!/usr/bin/env bash
# Training sets: 7043, 100k and 1M entity rows x all 14 stored features (churn_base_v1),
# generated data (as many users as entity rows, 2 months), entity rows = every user at
# 2024-01-31. Reports wall time (hyperfine), peak RSS (/usr/bin/time) and PostgreSQL's
# own time for the same SQL (EXPLAIN ANALYZE, via `skewless historical --explain`), for
# the one-shot CLI, then for `POST /historical` against a warm server (curl, the CSV
# streamed to /dev/null; NO_HTTP=1 skips it).
source "$(dirname "$0")/common.sh"
build
machine
SQL="SELECT user_id, as_of AS event_timestamp FROM subscriptions_profile_snapshots WHERE as_of = '2024-01-31'"
PORT="${PORT:-8078}"
printf '{"entity_sql": "%s", "feature_service": "churn_base_v1", "format": "csv"}' "$SQL" >"$WORK/historical-body.json"
for users in ${SIZES:-7043 100000 1000000}; do
  bench_db "skewless_bench_hist_$users" "$users"
  cmd="$B --repo $ROOT/feature_repo historical --entity-sql \"$SQL\" --feature-service churn_base_v1 --out $WORK/train-$users.csv"
  echo "== $users entity rows"
  hyperfine --warmup 1 --runs "${RUNS:-5}" --export-markdown "$WORK/hist-$users.md" "$cmd" | grep -E "Time|Range"
  /usr/bin/time -f "peak RSS: %M KiB" bash -c "$cmd" 2>&1 >/dev/null | tail -1
  "$B" --repo "$ROOT/feature_repo" historical --entity-sql "$SQL" --feature-service churn_base_v1 --explain \
    | grep -E "Execution Time|Planning Time"
  # With the derived features too (churn_serving_v1: the 14 + 5 computed by the two
  # plugins, same query plus the plugin inputs): the cost of the Wasm path offline.
  if [ -z "${NO_DERIVED:-}" ]; then
    derived="$B --repo $ROOT/feature_repo historical --entity-sql \"$SQL\" --feature-service churn_serving_v1 --out $WORK/train-derived-$users.csv"
    echo "-- with derived features (churn_serving_v1)"
    hyperfine --warmup 1 --runs "${RUNS:-5}" "$cmd" "$derived" | grep -E "Time|Range|faster"
  fi
  if [ -z "${NO_HTTP:-}" ]; then
    # The same training set from a running server: no process start, connection or
    # registry read per request, and no file to sync.
    "$B" --repo "$ROOT/feature_repo" serve --addr "127.0.0.1:$PORT" >"$WORK/serve-historical.log" 2>&1 &
    SERVER=$!
    trap 'kill $SERVER 2>/dev/null || true' EXIT
    for _ in $(seq 1 50); do curl -fs "127.0.0.1:$PORT/ready" >/dev/null && break; sleep 0.2; done
    post="curl -sf -o /dev/null -X POST -H 'content-type: application/json' --data @$WORK/historical-body.json http://127.0.0.1:$PORT/historical"
    echo "-- over HTTP (POST /historical, warm server; curl's own start is in the time)"
    hyperfine -N --warmup 2 --runs "${RUNS:-5}" "$post" | grep -E "Time|Range"
    kill $SERVER; wait $SERVER 2>/dev/null || true
    trap - EXIT
  fi
done
