//! Point-in-time training sets: Feast's semantics exactly, checked against a brute-force
//! reference on random data, the lab on the real data, and every kind of bad input.

mod common;

use std::collections::HashMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use common::{TempRepo, TestDb, course_seeds, skewless};
use predicates::prelude::*;
use rand::{Rng, SeedableRng};
use skewless::batch::Batch;
use skewless::definitions::{Definitions, SourceFile};
use skewless::offline::historical::{self, Entities, HistoricalOptions, HistoricalRequest};

/// Collects a whole training set as rows of rendered cells ("" for NULL → None).
async fn collect(set: historical::TrainingSet) -> (Vec<String>, Vec<Vec<Option<String>>>) {
    let names = set.schema.iter().map(|c| c.name.clone()).collect();
    let mut rows = Vec::new();
    let mut batches = set.batches;
    while let Some(batch) = batches.recv().await {
        let batch: Batch = batch.unwrap();
        for r in 0..batch.rows {
            rows.push(
                batch
                    .columns
                    .iter()
                    .map(|c| {
                        (!c.is_null(r)).then(|| {
                            let mut s = String::new();
                            c.write_text(r, &mut s);
                            s
                        })
                    })
                    .collect(),
            );
        }
    }
    (names, rows)
}

const PROPERTY_DEFS: &str = r#"
entities:
  - {name: user, join_keys: [user_id], value_type: String}
data_sources:
  - name: a_source
    query: SELECT user_id, ts, created, x, y FROM a_rows
    timestamp_field: ts
    created_timestamp_column: created
  - name: b_source
    query: SELECT user_id, as_of, flag, label FROM b_rows
    timestamp_field: as_of
  # One table, two timestamp types: `timestamp` (UTC wall time) and `date` with a ttl
  # that ends mid-day (the time-span bounds of the query must not cut either wrongly).
  - name: c_at
    query: SELECT user_id, at, z FROM c_rows
    timestamp_field: at
  - name: c_day
    query: SELECT user_id, day, w FROM c_rows
    timestamp_field: day
feature_views:
  - name: va
    entities: [user]
    source: a_source
    ttl: 3d
    schema: [{name: x, dtype: Int64}, {name: y, dtype: Float32}]
  - name: vb
    entities: [user]
    source: b_source
    ttl: 0
    schema: [{name: flag, dtype: Bool}, {name: label, dtype: String}]
  - name: vc
    entities: [user]
    source: c_at
    ttl: 1d
    schema: [{name: z, dtype: Int64}]
  - name: vd
    entities: [user]
    source: c_day
    ttl: 36h
    schema: [{name: w, dtype: Int64}]
"#;

#[derive(Clone, Debug)]
struct ARow {
    user: String,
    ts: DateTime<Utc>,
    created: Option<DateTime<Utc>>,
    x: Option<i64>,
    y: Option<f32>,
}

#[derive(Clone, Debug)]
struct BRow {
    user: String,
    as_of: chrono::NaiveDate,
    flag: Option<bool>,
    label: Option<String>,
}

/// A row of `c_rows`: (user, at) and (user, day) are each unique.
#[derive(Clone, Debug)]
struct CRow {
    user: String,
    at: chrono::NaiveDateTime,
    day: chrono::NaiveDate,
    z: Option<i64>,
    w: Option<i64>,
}

fn render_f32(v: f32) -> String {
    let mut s = String::new();
    skewless::batch::write_f32(v, &mut s);
    s
}

