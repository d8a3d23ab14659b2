//! `skewless demo`: the start-up sequence docker compose runs (seeds found or generated,
//! ingest, apply, materialize), on a fresh database, and again on the same one.

mod common;

use common::{TempRepo, TestDb, skewless};
use predicates::prelude::*;

#[tokio::test]
async fn demo_sets_everything_up_and_is_idempotent() {
    let db = TestDb::new().await;
    let repo = TempRepo::streamflow();
    let seeds = tempfile::tempdir().unwrap();
    let run = || {
        let mut cmd = skewless(repo.path(), &db);
        cmd.args(["demo", "--no-serve", "--users", "150", "--seeds"])
            .arg(seeds.path());
        cmd
    };
    run()
        .assert()
        .success()
        .stdout(predicate::str::contains("generating 150 users x 2 months"))
        .stdout(predicate::str::contains(
            "Created feature view subs_profile_fv",
        ))
        .stdout(predicate::str::contains("[OK] Materialized"));
    assert!(seeds.path().join("month_001/labels.csv").is_file());

    // Served online: February's values (the newest month) for a generated user.
    let pool = db.pool().await;
    let (user, months): (String, i64) = sqlx::query_as(
        "SELECT user_id, months_active FROM subscriptions_profile_snapshots WHERE as_of = '2024-02-29' ORDER BY user_id LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    skewless(repo.path(), &db)
        .args([
            "online",
            &user,
            "--features",
            "subs_profile_fv:months_active",
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!(
            "months_active  {months}  (PRESENT)"
        )));

    // Again: nothing generated, ingested, applied or materialized anew.
    let before = common::fingerprint(&pool, "feature_store_online").await;
    run()
        .assert()
        .success()
        .stdout(predicate::str::contains("generating").not())
        .stdout(predicate::str::contains(
            "already ingested, nothing changed",
        ))
        .stdout(predicate::str::contains("No changes to registry"));
    assert_eq!(
        before,
        common::fingerprint(&pool, "feature_store_online").await
    );
}
