//! `skewless ingest`: the course months land in raw and snapshot tables exactly, NULLs
//! stay NULL, re-ingesting changes nothing, and bad files change nothing at all.

mod common;

use common::{TempRepo, TestDb, course_seeds, fingerprint, generated_seeds, skewless};
use predicates::prelude::*;

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn course_data_lands_exactly() {
    let Some(seeds) = course_seeds() else {
        eprintln!("STREAMFLOW_SEEDS is not set: skipping the real-data test (CI sets it)");
        return;
    };
    let db = TestDb::new().await;
    let repo = TempRepo::streamflow();
    common::ingest_both_months(&repo, &db, &seeds);
    let pool = db.pool().await;
    for table in [
        "subscriptions_profile_snapshots",
        "usage_agg_30d_snapshots",
        "payments_agg_90d_snapshots",
        "support_agg_90d_snapshots",
        "labels_snapshots",
    ] {
        for as_of in ["2024-01-31", "2024-02-29"] {
            let n = count(
                &pool,
                &format!("SELECT count(*) FROM {table} WHERE as_of = '{as_of}'"),
            )
            .await;
            assert_eq!(n, 7043, "{table} at {as_of}");
        }
    }
    let nulls = "SELECT count(*) FROM subscriptions_profile_snapshots WHERE as_of = '2024-01-31'";
    assert_eq!(
        count(&pool, &format!("{nulls} AND plan_stream_tv IS NULL")).await,
        1526
    );
    assert_eq!(
        count(&pool, &format!("{nulls} AND plan_stream_movies IS NULL")).await,
        1526
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM labels_snapshots WHERE as_of = '2024-01-31' AND churn_label"
        )
        .await,
        1869
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM labels_snapshots WHERE as_of = '2024-02-29' AND churn_label"
        )
        .await,
        1701
    );
    // Raw tables hold the newest month; the lab's first user as the course shows it.
    let (months, fee, paperless, tv): (i64, f64, bool, Option<bool>) = sqlx::query_as(
        "SELECT months_active, monthly_fee, paperless_billing, plan_stream_tv FROM subscriptions WHERE user_id = '7590-VHVEG'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((months, fee, paperless, tv), (1, 29.85, true, Some(false)));
    let watch: f64 = sqlx::query_scalar(
        "SELECT watch_hours_30d FROM usage_agg_30d_snapshots WHERE user_id = '7590-VHVEG' AND as_of = '2024-01-31'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        watch, 24.483650766787413,
        "floats survive ingestion bit for bit"
    );

    // Re-ingesting either month rewrites nothing: same contents, same row versions.
    let before = fingerprint(&pool, "public").await;
    for (month, as_of) in [("month_001", "2024-02-29"), ("month_000", "2024-01-31")] {
        skewless(repo.path(), &db)
            .args(["ingest", "--seeds"])
            .arg(seeds.join(month))
            .args(["--as-of", as_of])
            .assert()
            .success()
            .stdout(predicate::str::contains("nothing changed"));
    }
    assert_eq!(before, fingerprint(&pool, "public").await);
}

#[tokio::test]
async fn an_older_month_never_overwrites_newer_raw_values() {
    let seeds = generated_seeds(300, 2);
    let db = TestDb::new().await;
    let repo = TempRepo::streamflow();
    for (month, as_of) in [("month_001", "2024-02-29"), ("month_000", "2024-01-31")] {
        skewless(repo.path(), &db)
            .args(["ingest", "--seeds"])
            .arg(seeds.path().join(month))
            .args(["--as-of", as_of])
            .assert()
            .success();
    }
    let pool = db.pool().await;
    let stale: i64 = count(
        &pool,
        "SELECT count(*) FROM subscriptions s JOIN subscriptions_profile_snapshots p
           ON p.user_id = s.user_id AND p.as_of = '2024-02-29'
         WHERE s.months_active IS DISTINCT FROM p.months_active",
    )
    .await;
    assert_eq!(stale, 0, "raw tables must keep February's values");
    assert_eq!(
        count(&pool, "SELECT count(DISTINCT as_of) FROM labels_snapshots").await,
        2
    );
}