/// The reference: Feast's rule written as plainly as possible.
fn reference(
    a: &[ARow],
    b: &[BRow],
    c: &[CRow],
    entities: &[(String, DateTime<Utc>)],
) -> Vec<Vec<Option<String>>> {
    let ttl = Duration::days(3);
    entities
        .iter()
        .map(|(user, t)| {
            let best_a = a
                .iter()
                .filter(|r| &r.user == user && r.ts <= *t && r.ts >= *t - ttl)
                .max_by(|p, q| {
                    // Newest ts; on a tie, the greatest created, NULL created last.
                    (p.ts, p.created.is_some(), p.created).cmp(&(
                        q.ts,
                        q.created.is_some(),
                        q.created,
                    ))
                });
            let best_b = b
                .iter()
                .filter(|r| {
                    &r.user == user && r.as_of.and_hms_opt(0, 0, 0).unwrap().and_utc() <= *t
                })
                .max_by_key(|r| r.as_of);
            // `timestamp` is UTC wall time; a date is its midnight, UTC.
            let best_c = c
                .iter()
                .filter(|r| {
                    let at = r.at.and_utc();
                    &r.user == user && at <= *t && at >= *t - Duration::days(1)
                })
                .max_by_key(|r| r.at);
            let best_d = c
                .iter()
                .filter(|r| {
                    let day = r.day.and_hms_opt(0, 0, 0).unwrap().and_utc();
                    &r.user == user && day <= *t && day >= *t - Duration::hours(36)
                })
                .max_by_key(|r| r.day);
            vec![
                Some(user.clone()),
                Some(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
                best_a.and_then(|r| r.x).map(|v| v.to_string()),
                best_a.and_then(|r| r.y).map(render_f32),
                best_b.and_then(|r| r.flag).map(|v| v.to_string()),
                best_b.and_then(|r| r.label.clone()),
                best_c.and_then(|r| r.z).map(|v| v.to_string()),
                best_d.and_then(|r| r.w).map(|v| v.to_string()),
            ]
        })
        .collect()
}

#[tokio::test]
async fn point_in_time_join_matches_a_brute_force_reference() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let defs = Definitions::parse(&[SourceFile {
        name: "defs.yaml",
        text: PROPERTY_DEFS,
    }])
    .unwrap();
    let base = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
    let features = defs
        .select_feature_strings(
            &["va:x", "va:y", "vb:flag", "vb:label", "vc:z", "vd:w"].map(String::from),
            false,
        )
        .unwrap();
    let mut total_rows = 0;
    for case in 0..24u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(case);
        sqlx::query("DROP TABLE IF EXISTS a_rows, b_rows, c_rows")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("CREATE TABLE a_rows (user_id text, ts timestamptz, created timestamptz, x int8, y float8)")
            .execute(&pool).await.unwrap();
        sqlx::query("CREATE TABLE b_rows (user_id text, as_of date, flag bool, label text)")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("CREATE TABLE c_rows (user_id text, at timestamp, day date, z int8, w int8)")
            .execute(&pool)
            .await
            .unwrap();
        let users: Vec<String> = (0..rng.random_range(1..12))
            .map(|i| format!("u{i}"))
            .collect();
        let mut a = Vec::new();
        for _ in 0..rng.random_range(0..60) {
            // Coarse times so equal timestamps (split by created) happen often.
            let ts = base + Duration::hours(12 * rng.random_range(0..20));
            let created = match rng.random_range(0..3) {
                0 => None,
                _ => Some(base + Duration::minutes(rng.random_range(0..5))),
            };
            let user = users[rng.random_range(0..users.len())].clone();
            // Feast leaves exact (ts, created) ties undefined: keep them unique.
            if a.iter()
                .any(|r: &ARow| r.user == user && r.ts == ts && r.created == created)
            {
                continue;
            }
            a.push(ARow {
                user,
                ts,
                created,
                x: rng.random_bool(0.85).then(|| rng.random_range(-5..100)),
                // f64 in the table, Float32 in the view: the cast is part of the contract.
                y: None,
            });
            let y64: Option<f64> = rng.random_bool(0.85).then(|| rng.random_range(-10.0..10.0));
            a.last_mut().unwrap().y = y64.map(|v| v as f32);
            let r = a.last().unwrap();
            sqlx::query("INSERT INTO a_rows VALUES ($1, $2, $3, $4, $5)")
                .bind(&r.user)
                .bind(r.ts)
                .bind(r.created)
                .bind(r.x)
                .bind(y64)
                .execute(&pool)
                .await
                .unwrap();
        }
        // Unique (user, as_of) like the snapshot tables.
        let mut b: Vec<BRow> = Vec::new();
        for _ in 0..rng.random_range(0..30) {
            let user = users[rng.random_range(0..users.len())].clone();
            let as_of = base.date_naive() + Duration::days(rng.random_range(0..10));
            if b.iter().any(|r| r.user == user && r.as_of == as_of) {
                continue;
            }
            let row = BRow {
                user,
                as_of,
                flag: rng.random_bool(0.8).then(|| rng.random_bool(0.5)),
                label: rng
                    .random_bool(0.8)
                    .then(|| ["", "DSL", "a,b", "é\"q"][rng.random_range(0..4)].to_string()),
            };
            sqlx::query("INSERT INTO b_rows VALUES ($1, $2, $3, $4)")
                .bind(&row.user)
                .bind(row.as_of)
                .bind(row.flag)
                .bind(&row.label)
                .execute(&pool)
                .await
                .unwrap();
            b.push(row);
        }
        let mut c: Vec<CRow> = Vec::new();
        for _ in 0..rng.random_range(0..40) {
            let user = users[rng.random_range(0..users.len())].clone();
            let at = base.naive_utc() + Duration::hours(6 * rng.random_range(0..44));
            let day = base.date_naive() + Duration::days(rng.random_range(0..11));
            if c.iter()
                .any(|r| r.user == user && (r.at == at || r.day == day))
            {
                continue;
            }
            let row = CRow {
                user,
                at,
                day,
                z: rng.random_bool(0.9).then(|| rng.random_range(0..1000)),
                w: rng.random_bool(0.9).then(|| rng.random_range(0..1000)),
            };
            sqlx::query("INSERT INTO c_rows VALUES ($1, $2, $3, $4, $5)")
                .bind(&row.user)
                .bind(row.at)
                .bind(row.day)
                .bind(row.z)
                .bind(row.w)
                .execute(&pool)
                .await
                .unwrap();
            c.push(row);
        }
        skewless::offline::check_sources(&pool, &defs)
            .await
            .unwrap();
        // Entity rows: known and unknown users, times before any data, duplicates.
        let mut entities = Vec::new();
        for _ in 0..rng.random_range(0..40) {
            let user = if rng.random_bool(0.9) {
                users[rng.random_range(0..users.len())].clone()
            } else {
                "nobody".to_string()
            };
            let t = base + Duration::hours(rng.random_range(-24..260));
            entities.push((user, t));
        }
        if let Some(first) = entities.first().cloned() {
            entities.push(first);
        }
        let expected = reference(&a, &b, &c, &entities);
        // Three ways to the same rows: inline rows on one backend; inline rows dealt to
        // three backends (round robin: uneven shares, some empty); the same rows as
        // entity SQL, run in a transaction of its own and dealt to two backends.
        for (way, partitions) in [("inline", 1), ("inline", 3), ("sql", 2)] {
            let rows_in = if way == "sql" {
                Entities::Sql(values_sql(&entities))
            } else {
                Entities::Inline {
                    keys: entities.iter().map(|(u, _)| u.clone()).collect(),
                    timestamps: entities.iter().map(|(_, t)| t.to_rfc3339()).collect(),
                }
            };
            let set = historical::start(
                &pool,
                &defs,
                HistoricalRequest {
                    entities: rows_in,
                    features: features.clone(),
                    label: None,
                    plugins: Default::default(),
                },
                &HistoricalOptions {
                    entity_sql_timeout_ms: 10_000,
                    work_mem: "64MB".into(),
                    plugin_budget: std::time::Duration::from_secs(30),
                    partitions,
                    partition_min_rows: 2,
                },
            )
            .await
            .unwrap();
            let split = if entities.len() >= 2 { partitions } else { 1 };
            assert_eq!(
                set.backends, split,
                "case {case}: {way} rows, {partitions} wanted"
            );
            let (names, rows) = collect(set).await;
            assert_eq!(
                names,
                [
                    "user_id",
                    "event_timestamp",
                    "x",
                    "y",
                    "flag",
                    "label",
                    "z",
                    "w"
                ]
            );
            let how = format!("case {case}, {way} rows on {partitions} backend(s)");
            assert_eq!(rows.len(), expected.len(), "{how}: row count");
            for (i, (got, want)) in rows.iter().zip(&expected).enumerate() {
                assert_eq!(got, want, "{how}, entity row {i}: {:?}", entities[i]);
            }
        }
        total_rows += expected.len();
    }
    assert!(
        total_rows > 300,
        "the cases must exercise real rows ({total_rows})"
    );
}

