//! `skewless plan` / `apply`: the registry in PostgreSQL and the online tables change
//! together, in one transaction, and only when the definitions do.

mod common;

use common::{TempRepo, TestDb, fingerprint, generated_seeds, skewless};
use predicates::prelude::*;

/// A database with one generated month ingested, and a StreamFlow repo copy.
async fn setup() -> (TestDb, TempRepo) {
    let db = TestDb::new().await;
    let repo = TempRepo::streamflow();
    let seeds = generated_seeds(50, 1);
    skewless(repo.path(), &db)
        .args(["ingest", "--seeds"])
        .arg(seeds.path().join("month_000"))
        .args(["--as-of", "2024-01-31"])
        .assert()
        .success();
    (db, repo)
}

fn stdout(assert: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&assert.get_output().stdout).to_string()
}

fn stderr(assert: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&assert.get_output().stderr).to_string()
}

async fn column_type(pool: &sqlx::PgPool, table: &str, column: &str) -> Option<String> {
    sqlx::query_scalar(
        "SELECT data_type::text FROM information_schema.columns
         WHERE table_schema = 'feature_store_online' AND table_name = $1 AND column_name = $2",
    )
    .bind(table)
    .bind(column)
    .fetch_optional(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn apply_twice_then_nothing_to_change() {
    let (db, repo) = setup().await;
    let plan = skewless(repo.path(), &db).arg("plan").assert().success();
    let out = stdout(&plan);
    assert!(
        out.contains("+ feature view subs_profile_fv (new)"),
        "{out}"
    );
    assert!(out.contains("+ label view churn_labels (new)"), "{out}");
    assert!(
        out.contains("Deploying infrastructure for subs_profile_fv"),
        "{out}"
    );

    let first = skewless(repo.path(), &db).arg("apply").assert().success();
    let out = stdout(&first);
    for line in [
        "Created entity user",
        "Created data source subs_profile_source",
        "Created feature view subs_profile_fv",
        "Created feature view usage_agg_30d_fv",
        "Created feature view payments_agg_90d_fv",
        "Created feature view support_agg_90d_fv",
        "Created feature service churn_training_v1",
        "Created feature service churn_serving_v1",
        "Deploying infrastructure for subs_profile_fv",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert!(
        !out.contains("Deploying infrastructure for churn_labels"),
        "labels are not online"
    );

    let pool = db.pool().await;
    assert_eq!(
        column_type(&pool, "streamflow_subs_profile_fv", "monthly_fee")
            .await
            .as_deref(),
        Some("real"),
        "Float32 is stored as real"
    );
    assert_eq!(
        column_type(&pool, "streamflow_subs_profile_fv", "plan_stream_tv")
            .await
            .as_deref(),
        Some("boolean")
    );
    let before = fingerprint(&pool, "skewless_registry").await;
    let second = skewless(repo.path(), &db).arg("apply").assert().success();
    let out = stdout(&second);
    assert!(out.contains("No changes to registry"), "{out}");
    assert!(out.contains("No changes to infrastructure"), "{out}");
    assert_eq!(
        before,
        fingerprint(&pool, "skewless_registry").await,
        "a no-op apply writes nothing"
    );

    let listed = skewless(repo.path(), &db)
        .arg("registry")
        .assert()
        .success();
    let out = stdout(&listed);
    // Columns are as wide as their widest entry: compare words, not spacing.
    let rows: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    for row in [
        "KIND NAME VERSION",
        "feature view subs_profile_fv 1",
        "feature service churn_serving_v1 1",
        "on-demand feature view churn_signals_fv 1",
    ] {
        assert!(rows.iter().any(|r| r == row), "no `{row}` in:\n{out}");
    }
}

#[tokio::test]
async fn dtype_change_and_removed_view_show_in_plan_and_apply() {
    let (db, repo) = setup().await;
    skewless(repo.path(), &db).arg("apply").assert().success();

    // (A field no plugin reads: changing one a plugin reads fails the type check.)
    repo.edit(
        "feature_views.yaml",
        "{name: avg_session_mins_7d, dtype: Float32}",
        "{name: avg_session_mins_7d, dtype: Float64}",
    );
    // Remove support_agg_90d_fv from the views and from the serving service.
    let views = repo.read("feature_views.yaml");
    let start = views.find("  - name: support_agg_90d_fv").unwrap();
    let end = views.find("# Labels are joined").unwrap();
    repo.write(
        "feature_views.yaml",
        &format!("{}{}", &views[..start], &views[end..]),
    );
    let services = repo.read("feature_services.yaml");
    repo.write(
        "feature_services.yaml",
        &services.replace("      - support_agg_90d_fv\n", ""),
    );

    let plan = skewless(repo.path(), &db).arg("plan").assert().success();
    let out = stdout(&plan);
    assert!(
        out.contains("~ feature view usage_agg_30d_fv (changed)"),
        "{out}"
    );
    assert!(
        out.contains("~ schema.avg_session_mins_7d.dtype: \"Float32\" -> \"Float64\""),
        "{out}"
    );
    assert!(
        out.contains("- feature view support_agg_90d_fv (removed)"),
        "{out}"
    );
    assert!(
        out.contains("~ feature service churn_serving_v1 (changed)"),
        "{out}"
    );
    assert!(
        out.contains("Rebuilding infrastructure for usage_agg_30d_fv"),
        "{out}"
    );
    assert!(
        out.contains("Removing infrastructure for support_agg_90d_fv"),
        "{out}"
    );

    let apply = skewless(repo.path(), &db).arg("apply").assert().success();
    let out = stdout(&apply);
    assert!(
        out.contains("Updated feature view usage_agg_30d_fv"),
        "{out}"
    );
    assert!(
        out.contains("Deleted feature view support_agg_90d_fv"),
        "{out}"
    );

    let pool = db.pool().await;
    assert_eq!(
        column_type(&pool, "streamflow_usage_agg_30d_fv", "avg_session_mins_7d")
            .await
            .as_deref(),
        Some("double precision")
    );
    assert_eq!(
        column_type(
            &pool,
            "streamflow_support_agg_90d_fv",
            "support_tickets_90d"
        )
        .await,
        None,
        "the removed view's table is dropped"
    );
    let version: i32 = sqlx::query_scalar(
        "SELECT version FROM skewless_registry.objects WHERE kind = 'feature_view' AND name = 'usage_agg_30d_fv'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(version, 2);
    let history: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM skewless_registry.object_history WHERE name = 'support_agg_90d_fv'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(history, 2, "created, then deleted");
    skewless(repo.path(), &db)
        .arg("apply")
        .assert()
        .success()
        .stdout(predicate::str::contains("No changes to registry"));
}

#[tokio::test]
async fn broken_source_query_fails_apply_and_touches_nothing() {
    let (db, repo) = setup().await;
    skewless(repo.path(), &db).arg("apply").assert().success();
    let pool = db.pool().await;
    let registry = fingerprint(&pool, "skewless_registry").await;
    let online = fingerprint(&pool, "feature_store_online").await;

    repo.edit(
        "data_sources.yaml",
        "FROM usage_agg_30d_snapshots",
        "FROM usage_agg_30d_snapshotz",
    );
    repo.edit(
        "feature_views.yaml",
        "{name: skips_7d, dtype: Int64}",
        "{name: skips_7d, dtype: Int32}",
    );
    let failed = skewless(repo.path(), &db).arg("apply").assert().code(3);
    let err = stderr(&failed);
    assert!(
        err.contains("data_sources.yaml: data source `usage_agg_30d_source`"),
        "{err}"
    );
    assert!(
        err.contains("query does not run: relation \"usage_agg_30d_snapshotz\" does not exist"),
        "Postgres's own message: {err}"
    );
    assert_eq!(registry, fingerprint(&pool, "skewless_registry").await);
    assert_eq!(online, fingerprint(&pool, "feature_store_online").await);
}

#[tokio::test]
async fn source_columns_are_checked_against_postgres_types() {
    let (db, repo) = setup().await;
    // A Bool column declared Int64, a missing column, a text timestamp.
    repo.edit(
        "feature_views.yaml",
        "{name: paperless_billing, dtype: Bool}",
        "{name: paperless_billing, dtype: Int64}",
    );
    repo.edit(
        "feature_views.yaml",
        "{name: failed_payments_90d, dtype: Int64}",
        "{name: failed_payments_90d, dtype: Int64}\n      - {name: refunds_90d, dtype: Int64}",
    );
    repo.edit(
        "data_sources.yaml",
        "SELECT user_id, as_of, support_tickets_90d",
        "SELECT user_id, as_of::text AS as_of, support_tickets_90d",
    );
    let failed = skewless(repo.path(), &db).arg("plan").assert().code(3);
    let err = stderr(&failed);
    for needle in [
        "data source `subs_profile_source`: used by view `subs_profile_fv`: column `paperless_billing` has type bool, which cannot hold the declared dtype Int64",
        "data source `payments_agg_90d_source`: used by view `payments_agg_90d_fv`: feature `refunds_90d` is not a column of the query",
        "data source `support_agg_90d_source`: timestamp_field `as_of` has type text, not a date or timestamp",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    let pool = db.pool().await;
    let registered: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('skewless_registry.objects')::text")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(registered, None, "plan never creates the registry");
}

#[tokio::test]
async fn unknown_config_key_names_file_and_key() {
    let (db, repo) = setup().await;
    repo.edit(
        "feature_store.yaml",
        "  max_entities: 1000",
        "  max_entitys: 1000",
    );
    let failed = skewless(repo.path(), &db).arg("plan").assert().code(3);
    let err = stderr(&failed);
    assert!(err.contains("server.max_entitys"), "{err}");
    assert!(err.contains("feature_store.yaml"), "{err}");
    assert!(err.contains("unknown field"), "{err}");
}