/// Breaks one file of a good month in some way, ingests, and checks the failure.
async fn assert_rejected(break_it: impl FnOnce(&std::path::Path), expected: &[&str]) {
    let seeds = generated_seeds(200, 1);
    let db = TestDb::new().await;
    let repo = TempRepo::streamflow();
    // A first, good month, so "nothing changed" is checked against real rows.
    let good = generated_seeds(150, 1);
    skewless(repo.path(), &db)
        .args(["ingest", "--seeds"])
        .arg(good.path().join("month_000"))
        .args(["--as-of", "2023-12-31"])
        .assert()
        .success();
    let pool = db.pool().await;
    let before = fingerprint(&pool, "public").await;

    let month = seeds.path().join("month_000");
    break_it(&month);
    let assert = skewless(repo.path(), &db)
        .args(["ingest", "--seeds"])
        .arg(&month)
        .args(["--as-of", "2024-01-31"])
        .assert()
        .code(4);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    for needle in expected {
        assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    }
    assert_eq!(
        before,
        fingerprint(&pool, "public").await,
        "not one row may change"
    );
}

fn rewrite(path: &std::path::Path, f: impl FnOnce(Vec<String>) -> Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap();
    let lines = f(text.lines().map(str::to_string).collect());
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[tokio::test]
async fn missing_column_is_rejected() {
    assert_rejected(
        |month| {
            rewrite(&month.join("usage_agg_30d.csv"), |lines| {
                lines
                    .into_iter()
                    .map(|l| l.rsplit_once(',').unwrap().0.to_string())
                    .collect()
            })
        },
        &["usage_agg_30d.csv", "missing column `rebuffer_events_7d`"],
    )
    .await;
}

#[tokio::test]
async fn bad_number_is_rejected_with_its_line() {
    // The last file ingested: everything before it was already copied, and must roll back.
    assert_rejected(
        |month| {
            rewrite(&month.join("support_agg_90d.csv"), |mut lines| {
                lines[57] = lines[57].replacen(",", ",lots", 1);
                lines
            })
        },
        &[
            "support_agg_90d.csv, line 58, column support_tickets_90d",
            "is not a whole number",
        ],
    )
    .await;
}

#[tokio::test]
async fn negative_fee_is_rejected() {
    assert_rejected(
        |month| {
            rewrite(&month.join("subscriptions.csv"), |mut lines| {
                let mut cells: Vec<String> = lines[3].split(',').map(str::to_string).collect();
                cells[6] = "-5.5".into();
                lines[3] = cells.join(",");
                lines
            })
        },
        &["subscriptions.csv, line 4, column monthly_fee", "negative"],
    )
    .await;
}

#[tokio::test]
async fn duplicate_user_is_rejected() {
    assert_rejected(
        |month| {
            rewrite(&month.join("labels.csv"), |mut lines| {
                let first = lines[1].clone();
                lines.push(first);
                lines
            })
        },
        &[
            "labels.csv, line 202, column user_id",
            "duplicate user_id",
            "first seen on line 2",
        ],
    )
    .await;
}

#[tokio::test]
async fn bad_boolean_and_date_are_rejected() {
    assert_rejected(
        |month| {
            rewrite(&month.join("users.csv"), |mut lines| {
                let mut cells: Vec<String> = lines[9].split(',').map(str::to_string).collect();
                cells[1] = "2024-13-45".into();
                lines[9] = cells.join(",");
                lines
            })
        },
        &["users.csv, line 10, column signup_date", "not a date"],
    )
    .await;
    assert_rejected(
        |month| {
            rewrite(&month.join("users.csv"), |mut lines| {
                let mut cells: Vec<String> = lines[5].split(',').map(str::to_string).collect();
                cells[3] = "maybe".into();
                lines[5] = cells.join(",");
                lines
            })
        },
        &["users.csv, line 6, column user_is_senior", "not a boolean"],
    )
    .await;
}

#[test]
fn generate_cli_writes_month_folders() {
    let out = tempfile::tempdir().unwrap();
    let mut cmd = assert_cmd::Command::cargo_bin("skewless").unwrap();
    cmd.args([
        "generate", "--users", "100", "--months", "2", "--seed", "3", "--out",
    ])
    .arg(out.path())
    .assert()
    .success()
    .stdout(predicate::str::contains("[OK] Wrote 100 users x 2 months"));
    for month in ["month_000", "month_001"] {
        for file in skewless::ingest::TABLES {
            let text = std::fs::read_to_string(out.path().join(month).join(file.file)).unwrap();
            assert_eq!(text.lines().count(), 101, "{month}/{}", file.file);
        }
    }
}