/// Entity SQL returning exactly `entities`, in their order.
fn values_sql(entities: &[(String, DateTime<Utc>)]) -> String {
    if entities.is_empty() {
        return "SELECT 'x'::text AS user_id, now() AS event_timestamp WHERE false".into();
    }
    let rows: Vec<String> = entities
        .iter()
        .enumerate()
        .map(|(i, (user, t))| format!("({i}, '{user}', '{}'::timestamptz)", t.to_rfc3339()))
        .collect();
    format!(
        "SELECT user_id, event_timestamp FROM (VALUES {}) AS v(n, user_id, event_timestamp) ORDER BY n",
        rows.join(", ")
    )
}

/// A database with generated months ingested and applied.
async fn applied(users: u64) -> (TestDb, TempRepo) {
    common::ingested_and_applied(users, |_| {}).await
}

/// [`applied`], plus a pool of `pool_size` connections for the library to run on, an
/// admin pool to watch it from, and the registered definitions.
async fn applied_with_pool(
    users: u64,
    pool_size: u32,
) -> (TestDb, TempRepo, sqlx::PgPool, sqlx::PgPool, Definitions) {
    let (db, repo) = applied(users).await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(pool_size)
        .connect(&db.url)
        .await
        .unwrap();
    let admin = db.pool().await;
    let defs = skewless::registry::Registry::new(admin.clone(), &{
        let mut config = skewless::config::Config::load(repo.path()).unwrap();
        config.database_url = Some(db.url.clone());
        config
    })
    .load()
    .await
    .unwrap();
    (db, repo, pool, admin, defs)
}

