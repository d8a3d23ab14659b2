#!/usr/bin/env bash
# The StreamFlow lab, end to end, on the course data: every output quoted in
# reports/rapport_tp3.md comes from this script (its transcript), and CI runs it.
#
#   STREAMFLOW_SEEDS=../shared/data/streamflow bash scripts/lab.sh
#
# Steps: ingest both months, apply (twice: the second changes nothing), the training set
# (training_df.csv, head -5), materialize January, `skewless online 7590-VHVEG`, the
# server (curl /features/7590-VHVEG, an unknown user), a plugin upload and a rollback
# over HTTP, and a hot reload under `serve --dev`. The script checks the values it
# prints (exit 1 on any difference) and works in its own database, dropped at the end.
#
# Needs: PostgreSQL on 127.0.0.1:5432 (or SKEWLESS_LAB_ADMIN_URL), the release binary
# (cargo build --release) and the plugins (scripts/build-plugins.sh), curl, python3.
# Writes the transcript to $LAB_OUT (default /tmp/skewless-lab/transcript.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

: "${STREAMFLOW_SEEDS:?set STREAMFLOW_SEEDS to the folder holding month_000 and month_001}"
seeds="$(cd "$STREAMFLOW_SEEDS" && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
bin="$target/release"
[ -x "$bin/skewless" ] || { echo "no $bin/skewless: run cargo build --release first" >&2; exit 2; }
[ -f plugins/target/wasm32-wasip2/release/churn_signals.wasm ] \
  || { echo "no built plugins: run scripts/build-plugins.sh first" >&2; exit 2; }
[ -f tests/hostile_plugin/out/tenure_v2.wasm ] \
  || { echo "no tests/hostile_plugin/out/tenure_v2.wasm: run scripts/build-plugins.sh first" >&2; exit 2; }
export PATH="$bin:$PATH"

