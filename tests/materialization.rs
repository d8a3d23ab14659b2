//! `skewless materialize` / `materialize-incremental`: the online tables receive the
//! newest value of each entity in the window, never regress to older values, rewrite
//! nothing when run again, keep NULLs and Float32 exactly as training reads them, and
//! continue from the stored watermark.

mod common;

use chrono::{DateTime, TimeDelta, Utc};
use common::{TempRepo, TestDb, course_seeds, fingerprint, skewless};
use figment::providers::Format;
use sqlx::PgPool;

const ONLINE: &str = "feature_store_online";
const VIEWS: [&str; 4] = [
    "payments_agg_90d_fv",
    "subs_profile_fv",
    "support_agg_90d_fv",
    "usage_agg_30d_fv",
];
const JAN: &str = "2024-01-31";
const FEB: &str = "2024-02-29";

/// A database with two generated months (as of 2024-01-31 and 2024-02-29) ingested, and a
/// StreamFlow repo copy; `edit` may change the repo before it is applied.
async fn setup_with(users: u64, edit: impl FnOnce(&TempRepo)) -> (TestDb, TempRepo, PgPool) {
    let (db, repo) = common::ingested_and_applied(users, edit).await;
    let pool = db.pool().await;
    (db, repo, pool)
}

async fn setup() -> (TestDb, TempRepo, PgPool) {
    setup_with(50, |_| {}).await
}

/// Runs `skewless <args>`, expects success, returns stdout.
fn run(repo: &TempRepo, db: &TestDb, args: &[&str]) -> String {
    let out = skewless(repo.path(), db).args(args).assert().success();
    String::from_utf8_lossy(&out.get_output().stdout).to_string()
}

/// Runs `skewless <args>`, expects exit code `code`, returns stderr.
fn fail(repo: &TempRepo, db: &TestDb, args: &[&str], code: i32) -> String {
    let out = skewless(repo.path(), db).args(args).assert().code(code);
    String::from_utf8_lossy(&out.get_output().stderr).to_string()
}