const LAB_SQL: &str = "SELECT user_id, as_of AS event_timestamp FROM subscriptions_profile_snapshots WHERE as_of = '2024-01-31'";

#[tokio::test]
async fn the_lab_training_set_on_the_course_data() {
    let Some(seeds) = course_seeds() else {
        eprintln!("STREAMFLOW_SEEDS is not set: skipping the real-data test (CI sets it)");
        return;
    };
    let db = TestDb::new().await;
    let repo = TempRepo::streamflow();
    common::ingest_both_months(&repo, &db, &seeds);
    skewless(repo.path(), &db).arg("apply").assert().success();
    let out = repo.path().join("data/processed/training_df.csv");
    skewless(repo.path(), &db)
        .args(["historical", "--entity-sql", LAB_SQL])
        .args([
            "--feature-service",
            "churn_training_v1",
            "--label",
            "churn_label",
            "--out",
        ])
        .arg(&out)
        .assert()
        .success()
        .stdout(predicate::str::contains("with 7043 rows"));
    let text = std::fs::read_to_string(&out).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "user_id,event_timestamp,months_active,monthly_fee,paperless_billing,watch_hours_30d,avg_session_mins_7d,failed_payments_90d,churn_label"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 7043);
    assert_eq!(
        rows.iter().filter(|r| r[8] == "true").count(),
        1869,
        "no label leak from February"
    );

    // Every value equals the snapshot's, rendered the same way.
    let pool = db.pool().await;
    type Row = (String, i64, f32, bool, f32, f32, i64, bool);
    let snapshot: Vec<Row> = sqlx::query_as(
        "SELECT s.user_id, s.months_active, s.monthly_fee::float4, s.paperless_billing,
                u.watch_hours_30d::float4, u.avg_session_mins_7d::float4, p.failed_payments_90d, l.churn_label
         FROM subscriptions_profile_snapshots s
         JOIN usage_agg_30d_snapshots u USING (user_id, as_of)
         JOIN payments_agg_90d_snapshots p USING (user_id, as_of)
         JOIN labels_snapshots l USING (user_id, as_of)
         WHERE as_of = '2024-01-31'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let by_user: HashMap<&str, _> = snapshot.iter().map(|r| (r.0.as_str(), r)).collect();
    for row in &rows {
        let s = by_user[row[0]];
        assert_eq!(row[1], "2024-01-31T00:00:00Z");
        assert_eq!(row[2], s.1.to_string());
        assert_eq!(row[3], render_f32(s.2));
        assert_eq!(row[4], s.3.to_string());
        assert_eq!(row[5], render_f32(s.4));
        assert_eq!(row[6], render_f32(s.5));
        assert_eq!(row[7], s.6.to_string());
        assert_eq!(row[8], s.7.to_string());
    }
    let first = &rows[0];
    assert_eq!(
        first[..5],
        ["7590-VHVEG", "2024-01-31T00:00:00Z", "1", "29.85", "true"]
    );
}