admin="${SKEWLESS_LAB_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
db="skewless_lab_$$_$(date +%s)"
export DATABASE_URL="${admin%/*}/$db"
work="$(mktemp -d /tmp/skewless-lab.XXXXXX)"
out="${LAB_OUT:-/tmp/skewless-lab/transcript.txt}"
mkdir -p "$(dirname "$out")"
: > "$out"
pids=()
cleanup() {
  local status=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  # On failure, the servers' logs say why.
  if [ "$status" -ne 0 ]; then
    for log in "$work"/*.log; do
      [ -f "$log" ] && { echo "---- $(basename "$log") (last 40 lines)" >&2; tail -n 40 "$log" >&2; }
    done
  fi
  psql -q "$admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

say() { printf '%s\n' "$*" | tee -a "$out"; }
# Runs a command, quoting it and its output (a failing command fails the script: pipefail).
# `shown "AS TYPED" cmd…` quotes AS TYPED instead (the lab's own paths rather than this
# run's temporary ones). The output is also kept in $last for checks.
last=""
run() { shown "$*" "$@"; }
shown() {
  local typed="$1"
  shift
  say ""
  say "\$ $typed"
  last="$("$@" 2>&1)" || { printf '%s\n' "$last" >&2; fail "\`$typed\` failed"; }
  printf '%s\n' "$last" | tee -a "$out"
}
# expect_line DESCRIPTION LINE: $last holds LINE, exactly.
expect_line() {
  grep -qxF -- "$2" <<<"$last" || fail "$1: no line '$2' in:"$'\n'"$last"
  echo "  ok: $1" >&2
}
fail() { echo "lab.sh: FAILED: $*" >&2; exit 1; }
expect() { # expect DESCRIPTION ACTUAL WANTED
  [ "$2" = "$3" ] || fail "$1: got '$2', expected '$3'"
  echo "  ok: $1 = $3" >&2
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { # wait_ready PORT
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$1/ready" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  fail "the server on port $1 did not become ready"
}
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

psql -q "$admin" -c "CREATE DATABASE $db" >/dev/null
say "# skewless lab transcript ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(skewless --version))"
say "# data: the course CSVs (month_000 = 2024-01-31, month_001 = 2024-02-29)"

# ---- Mise en place: ingest, apply ----
shown "skewless ingest --seeds \$STREAMFLOW_SEEDS/month_000 --as-of 2024-01-31" \
  skewless ingest --seeds "$seeds/month_000" --as-of 2024-01-31
shown "skewless ingest --seeds \$STREAMFLOW_SEEDS/month_001 --as-of 2024-02-29" \
  skewless ingest --seeds "$seeds/month_001" --as-of 2024-02-29
run skewless apply
expect_line "first apply creates the views" "Created feature view subs_profile_fv"
run skewless apply
expect_line "second apply: registry unchanged" "No changes to registry"
expect_line "second apply: infrastructure unchanged" "No changes to infrastructure"
run skewless registry

# ---- Récupération offline: the training set ----
mkdir -p "$work/data/processed"
csv="$work/data/processed/training_df.csv"
entity_sql="SELECT user_id, as_of AS event_timestamp FROM subscriptions_profile_snapshots WHERE as_of = '2024-01-31'"
(cd "$work" && shown "skewless historical --entity-sql \"$entity_sql\" --feature-service churn_training_v1 --label churn_label --out data/processed/training_df.csv" \
  skewless --repo "$root/feature_repo" historical --entity-sql "$entity_sql" \
  --feature-service churn_training_v1 --label churn_label --out data/processed/training_df.csv)
say ""
say "\$ head -5 data/processed/training_df.csv"
head -5 "$csv" | tee -a "$out"
expect "training set rows" "$(($(wc -l < "$csv") - 1))" 7043
expect "training set header" "$(head -1 "$csv")" \
  "user_id,event_timestamp,months_active,monthly_fee,paperless_billing,watch_hours_30d,avg_session_mins_7d,failed_payments_90d,churn_label"
churners="$(awk -F, 'NR > 1 && $NF == "true"' "$csv" | wc -l)"
say ""
say "\$ awk -F, 'NR > 1 && \$NF == \"true\"' data/processed/training_df.csv | wc -l"
say "$churners"
expect "rows with churn_label true" "$churners" 1869
expect "7590-VHVEG's row" "$(grep '^7590-VHVEG,' "$csv")" \
  "7590-VHVEG,2024-01-31T00:00:00Z,1,29.85,true,24.48365,29.141045,1,false"
# The training set of derived features too (what the plugins compute offline).
derived=churn_signals_fv:fee_per_watch_hour,churn_signals_fv:engagement_score,tenure_bucket_fv:tenure_bucket
(cd "$work" && shown "skewless historical --entity-sql \"$entity_sql\" --features $derived --out derived.csv" \
  skewless --repo "$root/feature_repo" historical --entity-sql "$entity_sql" --features "$derived" --out derived.csv)
say ""
say "\$ head -3 derived.csv; cat derived.csv.meta.json"
head -3 "$work/derived.csv" | tee -a "$out"
tee -a "$out" < "$work/derived.csv.meta.json"
say ""
offline_row="$(grep '^7590-VHVEG,' "$work/derived.csv")"
expect "7590-VHVEG's derived row" "$offline_row" \
  "7590-VHVEG,2024-01-31T00:00:00Z,1.2191809688696686,0.5378844682207344,0-5"
expect "derived training set rows" "$(($(wc -l < "$work/derived.csv") - 1))" 7043
expect "plugins recorded with the training set" \
  "$(json '",".join(p["name"] + "@" + p["version"] for p in d["plugins"])' < "$work/derived.csv.meta.json")" \
  "churn_signals@0.1.0,tenure_bucket@0.1.0"
offline_fee="$(cut -d, -f3 <<<"$offline_row")"
offline_engagement="$(cut -d, -f4 <<<"$offline_row")"

# ---- Récupération online: materialize, CLI, HTTP ----
run skewless materialize 2024-01-01T00:00:00 2024-02-01T00:00:00
for view in payments_agg_90d_fv subs_profile_fv support_agg_90d_fv usage_agg_30d_fv; do
  expect_line "materialized $view" "$view: 7043 rows"
done
run skewless online 7590-VHVEG --features subs_profile_fv:months_active,subs_profile_fv:monthly_fee,subs_profile_fv:paperless_billing
online="$(skewless online 7590-VHVEG --features subs_profile_fv:months_active,subs_profile_fv:monthly_fee,subs_profile_fv:paperless_billing)"
expect "online months_active" "$(awk '$1 == "months_active" {print $2}' <<<"$online")" 1
expect "online monthly_fee" "$(awk '$1 == "monthly_fee" {print $2}' <<<"$online")" 29.85
expect "online paperless_billing" "$(awk '$1 == "paperless_billing" {print $2}' <<<"$online")" true

port="$(free_port)"
export SKEWLESS_SERVER__ADMIN_TOKEN=lab-token
skewless serve --addr "127.0.0.1:$port" > "$work/serve.log" 2>&1 &
pids+=($!)
wait_ready "$port"
url="http://127.0.0.1:$port"
say ""
say "\$ skewless serve &   # 127.0.0.1:8000 in the report; here 127.0.0.1:$port"
say ""
say "\$ curl -s localhost:8000/features/7590-VHVEG | python3 -m json.tool"
body="$(curl -fsS "$url/features/7590-VHVEG")"
python3 -m json.tool <<<"$body" | tee -a "$out"
expect "HTTP monthly_fee" "$(json 'd["features"]["monthly_fee"]' <<<"$body")" 29.85
expect "HTTP months_active status" "$(json 'd["statuses"]["months_active"]' <<<"$body")" PRESENT
expect "HTTP fee_per_watch_hour = the training set's" "$(json 'repr(d["features"]["fee_per_watch_hour"])' <<<"$body")" "$offline_fee"
expect "HTTP engagement_score = the training set's" "$(json 'repr(d["features"]["engagement_score"])' <<<"$body")" "$offline_engagement"
expect "HTTP tenure_bucket" "$(json 'd["features"]["tenure_bucket"]' <<<"$body")" "0-5"
expect "features served" "$(json 'len(d["features"])' <<<"$body")" 19

say ""
say "\$ curl -s -w ' HTTP %{http_code}\\n' localhost:8000/features/UNKNOWN-USER"
unknown="$(curl -sS -w ' HTTP %{http_code}' "$url/features/UNKNOWN-USER")"
say "$unknown"
expect "unknown user: HTTP status" "${unknown##* HTTP }" 200
expect "unknown user: statuses" \
  "$(json 'sorted(set(d["statuses"].values()))' <<<"${unknown% HTTP *}")" "['NOT_FOUND']"
expect "unknown user: values" \
  "$(json 'sorted(set(map(str, d["features"].values())))' <<<"${unknown% HTTP *}")" "['None']"

say ""
say "\$ curl -s 'localhost:8000/features/7590-VHVEG?features=subs_profile_fv:nope'"
nope="$(curl -sS -w ' HTTP %{http_code}' "$url/features/7590-VHVEG?features=subs_profile_fv:nope")"
say "${nope% HTTP *}"
expect "unknown feature: HTTP status" "${nope##* HTTP }" 400
expect "unknown feature: code" "$(json 'd["code"]' <<<"${nope% HTTP *}")" UNKNOWN_FEATURE

# ---- A plugin upload, then a rollback, over HTTP (every server sharing the DB follows) ----
tenure() { curl -fsS "$url/features/7590-VHVEG?features=tenure_bucket_fv:tenure_bucket" | json 'd["features"]["tenure_bucket"]'; }
say ""
say "\$ curl -s -X POST -H 'Authorization: Bearer ...' --data-binary @tenure_v2.wasm localhost:8000/plugins"
uploaded="$(curl -fsS -X POST -H "Authorization: Bearer lab-token" -H 'Content-Type: application/wasm' \
  --data-binary @tests/hostile_plugin/out/tenure_v2.wasm "$url/plugins")"
python3 -m json.tool <<<"$uploaded" | tee -a "$out"
expect "uploaded version" "$(json 'd["version"]' <<<"$uploaded")" 0.2.0
expect "views switched by the upload" "$(json 'd["views_switched"]' <<<"$uploaded")" "['tenure_bucket_fv']"
say ""
say "\$ curl -s 'localhost:8000/features/7590-VHVEG?features=tenure_bucket_fv:tenure_bucket'"
v2="$(tenure)"
say "tenure_bucket = $v2"
expect "tenure_bucket after the upload of 0.2.0" "$v2" "v2:0"
say ""
say "\$ curl -s -X POST -H 'Authorization: Bearer ...' localhost:8000/plugins/tenure_bucket/activate -d '{\"version\": \"0.1.0\"}'"
curl -fsS -X POST -H "Authorization: Bearer lab-token" -H 'Content-Type: application/json' \
  -d '{"version": "0.1.0"}' "$url/plugins/tenure_bucket/activate" | python3 -m json.tool | tee -a "$out"
v1="$(tenure)"
say "tenure_bucket = $v1"
expect "tenure_bucket after the rollback to 0.1.0" "$v1" "0-5"
run skewless plugin list
# The active version (the `*` line) of each plugin's section, and what stays stored.
active() { awk -v p="$1" '$0 == p {f = 1; next} /^[^ ]/ {f = 0} f && /^  \* / {print $2}' <<<"$last"; }
expect "active tenure_bucket after the rollback" "$(active tenure_bucket)" 0.1.0
expect "active churn_signals" "$(active churn_signals)" 0.1.0
grep -qE '^    0\.2\.0 ' <<<"$last" || fail "plugin list: tenure_bucket 0.2.0 should stay stored"

# ---- Hot reload: serve --dev watches the repo; a new feature service appears live ----
cp -r feature_repo "$work/repo"
dev_port="$(free_port)"
# The copy's plugins are this checkout's (plugins.dir is relative to the repo otherwise).
SKEWLESS_PLUGINS__DIR="$root/plugins/target/wasm32-wasip2/release" \
  skewless --repo "$work/repo" serve --dev --addr "127.0.0.1:$dev_port" > "$work/dev.log" 2>&1 &
pids+=($!)
wait_ready "$dev_port"
say ""
say "\$ skewless serve --dev &   # watches feature_repo/*.yaml and the plugins folder"
say "\$ curl -s 'localhost:8000/features/7590-VHVEG?feature_service=churn_lab_v2'"
before="$(curl -sS -w ' HTTP %{http_code}' "http://127.0.0.1:$dev_port/features/7590-VHVEG?feature_service=churn_lab_v2")"
say "${before% HTTP *}"
expect "before the edit: HTTP status" "${before##* HTTP }" 400
expect "before the edit: code" "$(json 'd["code"]' <<<"${before% HTTP *}")" UNKNOWN_FEATURE_SERVICE
cat >> "$work/repo/feature_services.yaml" <<'EOF'
  - name: churn_lab_v2
    features:
      - subs_profile_fv:months_active
      - subs_profile_fv:monthly_fee
      - churn_signals_fv:engagement_score
EOF
say "\$ cat >> feature_repo/feature_services.yaml   # a new service: churn_lab_v2"
tail -n 5 "$work/repo/feature_services.yaml" | tee -a "$out"
start=$(date +%s%N)
for _ in $(seq 1 100); do
  code="$(curl -s -o "$work/reload.json" -w '%{http_code}' \
    "http://127.0.0.1:$dev_port/features/7590-VHVEG?feature_service=churn_lab_v2" || true)"
  [ "$code" = 200 ] && break
  sleep 0.05
done
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
[ "$code" = 200 ] || fail "the new service after the reload: HTTP $code: $(cat "$work/reload.json" 2>/dev/null)"
say "\$ curl -s 'localhost:8000/features/7590-VHVEG?feature_service=churn_lab_v2'   # no restart"
python3 -m json.tool < "$work/reload.json" | tee -a "$out"
expect "after the reload: features" "$(json 'list(d["features"])' < "$work/reload.json")" \
  "['months_active', 'monthly_fee', 'engagement_score']"
expect "after the reload: engagement_score" "$(json 'repr(d["features"]["engagement_score"])' < "$work/reload.json")" "$offline_engagement"
say "# served ${elapsed_ms} ms after the file was written (polled every 50 ms)"

say ""
say "# all checks passed"
echo "lab.sh: every check passed; transcript in $out"
