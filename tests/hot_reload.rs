//! `skewless serve --dev` hot reload: replacing a plugin's .wasm on disk is applied and
//! served without a restart; a broken .wasm or YAML is refused, the last good state keeps
//! serving, and the error shows in `GET /ready` and `GET /plugins`.

mod common;

use std::time::{Duration, Instant};

use common::server::{TestServer, config, tenure};
use common::{hostile_plugins_dir, plugins_dir, skewless};
use serde_json::Value;

/// Polls until `done` holds (at most `within`); returns how long it took.
async fn until(within: Duration, mut done: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < within, "not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_swaps_a_rebuilt_plugin_and_keeps_the_last_good_one() {
    // The repo's plugins folder is a copy we can overwrite.
    let folder = tempfile::tempdir().unwrap();
    for name in ["churn_signals", "tenure_bucket"] {
        std::fs::copy(
            plugins_dir().join(format!("{name}.wasm")),
            folder.path().join(format!("{name}.wasm")),
        )
        .unwrap();
    }
    let (db, repo) = common::ingested_and_applied(30, |repo| {
        let config = repo.read("feature_store.yaml");
        let (before, _) = config.rsplit_once("plugins:\n").unwrap();
        repo.write(
            "feature_store.yaml",
            &format!("{before}plugins:\n  dir: {}\n", folder.path().display()),
        );
    })
    .await;
    skewless(repo.path(), &db)
        .args(["materialize", "2024-01-01", "2024-03-01"])
        .assert()
        .success();
    let pool = db.pool().await;
    let user: String = sqlx::query_scalar("SELECT min(user_id) FROM subscriptions")
        .fetch_one(&pool)
        .await
        .unwrap();
    let server = TestServer::start_watching(config(repo.path(), &db), repo.path()).await;
    let v1 = tenure(&server, &user).await;
    assert!(!v1.starts_with("v2:"));

    // A rebuilt plugin lands on disk: the next requests use it, within a second.
    std::fs::copy(
        hostile_plugins_dir().join("tenure_v2.wasm"),
        folder.path().join("tenure_bucket.wasm"),
    )
    .unwrap();
    let took = until(Duration::from_secs(3), async || {
        tenure(&server, &user).await.starts_with("v2:")
    })
    .await;
    eprintln!("the new plugin served {took:?} after the file changed");
    assert!(took < Duration::from_secs(1), "{took:?}");

    // A broken build: refused, v2 keeps serving, the error is reported.
    std::fs::write(folder.path().join("tenure_bucket.wasm"), b"half-written").unwrap();
    until(Duration::from_secs(3), async || {
        let (_, body) = server.get_json("/plugins").await;
        body["last_error"].is_string()
    })
    .await;
    let (_, body) = server.get_json("/plugins").await;
    let error = body["last_error"].as_str().unwrap();
    assert!(error.contains("not a WebAssembly component"), "{error}");
    assert!(tenure(&server, &user).await.starts_with("v2:"));
    let (status, ready) = server.get_json("/ready").await;
    assert_eq!(status, 200, "{ready}");
    assert!(
        ready["detail"].as_str().unwrap().contains("serving the last good state"),
        "{ready}"
    );

    // A broken definition: same, and the fix clears the error.
    let views = repo.read("on_demand_feature_views.yaml");
    repo.write("on_demand_feature_views.yaml", "on_demand_feature_views: [oops");
    std::fs::copy(plugins_dir().join("tenure_bucket.wasm"), folder.path().join("tenure_bucket.wasm")).unwrap();
    until(Duration::from_secs(3), async || {
        let (_, body) = server.get_json("/plugins").await;
        body["last_error"].as_str().is_some_and(|e| e.contains("on_demand_feature_views.yaml"))
    })
    .await;
    assert!(tenure(&server, &user).await.starts_with("v2:"));
    repo.write("on_demand_feature_views.yaml", &views);
    until(Duration::from_secs(3), async || tenure(&server, &user).await == v1).await;
    let (_, body) = server.get_json("/plugins").await;
    assert_eq!(body["last_error"], Value::Null, "{body}");
}
