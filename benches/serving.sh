#!/usr/bin/env bash
# Online serving under load (wrk on 127.0.0.1), generated data (7043 users, materialized).
# Scenarios: 1 user x 3 features, 1 user x 14 features (GET /features/{id}), 1 user x
# 14 + 5 derived features (two plugins run per request), and 100 users x 14 features
# (POST /get-online-features); concurrency 1, 8, 32, 64.
# Also pgbench -S (select-only) on the same machine as the ceiling, and idle RSS.
source "$(dirname "$0")/common.sh"
build
machine
bench_db skewless_bench_serving 7043 materialize
PORT="${PORT:-8077}"
"$B" --repo "$ROOT/feature_repo" serve --addr "127.0.0.1:$PORT" >"$WORK/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do curl -fs "127.0.0.1:$PORT/ready" >/dev/null && break; sleep 0.2; done
sleep 1
echo "idle RSS: $(ps -o rss= -p $SERVER) KiB"
USERS=$(psql "$DATABASE_URL" -Atc "SELECT string_agg('\"' || user_id || '\"', ',') FROM (SELECT user_id FROM subscriptions ORDER BY user_id LIMIT 100) u")
ONE=$(psql "$DATABASE_URL" -Atc "SELECT user_id FROM subscriptions ORDER BY user_id LIMIT 1")
cat > "$WORK/post100.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"feature_service": "churn_base_v1", "entities": {"user_id": [$USERS]}}'
LUA
run() { # name url [script]
  for c in ${CONCURRENCY:-1 8 32 64}; do
    local t=$(( c < 2 ? 1 : 2 ))
    local out
    out=$(wrk -t"$t" -c"$c" -d"${DURATION:-10s}" --latency ${3:+-s "$3"} "$2")
    local rps p50 p99
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    local errors
    errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
    printf "| %s | %d | %s | %s | %s | %s |\n" "$1" "$c" "$rps" "$p50" "$p99" "${errors:-0 errors}"
  done
}
echo "| scenario | c | req/s | p50 | p99 | errors |"
echo "|---|---|---|---|---|---|"
run "1 user x 3 features" "http://127.0.0.1:$PORT/features/$ONE?features=subs_profile_fv:months_active,subs_profile_fv:monthly_fee,subs_profile_fv:paperless_billing"
run "1 user x 14 features" "http://127.0.0.1:$PORT/features/$ONE?feature_service=churn_base_v1"
run "1 user x 14 + 5 derived" "http://127.0.0.1:$PORT/features/$ONE?feature_service=churn_serving_v1"
run "100 users x 14 features" "http://127.0.0.1:$PORT/get-online-features" "$WORK/post100.lua"
echo "RSS after load: $(ps -o rss= -p $SERVER) KiB"
kill $SERVER; wait $SERVER 2>/dev/null || true
trap - EXIT
echo "== pgbench -S (ceiling: PostgreSQL's own primary-key lookups on this machine)"
psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS skewless_bench_pgbench" -c "CREATE DATABASE skewless_bench_pgbench"
pgbench -q -i -s 10 "${ADMIN_URL%/*}/skewless_bench_pgbench" >/dev/null 2>&1
for c in 1 8 32 64; do
  printf "c=%d: " "$c"; pgbench -S -c "$c" -j 2 -T "${PGBENCH_SECONDS:-10}" "${ADMIN_URL%/*}/skewless_bench_pgbench" 2>/dev/null | grep -E "^tps" | sed 's/ (without initial connection time)//'
done
psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS skewless_bench_pgbench"