#[tokio::test]
async fn formats_empty_sets_and_entity_files() {
    let (db, repo) = applied(120).await;
    let dir = tempfile::tempdir().unwrap();
    // Entity CSV with duplicates, an unknown user and a time before any data.
    let entities = dir.path().join("entities.csv");
    let pool = db.pool().await;
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT user_id FROM subscriptions_profile_snapshots WHERE as_of = '2024-02-29' ORDER BY user_id LIMIT 3",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    std::fs::write(
        &entities,
        format!(
            "event_timestamp,user_id,extra\n2024-02-15,{a},x\n2024-03-01T12:00:00Z,{b},y\n2023-06-01,{a},z\n2024-02-15,{a},x\n2024-03-01,nobody,w\n",
            a = ids[0],
            b = ids[1]
        ),
    )
    .unwrap();
    for format in ["csv", "jsonl", "parquet"] {
        let out = dir.path().join(format!("set.{format}"));
        skewless(repo.path(), &db)
            .args(["historical", "--entities"])
            .arg(&entities)
            .args([
                "--features",
                "subs_profile_fv:months_active,usage_agg_30d_fv:watch_hours_30d",
            ])
            .arg("--full-feature-names")
            .arg("--out")
            .arg(&out)
            .assert()
            .success()
            .stdout(predicate::str::contains("with 5 rows"));
        assert!(out.exists());
    }
    let csv = std::fs::read_to_string(dir.path().join("set.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "user_id,event_timestamp,subs_profile_fv__months_active,usage_agg_30d_fv__watch_hours_30d"
    );
    assert_eq!(lines.len(), 6);
    assert!(
        lines[3].ends_with(",,"),
        "before any data: NULLs ({})",
        lines[3]
    );
    assert_eq!(lines[1], lines[4], "duplicates are kept");
    assert!(lines[5].starts_with("nobody,") && lines[5].ends_with(",,"));
    let jsonl = std::fs::read_to_string(dir.path().join("set.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    assert_eq!(first["user_id"], ids[0].as_str());
    // The same f32 prints the same way in CSV and JSON.
    let csv_watch = lines[1].rsplit(',').next().unwrap();
    let json_line = jsonl.lines().next().unwrap();
    assert!(
        json_line.contains(&format!(
            "\"usage_agg_30d_fv__watch_hours_30d\":{csv_watch}}}"
        )),
        "{json_line} vs {csv_watch}"
    );

    // An empty entity set is valid: header only.
    let out = dir.path().join("empty.csv");
    skewless(repo.path(), &db)
        .args(["historical", "--entity-sql", "SELECT user_id, as_of AS event_timestamp FROM subscriptions_profile_snapshots WHERE false"])
        .args(["--feature-service", "churn_training_v1", "--out"])
        .arg(&out)
        .assert()
        .success()
        .stdout(predicate::str::contains("with 0 rows"));
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 1);

    // One user's months_active, through `historical --entity-sql` and in the snapshot.
    let months_active_set = |name: &str, sql: String, rows: usize| {
        let out = dir.path().join(name);
        skewless(repo.path(), &db)
            .args(["historical", "--entity-sql", &sql])
            .args(["--features", "subs_profile_fv:months_active", "--out"])
            .arg(&out)
            .assert()
            .success()
            .stdout(predicate::str::contains(format!("with {rows} rows")));
        let text = std::fs::read_to_string(&out).unwrap();
        text.lines().skip(1).map(String::from).collect::<Vec<_>>()
    };
    let snapshot = |as_of: &'static str| {
        sqlx::query_scalar::<_, i64>(
            "SELECT months_active FROM subscriptions_profile_snapshots WHERE as_of = $1::date AND user_id = $2",
        )
        .bind(as_of)
        .bind(&ids[0])
        .fetch_one(&pool)
    };
    // Infinite event timestamps (only entity SQL can make them) bound nothing: the finite
    // row beside them still finds its January snapshot.
    let rows = months_active_set(
        "infinite.csv",
        format!(
            "SELECT user_id, ts AS event_timestamp FROM subscriptions_profile_snapshots,
                    unnest(ARRAY['-infinity', '2024-02-15', 'infinity']::timestamptz[]) AS ts
             WHERE as_of = '2024-01-31' AND user_id = '{}'",
            ids[0]
        ),
        3,
    );
    let january = snapshot("2024-01-31").await.unwrap();
    assert!(rows[0].ends_with(','), "-infinity: before any data ({})", rows[0]);
    assert!(
        rows[1].ends_with(&format!(",{january}")),
        "2024-02-15: January's value ({})",
        rows[1]
    );

    // Entity SQL may change the session's time zone (set_config is allowed in a READ ONLY
    // transaction); the join still reads dates as UTC midnights. At 05:00Z on Feb 29,
    // February's snapshot is eligible in UTC; in Los Angeles it would start at 08:00Z.
    let rows = months_active_set(
        "zone.csv",
        format!(
            "SELECT user_id, TIMESTAMPTZ '2024-02-29 05:00:00+00' AS event_timestamp
             FROM subscriptions_profile_snapshots
             WHERE as_of = '2024-02-29' AND user_id = '{}'
               AND set_config('TimeZone', 'America/Los_Angeles', true) IS NOT NULL",
            ids[0]
        ),
        1,
    );
    let february = snapshot("2024-02-29").await.unwrap();
    assert_ne!(february, january, "the test needs the two months to differ");
    let row = &rows[0];
    assert!(row.ends_with(&format!(",{february}")), "February's value ({row})");

    // A NULL key (only entity SQL can return one) keeps its row, with NULL features, in
    // every view: the views are joined row for row, so one view losing it would lose it.
    let out = dir.path().join("null-key.csv");
    skewless(repo.path(), &db)
        .args([
            "historical",
            "--entity-sql",
            &format!(
                "SELECT u AS user_id, TIMESTAMPTZ '2024-01-31 00:00:00+00' AS event_timestamp
                 FROM unnest(ARRAY['{id}', NULL, '{id}']::text[]) WITH ORDINALITY AS t(u, n)
                 ORDER BY n",
                id = ids[0]
            ),
        ])
        .args(["--features", "subs_profile_fv:months_active,usage_agg_30d_fv:skips_7d"])
        .arg("--out")
        .arg(&out)
        .assert()
        .success()
        .stdout(predicate::str::contains("with 3 rows"));
    let text = std::fs::read_to_string(&out).unwrap();
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(rows[1], ",2024-01-31T00:00:00Z,,", "{text}");
    assert_eq!(rows[0], rows[2], "{text}");
    assert!(
        rows[0].starts_with(&format!("{},2024-01-31T00:00:00Z,{january},", ids[0])),
        "{text}"
    );
}