fn assert_lines(out: &str, lines: &[&str]) {
    for line in lines {
        assert!(
            out.lines().any(|l| l == *line),
            "missing line {line:?} in:\n{out}"
        );
    }
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// Every online table holds exactly the snapshot of `as_of`, value for value (Float32
/// columns as the snapshot cast to real), with `event_ts` = midnight UTC of `as_of`.
async fn assert_online_is(pool: &PgPool, as_of: &str) {
    let views = [
        (
            "subs_profile_fv",
            "subscriptions_profile_snapshots",
            "user_id, months_active, CAST(monthly_fee AS float4), paperless_billing, plan_stream_tv, plan_stream_movies, net_service",
        ),
        (
            "usage_agg_30d_fv",
            "usage_agg_30d_snapshots",
            "user_id, CAST(watch_hours_30d AS float4), CAST(avg_session_mins_7d AS float4), unique_devices_30d, skips_7d, rebuffer_events_7d",
        ),
        (
            "payments_agg_90d_fv",
            "payments_agg_90d_snapshots",
            "user_id, failed_payments_90d",
        ),
        (
            "support_agg_90d_fv",
            "support_agg_90d_snapshots",
            "user_id, support_tickets_90d, CAST(ticket_avg_resolution_hrs_90d AS float4)",
        ),
    ];
    for (view, snapshots, columns) in views {
        let online_columns = columns.replace("CAST(", "").replace(" AS float4)", "");
        let snapshot = format!(
            "SELECT {columns}, CAST(as_of AS timestamptz) FROM {snapshots} WHERE as_of = '{as_of}'"
        );
        let online = format!(
            "SELECT {online_columns}, event_ts FROM {ONLINE}.streamflow_{view} WHERE created_ts IS NULL"
        );
        let differ = count(
            pool,
            &format!(
                "SELECT count(*) FROM (({snapshot} EXCEPT ALL {online}) UNION ALL ({online} EXCEPT ALL {snapshot})) d"
            ),
        )
        .await;
        assert_eq!(differ, 0, "{view} does not hold the snapshot of {as_of}");
    }
}

async fn watermark(pool: &PgPool, view: &str) -> Option<(Option<DateTime<Utc>>, DateTime<Utc>)> {
    sqlx::query_as(
        "SELECT start_ts, end_ts FROM skewless_registry.materializations
         WHERE project = 'streamflow' AND view = $1",
    )
    .bind(view)
    .fetch_optional(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn january_then_february_moves_values_to_february() {
    let (db, repo, pool) = setup().await;
    // The months differ (else this test would prove nothing).
    let changed = count(
        &pool,
        "SELECT count(*) FROM usage_agg_30d_snapshots j JOIN usage_agg_30d_snapshots f USING (user_id)
         WHERE j.as_of = '2024-01-31' AND f.as_of = '2024-02-29' AND j.watch_hours_30d <> f.watch_hours_30d",
    )
    .await;
    assert!(changed > 25, "only {changed} users changed");

    let out = run(
        &repo,
        &db,
        &["materialize", "2024-01-01T00:00:00", "2024-02-01T00:00:00"],
    );
    assert_lines(
        &out,
        &[
            "Materializing 4 feature views from 2024-01-01 00:00:00+00:00 to 2024-02-01 00:00:00+00:00 into the postgres online store.",
            "subs_profile_fv: 50 rows",
            "usage_agg_30d_fv: 50 rows",
            "payments_agg_90d_fv: 50 rows",
            "support_agg_90d_fv: 50 rows",
        ],
    );
    assert!(
        out.contains("[OK] Materialized 200 rows into 4 feature views"),
        "{out}"
    );
    assert_online_is(&pool, JAN).await;

    let out = run(&repo, &db, &["materialize", "2024-02-01", "2024-03-01"]);
    assert_lines(
        &out,
        &["subs_profile_fv: 50 rows", "usage_agg_30d_fv: 50 rows"],
    );
    assert_online_is(&pool, FEB).await;
    for view in VIEWS {
        assert_eq!(
            watermark(&pool, view).await,
            Some((
                Some(utc("2024-02-01T00:00:00Z")),
                utc("2024-03-01T00:00:00Z")
            )),
            "{view}"
        );
    }
}

#[tokio::test]
async fn an_older_window_never_overwrites_newer_values() {
    let (db, repo, pool) = setup().await;
    run(&repo, &db, &["materialize", "2024-02-01", "2024-03-01"]);
    assert_online_is(&pool, FEB).await;
    let before = fingerprint(&pool, ONLINE).await;

    let out = run(&repo, &db, &["materialize", "2024-01-01", "2024-02-01"]);
    assert_lines(
        &out,
        &[
            "subs_profile_fv: 0 rows",
            "usage_agg_30d_fv: 0 rows",
            "payments_agg_90d_fv: 0 rows",
            "support_agg_90d_fv: 0 rows",
        ],
    );
    assert_eq!(
        before,
        fingerprint(&pool, ONLINE).await,
        "not one online row was rewritten"
    );
    assert_online_is(&pool, FEB).await;
    let (_, end) = watermark(&pool, "subs_profile_fv").await.unwrap();
    assert_eq!(
        end,
        utc("2024-03-01T00:00:00Z"),
        "the watermark never moves back"
    );
}

#[tokio::test]
async fn the_same_window_twice_writes_nothing_the_second_time() {
    let (db, repo, pool) = setup().await;
    // A window holding both months: the newest row per user wins.
    let out = run(
        &repo,
        &db,
        &[
            "materialize",
            "2024-01-01T00:00:00Z",
            "2024-03-01T00:00:00Z",
        ],
    );
    assert_lines(&out, &["subs_profile_fv: 50 rows"]);
    assert_online_is(&pool, FEB).await;
    let before = fingerprint(&pool, ONLINE).await;

    let out = run(
        &repo,
        &db,
        &[
            "materialize",
            "2024-01-01T00:00:00Z",
            "2024-03-01T00:00:00Z",
        ],
    );
    assert_lines(
        &out,
        &[
            "subs_profile_fv: 0 rows",
            "usage_agg_30d_fv: 0 rows",
            "payments_agg_90d_fv: 0 rows",
            "support_agg_90d_fv: 0 rows",
        ],
    );
    assert!(out.contains("[OK] Materialized 0 rows"), "{out}");
    assert_eq!(before, fingerprint(&pool, ONLINE).await);
}

#[tokio::test]
async fn window_bounds_are_inclusive_and_dates_are_midnight_utc() {
    let (db, repo, pool) = setup().await;
    // February's rows are stamped 2024-02-29 00:00 UTC: just before is empty...
    let out = run(
        &repo,
        &db,
        &[
            "materialize",
            "2024-02-01",
            "2024-02-28T23:59:59",
            "--views",
            "subs_profile_fv",
        ],
    );
    assert_lines(&out, &["subs_profile_fv: 0 rows"]);
    // ... a window of that single instant holds them (both bounds inclusive) ...
    let out = run(
        &repo,
        &db,
        &[
            "materialize",
            "2024-02-29",
            "2024-02-29T00:00:00Z",
            "--views",
            "subs_profile_fv",
        ],
    );
    assert_lines(&out, &["subs_profile_fv: 50 rows"]);
    // ... and an offset is honoured: 01:00+01:00 is that same instant.
    let out = run(
        &repo,
        &db,
        &[
            "materialize",
            "2024-02-29T01:00:00+01:00",
            "2024-03-01",
            "--views",
            "subs_profile_fv",
        ],
    );
    assert_lines(
        &out,
        &[
            "Materializing 1 feature view from 2024-02-29 00:00:00+00:00 to 2024-03-01 00:00:00+00:00 into the postgres online store.",
            "subs_profile_fv: 0 rows",
        ],
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM feature_store_online.streamflow_usage_agg_30d_fv"
        )
        .await,
        0,
        "--views limits the run"
    );
    let err = fail(&repo, &db, &["materialize", "2024-03-01", "2024-02-01"], 2);
    assert!(
        err.contains("the window starts (2024-03-01 00:00:00+00:00) after it ends (2024-02-01 00:00:00+00:00)"),
        "{err}"
    );
    let err = fail(&repo, &db, &["materialize", "March", "2024-02-01"], 2);
    assert!(err.contains("`March` is not a timestamp"), "{err}");
}

#[tokio::test]
async fn incremental_continues_from_the_stored_end() {
    // payments_agg_90d_fv without ttl: it starts from the beginning of time.
    let (db, repo, pool) = setup_with(50, |repo| {
        let views = repo.read("feature_views.yaml");
        let at = views.find("source: payments_agg_90d_source").unwrap();
        let (head, tail) = views.split_at(at);
        repo.write(
            "feature_views.yaml",
            &format!("{head}{}", tail.replacen("ttl: 3650d", "ttl: 0", 1)),
        );
    })
    .await;
    let ttl_start = utc("2024-02-01T00:00:00Z") - TimeDelta::days(3650);
    let out = run(&repo, &db, &["materialize-incremental", "2024-02-01"]);
    assert_lines(
        &out,
        &[
            "Materializing 4 feature views to 2024-02-01 00:00:00+00:00 into the postgres online store.",
            &format!(
                "subs_profile_fv from {} to 2024-02-01 00:00:00+00:00: 50 rows",
                ttl_start.format("%Y-%m-%d %H:%M:%S+00:00")
            ),
            "payments_agg_90d_fv from -infinity to 2024-02-01 00:00:00+00:00: 50 rows",
        ],
    );
    assert_online_is(&pool, JAN).await;
    assert_eq!(
        watermark(&pool, "subs_profile_fv").await,
        Some((Some(ttl_start), utc("2024-02-01T00:00:00Z")))
    );
    assert_eq!(
        watermark(&pool, "payments_agg_90d_fv").await,
        Some((None, utc("2024-02-01T00:00:00Z"))),
        "an unbounded start is stored as NULL"
    );

    let out = run(&repo, &db, &["materialize-incremental", "2024-03-01"]);
    for view in VIEWS {
        assert_lines(
            &out,
            &[&format!(
                "{view} from 2024-02-01 00:00:00+00:00 to 2024-03-01 00:00:00+00:00: 50 rows"
            )],
        );
    }
    assert_online_is(&pool, FEB).await;

    // Already past that END: nothing to do, the watermark stays.
    let before = fingerprint(&pool, ONLINE).await;
    let out = run(&repo, &db, &["materialize-incremental", "2024-02-15"]);
    assert_lines(
        &out,
        &["subs_profile_fv: already materialized up to 2024-03-01 00:00:00+00:00, nothing to do"],
    );
    assert_eq!(before, fingerprint(&pool, ONLINE).await);

    // The same watermarks through the library.
    let config = skewless::config::Config::from_figment(
        figment::Figment::from(figment::providers::Yaml::file(
            repo.path().join("feature_store.yaml"),
        )),
        Some(db.url.clone()),
    )
    .unwrap();
    let marks = skewless::online::watermarks(&pool, &config).await.unwrap();
    assert_eq!(marks.len(), 4);
    for (view, end) in marks {
        assert_eq!(end, Some(utc("2024-03-01T00:00:00Z")), "{view}");
    }
}

#[tokio::test]
async fn the_library_reports_windows_rows_and_progress() {
    let (db, repo, pool) = setup().await;
    let config = skewless::config::Config::from_figment(
        figment::Figment::from(figment::providers::Yaml::file(
            repo.path().join("feature_store.yaml"),
        )),
        Some(db.url.clone()),
    )
    .unwrap();
    let defs = skewless::registry::Registry::new(pool.clone(), &config)
        .load()
        .await
        .unwrap();
    let progress = indicatif::ProgressBar::hidden();
    let window =
        skewless::online::Window::between(utc("2024-01-01T00:00:00Z"), utc("2024-02-01T00:00:00Z"));
    let report = skewless::online::materialize(
        &pool,
        &config,
        &defs,
        window,
        &["usage_agg_30d_fv".into(), "subs_profile_fv".into()],
        &progress,
    )
    .await
    .unwrap();
    assert_eq!(progress.length(), Some(2));
    assert_eq!(progress.position(), 2);
    let views: Vec<_> = report.views.iter().map(|v| v.view.as_str()).collect();
    assert_eq!(views, ["subs_profile_fv", "usage_agg_30d_fv"]);
    assert!(
        report
            .views
            .iter()
            .all(|v| v.window == window && v.rows == 50)
    );
    assert_eq!(report.rows(), 100);
    let marks = skewless::online::watermarks(&pool, &config).await.unwrap();
    let end = |name: &str| marks.iter().find(|(v, _)| v == name).unwrap().1;
    assert_eq!(end("subs_profile_fv"), Some(window.end));
    assert_eq!(end("payments_agg_90d_fv"), None);

    // Definitions that are not what the registry holds are refused.
    let mut edited = defs.clone();
    let subs = edited
        .feature_views
        .iter_mut()
        .find(|v| v.name == "subs_profile_fv")
        .unwrap();
    subs.schema.pop();
    let err = skewless::online::materialize(&pool, &config, &edited, window, &[], &progress)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("differs from the registered one; run `skewless apply`"),
        "{err}"
    );
}

#[tokio::test]
async fn unknown_views_are_refused_with_the_valid_ones() {
    let (db, repo, pool) = setup().await;
    let err = fail(
        &repo,
        &db,
        &[
            "materialize",
            "2024-01-01",
            "2024-03-01",
            "--views",
            "subs_profile_fv,churn_labels,nope",
        ],
        2,
    );
    assert!(
        err.contains("`churn_labels`, `nope` are not online feature views (the online feature views are: payments_agg_90d_fv, subs_profile_fv, support_agg_90d_fv, usage_agg_30d_fv)"),
        "{err}"
    );
    let err = fail(
        &repo,
        &db,
        &["materialize-incremental", "2024-03-01", "--views", "nope"],
        2,
    );
    assert!(
        err.contains("`nope` is not an online feature view"),
        "{err}"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM skewless_registry.materializations"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM feature_store_online.streamflow_subs_profile_fv"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn materializing_before_apply_says_to_apply() {
    let db = TestDb::new().await;
    let repo = TempRepo::streamflow();
    let err = fail(&repo, &db, &["materialize", "2024-01-01", "2024-02-01"], 3);
    assert!(
        err.contains("nothing is applied for project `streamflow`: run `skewless apply`"),
        "{err}"
    );
}

#[tokio::test]
async fn different_offline_and_online_databases_are_refused() {
    let (db, repo, _pool) = setup().await;
    let err = String::from_utf8_lossy(
        &skewless(repo.path(), &db)
            .env_remove("DATABASE_URL")
            .env("SKEWLESS_OFFLINE_STORE__DATABASE", &db.name)
            .env("SKEWLESS_ONLINE_STORE__DATABASE", "elsewhere")
            .args(["materialize", "2024-01-01", "2024-02-01"])
            .assert()
            .code(3)
            .get_output()
            .stderr,
    )
    .to_string();
    assert!(
        err.contains(&format!(
            "the offline store (localhost:5432/{}) and the online store (localhost:5432/elsewhere) are different databases",
            db.name
        )),
        "{err}"
    );
}

#[tokio::test]
async fn a_rebuilt_view_loses_its_watermark_and_contents() {
    let (db, repo, pool) = setup().await;
    run(&repo, &db, &["materialize", "2024-01-01", "2024-03-01"]);
    // churn_signals reads monthly_fee as a Float32: drop the derived views with it.
    repo.without_derived_views();
    repo.edit(
        "feature_views.yaml",
        "{name: monthly_fee, dtype: Float32}",
        "{name: monthly_fee, dtype: Float64}",
    );
    let out = run(&repo, &db, &["apply"]);
    assert!(
        out.contains("Rebuilding infrastructure for subs_profile_fv"),
        "{out}"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM feature_store_online.streamflow_subs_profile_fv"
        )
        .await,
        0
    );
    assert_eq!(watermark(&pool, "subs_profile_fv").await, None);
    assert!(watermark(&pool, "usage_agg_30d_fv").await.is_some());

    // Incremental: the rebuilt view starts over from END - ttl, the others are done.
    let out = run(&repo, &db, &["materialize-incremental", "2024-03-01"]);
    let ttl_start = utc("2024-03-01T00:00:00Z") - TimeDelta::days(3650);
    assert_lines(
        &out,
        &[
            &format!(
                "subs_profile_fv from {} to 2024-03-01 00:00:00+00:00: 50 rows",
                ttl_start.format("%Y-%m-%d %H:%M:%S+00:00")
            ),
            "usage_agg_30d_fv from 2024-03-01 00:00:00+00:00 to 2024-03-01 00:00:00+00:00: 0 rows",
        ],
    );
    // Now a float8, equal to the snapshot exactly.
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM feature_store_online.streamflow_subs_profile_fv o
             JOIN subscriptions_profile_snapshots s ON s.user_id = o.user_id AND s.as_of = '2024-02-29'
             WHERE o.monthly_fee IS NOT DISTINCT FROM s.monthly_fee"
        )
        .await,
        50
    );
}

