//! Derived features (on-demand views running WebAssembly plugins), proven identical
//! offline and online: every value of every user, base and derived, from the online API
//! after materialization equals the training set's value for the same user and time,
//! bit for bit — on the real course data when `STREAMFLOW_SEEDS` is set, else on
//! generated data. Also: `apply` type-checks plugins against their views and stores the
//! plugin bytes with their sha256; requests name derived features like any other.

mod common;

use std::collections::HashMap;

use common::server::{TestServer, config};
use common::{TempRepo, TestDb, course_seeds, generated_seeds, ingest_both_months, skewless};
use serde_json::{Value, json};

/// Every feature of `churn_serving_v1`, with full names, in service order.
async fn serving_features(server: &TestServer) -> Vec<String> {
    let spec: Value = server
        .client
        .post(server.url("/get-online-features"))
        .json(&json!({"entities": {"user_id": ["nobody"]}, "feature_service": "churn_serving_v1", "full_feature_names": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    spec["metadata"]["feature_names"].as_array().unwrap()[1..]
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// The online values of `users` (only PRESENT values count; anything else is null), by
/// user then feature.
async fn online(server: &TestServer, users: &[String]) -> HashMap<String, Vec<Value>> {
    let mut out = HashMap::new();
    for chunk in users.chunks(1000) {
        let response = server
            .client
            .post(server.url("/get-online-features"))
            .json(&json!({"entities": {"user_id": chunk}, "feature_service": "churn_serving_v1", "full_feature_names": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        let results = body["results"].as_array().unwrap();
        for (row, user) in chunk.iter().enumerate() {
            assert_eq!(results[0]["values"][row].as_str(), Some(user.as_str()));
            let values = results[1..]
                .iter()
                .map(|r| {
                    if r["statuses"][row] == "PRESENT" {
                        r["values"][row].clone()
                    } else {
                        Value::Null
                    }
                })
                .collect();
            out.insert(user.clone(), values);
        }
    }
    out
}

/// The training set at `as_of` for every user, as JSON lines, by user.
async fn training(
    server: &TestServer,
    as_of: &str,
    features: &[String],
) -> HashMap<String, Vec<Value>> {
    let response = server
        .client
        .post(server.url("/historical"))
        .json(&json!({
            "entity_sql": format!("SELECT user_id, as_of AS event_timestamp FROM subscriptions_profile_snapshots WHERE as_of = '{as_of}'"),
            "feature_service": "churn_serving_v1",
            "full_feature_names": true,
            "format": "jsonl",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let text = response.text().await.unwrap();
    let mut out = HashMap::new();
    for line in text.lines() {
        let row: Value = serde_json::from_str(line).unwrap();
        let user = row["user_id"].as_str().unwrap().to_string();
        let values = features.iter().map(|f| row[f.as_str()].clone()).collect();
        assert!(out.insert(user, values).is_none(), "one row per user");
    }
    out
}

/// Materializes `window`, then compares every value of every user with the training set
/// at `as_of`. Numbers are compared as JSON written by the one formatter (shortest text
/// that reads back to the same bits), so equal text is equal bits.
async fn assert_identical(
    server: &TestServer,
    repo: &TempRepo,
    db: &TestDb,
    window: [&str; 2],
    as_of: &str,
) -> usize {
    skewless(repo.path(), db)
        .arg("materialize")
        .args(window)
        .assert()
        .success();
    let features = serving_features(server).await;
    for derived in [
        "churn_signals_fv__fee_per_watch_hour",
        "churn_signals_fv__is_long_tenure",
        "churn_signals_fv__engagement_score",
        "churn_signals_fv__has_payment_issue",
        "tenure_bucket_fv__tenure_bucket",
    ] {
        assert!(features.iter().any(|f| f == derived), "{derived} is served");
    }
    let offline = training(server, as_of, &features).await;
    let mut users: Vec<String> = offline.keys().cloned().collect();
    users.sort();
    let online = online(server, &users).await;
    let mut differences = Vec::new();
    let mut derived_present = 0usize;
    for user in &users {
        for (i, feature) in features.iter().enumerate() {
            let (a, b) = (&offline[user][i], &online[user][i]);
            if a != b {
                differences.push(format!("{user} {feature}: offline {a}, online {b}"));
            }
            if feature.contains("_fv__") && feature.starts_with("churn_signals") && !a.is_null() {
                derived_present += 1;
            }
        }
    }
    assert!(
        differences.is_empty(),
        "{} differences at {as_of}, first ones:\n{}",
        differences.len(),
        differences[..differences.len().min(20)].join("\n")
    );
    assert!(derived_present > users.len(), "derived values are computed, not all NULL");
    users.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_features_are_bit_identical_offline_and_online() {
    let db = TestDb::new().await;
    let repo = TempRepo::streamflow();
    let generated;
    let seeds = match course_seeds() {
        Some(dir) => dir,
        None => {
            eprintln!("STREAMFLOW_SEEDS unset: comparing on 3000 generated users instead");
            generated = generated_seeds(3000, 2);
            generated.path().to_path_buf()
        }
    };
    ingest_both_months(&repo, &db, &seeds);
    skewless(repo.path(), &db).arg("apply").assert().success();
    let server = TestServer::start(config(repo.path(), &db)).await;

    let january = assert_identical(
        &server,
        &repo,
        &db,
        ["2024-01-01T00:00:00", "2024-02-01T00:00:00"],
        "2024-01-31",
    )
    .await;
    let february = assert_identical(
        &server,
        &repo,
        &db,
        ["2024-02-01T00:00:00", "2024-03-01T00:00:00"],
        "2024-02-29",
    )
    .await;
    if course_seeds().is_some() {
        assert_eq!((january, february), (7043, 7043));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_stores_the_plugins_and_requests_name_derived_features() {
    let (db, repo) = common::ingested_and_applied(50, |_| {}).await;
    let pool = db.pool().await;
    // The bytes applied are in the registry, under their hash, and the views record it.
    let stored: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT name, sha256, size FROM skewless_registry.plugins ORDER BY name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let names: Vec<&str> = stored.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["churn_signals", "tenure_bucket"]);
    for (name, sha, size) in &stored {
        let file = common::plugins_dir().join(format!("{name}.wasm"));
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(*size as usize, bytes.len());
        use sha2::Digest;
        assert_eq!(*sha, hex::encode(sha2::Sha256::digest(&bytes)));
        let recorded: String = sqlx::query_scalar(
            "SELECT spec->'plugin'->>'resolved_sha256' FROM skewless_registry.objects WHERE kind = 'on_demand_feature_view' AND spec->'plugin'->>'name' = $1",
        )
        .bind(name)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(&recorded, sha);
    }
    // A second apply changes nothing.
    skewless(repo.path(), &db)
        .arg("apply")
        .assert()
        .success()
        .stdout(predicates::str::contains("No changes"));

    skewless(repo.path(), &db)
        .args(["materialize", "2024-01-01", "2024-03-01"])
        .assert()
        .success();
    let user: String = sqlx::query_scalar(
        "SELECT user_id FROM subscriptions_profile_snapshots WHERE as_of = '2024-02-29' ORDER BY user_id LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    // The CLI, online: a derived feature next to a stored one.
    skewless(repo.path(), &db)
        .args(["online", &user, "--features"])
        .arg("subs_profile_fv:months_active,tenure_bucket_fv:tenure_bucket")
        .assert()
        .success()
        .stdout(predicates::str::contains("tenure_bucket"));
    // The CLI, offline: a training set of derived features only.
    let out = repo.path().join("derived.csv");
    skewless(repo.path(), &db)
        .args(["historical", "--entity-sql"])
        .arg("SELECT user_id, as_of AS event_timestamp FROM subscriptions_profile_snapshots WHERE as_of = '2024-02-29'")
        .args(["--features", "churn_signals_fv:is_long_tenure,tenure_bucket_fv:tenure_bucket", "--out"])
        .arg(&out)
        .assert()
        .success();
    // The sidecar names the exact plugin bytes the derived columns came from.
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(repo.path().join("derived.csv.meta.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["rows"], 50);
    let used: Vec<(String, String)> = meta["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().into(), p["sha256"].as_str().unwrap().into()))
        .collect();
    let expected: Vec<(String, String)> = stored
        .iter()
        .map(|(n, s, _)| (n.clone(), s.clone()))
        .collect();
    assert_eq!(used, expected);
    let csv = std::fs::read_to_string(&out).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("user_id,event_timestamp,is_long_tenure,tenure_bucket")
    );
    assert_eq!(lines.count(), 50);

    // Over HTTP, unknown derived features are 400s listing what exists.
    let server = TestServer::start(config(repo.path(), &db)).await;
    let response = server
        .client
        .get(server.url(&format!("/features/{user}?features=churn_signals_fv:nope")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("fee_per_watch_hour"),
        "{body}"
    );
    let body: Value = server
        .client
        .get(server.url(&format!("/features/{user}?features=churn_signals_fv:has_payment_issue,payments_agg_90d_fv:failed_payments_90d")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let failed = body["features"]["failed_payments_90d"].as_i64().unwrap();
    assert_eq!(body["features"]["has_payment_issue"], json!(failed > 0));
    assert_eq!(body["statuses"]["has_payment_issue"], "PRESENT");
    // An unknown user: every derived feature NOT_FOUND and null, like stored ones.
    let body: Value = server
        .client
        .get(server.url("/features/nobody-at-all"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["statuses"]["tenure_bucket"], "NOT_FOUND");
    assert_eq!(body["features"]["tenure_bucket"], Value::Null);
}

/// Runs `skewless apply`, expects exit code 3 (invalid definitions), returns stderr.
fn apply_fails(repo: &TempRepo, db: &TestDb) -> String {
    let output = skewless(repo.path(), db).arg("apply").assert().code(3);
    String::from_utf8_lossy(&output.get_output().stderr).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_refuses_a_plugin_that_does_not_match_its_view() {
    let (db, repo) = common::ingested_and_applied(20, |_| {}).await;
    let pool = db.pool().await;
    let before = common::fingerprint(&pool, "skewless_registry").await;
    // Wrong dtype in the schema, an output the plugin does not have, a missing input.
    repo.edit(
        "on_demand_feature_views.yaml",
        "{name: is_long_tenure, dtype: Bool",
        "{name: is_long_tenure, dtype: Int64",
    );
    repo.edit(
        "on_demand_feature_views.yaml",
        "      - {name: tenure_bucket, dtype: String}",
        "      - {name: tenure_bucket, dtype: String}\n      - {name: tenure_years, dtype: Int64}",
    );
    repo.edit(
        "on_demand_feature_views.yaml",
        "sources: [subs_profile_fv, usage_agg_30d_fv, payments_agg_90d_fv]",
        "sources: [subs_profile_fv, usage_agg_30d_fv]",
    );
    let stderr = apply_fails(&repo, &db);
    for expected in [
        "on-demand feature view `churn_signals_fv` does not match plugin `churn_signals`",
        "schema field `is_long_tenure` is declared Int64, but the plugin outputs Bool",
        "plugin input `failed_payments_90d` (Int64) is in none of the sources (subs_profile_fv, usage_agg_30d_fv)",
        "schema field `tenure_years` is not a plugin output (it has: tenure_bucket String)",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
    assert_eq!(common::fingerprint(&pool, "skewless_registry").await, before);

    // A plugin that is not built / not where the config says.
    let repo = TempRepo::streamflow();
    repo.edit("on_demand_feature_views.yaml", "plugin: tenure_bucket", "plugin: tenure_buckets");
    let stderr = apply_fails(&repo, &db);
    assert!(stderr.contains("plugin `tenure_buckets` not found at"), "{stderr}");
    assert!(stderr.contains("cargo build --release --target wasm32-wasip2"), "{stderr}");

    // A pinned version that is not the plugin's.
    let repo = TempRepo::streamflow();
    repo.edit(
        "on_demand_feature_views.yaml",
        "plugin: tenure_bucket",
        "plugin: {name: tenure_bucket, version: 9.9.9}",
    );
    let stderr = apply_fails(&repo, &db);
    assert!(stderr.contains("pins version 9.9.9, but the plugin is version 0.1.0"), "{stderr}");
    assert_eq!(common::fingerprint(&pool, "skewless_registry").await, before);
}