#[tokio::test]
async fn bad_requests_fail_clearly_and_write_nothing() {
    let (db, repo) = applied(40).await;
    let pool = db.pool().await;
    sqlx::query("CREATE SEQUENCE entity_probe")
        .execute(&pool)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("set.csv");
    let run = |args: &[&str]| {
        let mut cmd = skewless(repo.path(), &db);
        cmd.arg("historical").args(args).arg("--out").arg(&out);
        cmd.assert()
    };
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec![
                "--entity-sql",
                LAB_SQL,
                "--features",
                "subs_profile_fv:nope",
            ],
            4,
            "unknown feature `nope` in view `subs_profile_fv` (it has: months_active, monthly_fee",
        ),
        (
            vec!["--entity-sql", LAB_SQL, "--features", "ghost_fv:x"],
            4,
            "unknown feature view `ghost_fv` (known: payments_agg_90d_fv, subs_profile_fv",
        ),
        (
            vec![
                "--entity-sql",
                LAB_SQL,
                "--feature-service",
                "churn_training_v1",
                "--label",
                "nope",
            ],
            4,
            "unknown label `nope` (label views offer: churn_labels:churn_label)",
        ),
        (
            vec![
                "--entity-sql",
                "SELECT user_id FROM users",
                "--feature-service",
                "churn_training_v1",
            ],
            4,
            "entity_sql must return `user_id` and `event_timestamp` columns; it returns: user_id text",
        ),
        (
            vec![
                "--entity-sql",
                "SELECT user_id, 'soon' AS event_timestamp FROM users",
                "--feature-service",
                "churn_training_v1",
            ],
            4,
            "`event_timestamp` has type text, not a date or timestamp",
        ),
        (
            vec![
                "--entity-sql",
                "SELECT user_id, as_of AS event_timestamp FROM no_such_table",
                "--feature-service",
                "churn_training_v1",
            ],
            4,
            "entity_sql failed: relation \"no_such_table\" does not exist",
        ),
        (
            vec![
                "--entity-sql",
                "WITH gone AS (DELETE FROM labels_snapshots RETURNING user_id, as_of AS event_timestamp) SELECT * FROM gone",
                "--feature-service",
                "churn_training_v1",
            ],
            4,
            "entity_sql failed: WITH clause containing a data-modifying statement",
        ),
        (
            vec![
                "--entity-sql",
                "SELECT user_id, as_of AS event_timestamp FROM labels_snapshots WHERE nextval('entity_probe') > 0",
                "--feature-service",
                "churn_training_v1",
            ],
            4,
            "cannot execute nextval() in a read-only transaction",
        ),
        (
            vec![
                "--entity-sql",
                "SELECT user_id, NULL::date AS event_timestamp FROM labels_snapshots",
                "--feature-service",
                "churn_training_v1",
            ],
            4,
            "entity_sql returned a NULL `event_timestamp`; every entity row needs a timestamp",
        ),
        (
            // Fails after 4999 rows: past the first rows held back, while they are
            // being dealt to two backends.
            vec![
                "--entity-sql",
                "SELECT 'u' || g AS user_id, DATE '2024-01-31' + 10 / (5000 - g) AS event_timestamp FROM generate_series(1, 6000) g",
                "--feature-service",
                "churn_training_v1",
            ],
            4,
            "entity_sql failed: division by zero",
        ),
    ];
    for (args, code, message) in cases {
        let assert = run(&args).code(code);
        let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
        assert!(
            stderr.contains(message),
            "{args:?}: expected {message:?} in {stderr}"
        );
        assert!(!out.exists(), "{args:?}: nothing may be written");
    }
    let probe: Option<i64> =
        sqlx::query_scalar("SELECT last_value FROM entity_probe WHERE is_called")
            .fetch_optional(&pool)
            .await
            .unwrap();
    assert_eq!(probe, None, "the sequence never advanced");
    let labels: i64 = sqlx::query_scalar("SELECT count(*) FROM labels_snapshots")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(labels, 80, "the DELETE never ran");

    // An unparseable timestamp names its line.
    let entities = dir.path().join("entities.csv");
    std::fs::write(
        &entities,
        "user_id,event_timestamp\na,2024-01-31\nb,yesterday\n",
    )
    .unwrap();
    let assert = skewless(repo.path(), &db)
        .args(["historical", "--entities"])
        .arg(&entities)
        .args(["--feature-service", "churn_training_v1", "--out"])
        .arg(&out)
        .assert()
        .code(4);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    assert!(
        stderr.contains("line 3: `yesterday` is not a timestamp"),
        "{stderr}"
    );
    std::fs::write(&entities, "user,event_timestamp\na,2024-01-31\n").unwrap();
    let assert = skewless(repo.path(), &db)
        .args(["historical", "--entities"])
        .arg(&entities)
        .args(["--feature-service", "churn_training_v1", "--out"])
        .arg(&out)
        .assert()
        .code(4);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    assert!(stderr.contains("missing column `user_id`"), "{stderr}");
    assert!(!out.exists());
}