#[tokio::test]
async fn nulls_stay_null_online() {
    let (db, repo, pool) = setup_with(300, |_| {}).await;
    run(&repo, &db, &["materialize", "2024-02-01", "2024-03-01"]);
    let no_internet = count(
        &pool,
        "SELECT count(*) FROM subscriptions_profile_snapshots WHERE as_of = '2024-02-29' AND net_service = 'No'",
    )
    .await;
    assert!(
        no_internet > 0,
        "the generated data has users without internet"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM feature_store_online.streamflow_subs_profile_fv
             WHERE net_service = 'No' AND plan_stream_tv IS NULL AND plan_stream_movies IS NULL"
        )
        .await,
        no_internet
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM feature_store_online.streamflow_subs_profile_fv WHERE plan_stream_tv IS NULL"
        )
        .await,
        count(
            &pool,
            "SELECT count(*) FROM subscriptions_profile_snapshots WHERE as_of = '2024-02-29' AND plan_stream_tv IS NULL"
        )
        .await,
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM feature_store_online.streamflow_support_agg_90d_fv WHERE ticket_avg_resolution_hrs_90d IS NULL"
        )
        .await,
        count(
            &pool,
            "SELECT count(*) FROM support_agg_90d_snapshots WHERE as_of = '2024-02-29' AND ticket_avg_resolution_hrs_90d IS NULL"
        )
        .await,
    );
    assert_online_is(&pool, FEB).await;
}