#[tokio::test]
async fn a_bad_row_in_a_long_entity_sql_stops_that_sql() {
    // Entity SQL run in its own transaction, its rows dealt to two backends as they come;
    // row 5000 of 50 million has no timestamp. The error must stop the SQL's query, not
    // leave it streaming into a connection nobody reads (a server would leak it).
    let (_db, _repo, pool, admin, defs) = applied_with_pool(50, 3).await;
    let sql = "SELECT 'u' || g AS user_id, CASE WHEN g < 5000 THEN DATE '2024-01-31' END AS event_timestamp FROM (SELECT generate_series(1, 50000000) AS g) AS s";
    let failed = historical::start(
        &pool,
        &defs,
        HistoricalRequest {
            entities: Entities::Sql(sql.into()),
            features: defs.select_service("churn_base_v1", false).unwrap(),
            label: None,
            plugins: Default::default(),
        },
        &HistoricalOptions {
            entity_sql_timeout_ms: 60_000,
            work_mem: "64MB".into(),
            plugin_budget: std::time::Duration::from_secs(30),
            partitions: 2,
            partition_min_rows: 4096,
        },
    )
    .await;
    let Err(e) = failed else {
        panic!("a NULL event_timestamp must fail the training set")
    };
    assert!(
        e.to_string().contains("returned a NULL `event_timestamp`"),
        "{e}"
    );
    let started = std::time::Instant::now();
    loop {
        let running: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'COPY (SELECT CAST(q.%' AND state = 'active'",
        )
        .fetch_one(&admin)
        .await
        .unwrap();
        if running == 0 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "the entity SQL kept running after the error"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Every pooled connection is usable again.
    for _ in 0..3 {
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(one, 1);
    }
}