#[tokio::test]
async fn float32_values_online_are_the_snapshot_cast_to_real() {
    let (db, repo, pool) = setup_with(300, |_| {}).await;
    run(&repo, &db, &["materialize", "2024-01-01", "2024-02-01"]);
    for (view, snapshots, column) in [
        (
            "subs_profile_fv",
            "subscriptions_profile_snapshots",
            "monthly_fee",
        ),
        (
            "usage_agg_30d_fv",
            "usage_agg_30d_snapshots",
            "watch_hours_30d",
        ),
        (
            "usage_agg_30d_fv",
            "usage_agg_30d_snapshots",
            "avg_session_mins_7d",
        ),
        (
            "support_agg_90d_fv",
            "support_agg_90d_snapshots",
            "ticket_avg_resolution_hrs_90d",
        ),
    ] {
        let rows: Vec<(Option<f64>, Option<f32>)> = sqlx::query_as(&format!(
            "SELECT s.{column}, o.{column} FROM {ONLINE}.streamflow_{view} o
             JOIN {snapshots} s ON s.user_id = o.user_id AND s.as_of = '2024-01-31'"
        ))
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(rows.len(), 300, "{view}");
        for (snapshot, online) in rows {
            assert_eq!(
                snapshot.map(|x| x as f32),
                online,
                "{view}.{column}: the online value is the snapshot rounded to f32"
            );
        }
        let differ = count(
            &pool,
            &format!(
                "SELECT count(*) FROM {ONLINE}.streamflow_{view} o
                 JOIN {snapshots} s ON s.user_id = o.user_id AND s.as_of = '2024-01-31'
                 WHERE o.{column} IS DISTINCT FROM CAST(s.{column} AS float4)"
            ),
        )
        .await;
        assert_eq!(differ, 0, "{view}.{column}");
    }
}