#[tokio::test]
async fn dropping_the_consumer_cancels_the_query_and_frees_the_connection() {
    // A pool of one connection: the training set runs on that one backend (no second
    // connection for a split, none for the entity SQL), which must come back clean.
    cancel_case(1).await;
}

#[tokio::test]
async fn dropping_the_consumer_cancels_every_backend_of_a_split_training_set() {
    // Room for the entity SQL's connection and a second backend: all of them end.
    cancel_case(3).await;
}

async fn cancel_case(pool_size: u32) {
    let (_db, _repo, pool, admin, defs) = applied_with_pool(3000, pool_size).await;
    let features = defs.select_service("churn_base_v1", false).unwrap();
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .unwrap();
    // Many entity rows (each user 40 times) so the stream outlives the first batch.
    let sql = "SELECT user_id, as_of + (g || ' hours')::interval AS event_timestamp FROM subscriptions_profile_snapshots, generate_series(1, 40) g";
    let mut set = historical::start(
        &pool,
        &defs,
        HistoricalRequest {
            entities: Entities::Sql(sql.into()),
            features,
            label: None,
            plugins: Default::default(),
        },
        &HistoricalOptions {
            entity_sql_timeout_ms: 30_000,
            work_mem: "64MB".into(),
            plugin_budget: std::time::Duration::from_secs(30),
            partitions: 2,
            partition_min_rows: 2,
        },
    )
    .await
    .unwrap();
    assert_eq!(set.rows, 240_000);
    assert_eq!(set.backends, if pool_size == 1 { 1 } else { 2 });
    let first = set.batches.recv().await.unwrap().unwrap();
    assert_eq!(first.rows, historical::BATCH_ROWS);
    drop(set);
    // The pooled connections come back, clean, quickly.
    let started = std::time::Instant::now();
    let after: i32 = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            if pool.num_idle() == pool.size() as usize {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&pool)
            .await
    })
    .await
    .expect("the connections must return to the pool")
    .unwrap();
    if pool_size == 1 {
        assert_eq!(
            after, backend,
            "the same connection, returned to the pool, not replaced"
        );
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let active: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'COPY (WITH%' AND state = 'active'",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    let details: Vec<(i32, String, String)> = sqlx::query_as(
        "SELECT pid, coalesce(state, ''), left(query, 60) FROM pg_stat_activity WHERE datname = current_database()",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    assert_eq!(active, 0, "the query must not keep running: {details:?}");
}

/// `skewless historical` may need three connections (the training set's, the entity
/// SQL's, a second backend's), each a new backend to start: its pool opens those it will
/// use at once, in the background, before the training set asks for them one after
/// another. Entity rows from a file need no entity-SQL connection; `--explain` (one
/// backend) and `historical_partitions: 1` open one connection only. (The pool's hold on
/// its first connection until every task has its slot is not what this test turns on:
/// here the tasks run before that connection comes back anyway.)
#[tokio::test]
async fn the_cli_pool_opens_the_connections_a_split_needs_at_once() {
    use skewless::config::Prewarm;
    let db = TestDb::new().await;
    let repo = TempRepo::streamflow();
    let mut config = common::server::config(repo.path(), &db);
    let backends = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'skewless'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let admin = db.pool().await;
    for (partitions, warm, expected) in [
        (2, Prewarm::BackendsAndEntitySql, 3),
        (3, Prewarm::BackendsAndEntitySql, 4),
        (2, Prewarm::Backends, 2),
        (2, Prewarm::Nothing, 1),
        (1, Prewarm::BackendsAndEntitySql, 1),
    ] {
        config.server.historical_partitions = partitions;
        let pool = config.offline_connection_pool(warm).await.unwrap();
        let started = std::time::Instant::now();
        while (pool.num_idle() as i64) < expected
            && started.elapsed() < std::time::Duration::from_secs(5)
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // Time for any connection that should not be opened to show up.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(
            (
                pool.size() as i64,
                pool.num_idle() as i64,
                backends(admin.clone()).await
            ),
            (expected, expected, expected),
            "{partitions} partitions, {warm:?}: open connections, idle in the pool, backends"
        );
        pool.close().await;
    }
}