#[tokio::test]
async fn course_lab_materializes_every_user() {
    let Some(seeds) = course_seeds() else {
        eprintln!("STREAMFLOW_SEEDS is not set: skipping the real-data test (CI sets it)");
        return;
    };
    let db = TestDb::new().await;
    let repo = TempRepo::streamflow();
    common::ingest_both_months(&repo, &db, &seeds);
    run(&repo, &db, &["apply"]);
    let out = run(
        &repo,
        &db,
        &["materialize", "2024-01-01T00:00:00", "2024-02-01T00:00:00"],
    );
    assert_lines(
        &out,
        &[
            "Materializing 4 feature views from 2024-01-01 00:00:00+00:00 to 2024-02-01 00:00:00+00:00 into the postgres online store.",
            "subs_profile_fv: 7043 rows",
            "usage_agg_30d_fv: 7043 rows",
            "payments_agg_90d_fv: 7043 rows",
            "support_agg_90d_fv: 7043 rows",
        ],
    );
    let pool = db.pool().await;
    let (months, fee, paperless): (Option<i64>, Option<f32>, Option<bool>) = sqlx::query_as(
        "SELECT months_active, monthly_fee, paperless_billing
         FROM feature_store_online.streamflow_subs_profile_fv WHERE user_id = '7590-VHVEG'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (months, fee, paperless),
        (Some(1), Some(29.85_f32), Some(true))
    );
    for view in VIEWS {
        assert_eq!(
            count(
                &pool,
                &format!("SELECT count(*) FROM {ONLINE}.streamflow_{view}")
            )
            .await,
            7043,
            "{view}"
        );
    }
    assert_online_is(&pool, JAN).await;
}
