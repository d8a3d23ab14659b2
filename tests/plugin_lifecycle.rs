//! Plugin lifecycle: upload over HTTP (201, the same bytes 200, garbage 400, a plugin
//! that no longer fits its view 409), activation of an older version (responses follow),
//! deletion rules, the admin token, the CLI, and two servers sharing one database picking
//! up an upload (the delay is measured) — under load (32 clients, 10 activations over
//! 20 s), without a failed request.

mod common;

use std::time::{Duration, Instant};

use common::server::{TestServer, config, tenure};
use common::{TestDb, TempRepo, hostile_plugins_dir, plugins_dir, skewless};
use serde_json::{Value, json};

const TOKEN: &str = "lifecycle-token";

fn read(path: std::path::PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!("{}: {e} (build the plugins: scripts/build-plugins.sh)", path.display())
    })
}

async fn setup() -> (TestDb, TempRepo, String) {
    setup_with(|_| {}).await
}

async fn setup_with(edit: impl FnOnce(&TempRepo)) -> (TestDb, TempRepo, String) {
    let (db, repo) = common::ingested_and_applied(40, edit).await;
    skewless(repo.path(), &db)
        .args(["materialize", "2024-01-01", "2024-03-01"])
        .assert()
        .success();
    let pool = db.pool().await;
    let user: String = sqlx::query_scalar(
        "SELECT min(user_id) FROM subscriptions_profile_snapshots WHERE months_active >= 12",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    (db, repo, user)
}

async fn server(repo: &TempRepo, db: &TestDb) -> TestServer {
    let mut config = config(repo.path(), db);
    config.server.admin_token = Some(TOKEN.into());
    TestServer::start(config).await
}

/// `POST /plugins/tenure_bucket/activate` for `version`, with the admin token; the status.
async fn activate(server: &TestServer, version: &str) -> u16 {
    server
        .client
        .post(server.url("/plugins/tenure_bucket/activate"))
        .bearer_auth(TOKEN)
        .body(format!(r#"{{"version": "{version}"}}"#))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn upload(server: &TestServer, bytes: Vec<u8>, token: Option<&str>) -> (u16, Value) {
    let mut request = server.client.post(server.url("/plugins")).body(bytes);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_activate_and_delete_over_http() {
    let (db, repo, user) = setup().await;
    let server = server(&repo, &db).await;
    let v1 = tenure(&server, &user).await;
    assert!(!v1.starts_with("v2:"), "{v1}");
    let v2_bytes = read(hostile_plugins_dir().join("tenure_v2.wasm"));

    // No token: 401, nothing stored.
    let (status, body) = upload(&server, v2_bytes.clone(), None).await;
    assert_eq!(status, 401, "{body}");
    // Garbage: 400 with the reason.
    let (status, body) = upload(&server, b"definitely not wasm".to_vec(), Some(TOKEN)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "INVALID_PLUGIN");
    assert!(body["message"].as_str().unwrap().contains("not a WebAssembly component"), "{body}");
    // A plugin whose output no longer fits the view: 409 naming the view, nothing changes.
    let (status, body) = upload(
        &server,
        read(hostile_plugins_dir().join("tenure_mismatch.wasm")),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "PLUGIN_MISMATCH");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("on-demand feature view `tenure_bucket_fv`"), "{message}");
    assert!(
        message.contains("schema field `tenure_bucket` is declared String, but the plugin outputs Int64"),
        "{message}"
    );
    assert_eq!(tenure(&server, &user).await, v1);

    // A new version: 201, active at once, responses follow.
    let (status, body) = upload(&server, v2_bytes.clone(), Some(TOKEN)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["name"], "tenure_bucket");
    assert_eq!(body["version"], "0.2.0");
    assert_eq!(body["views_switched"], json!(["tenure_bucket_fv"]));
    let v2 = tenure(&server, &user).await;
    assert!(v2.starts_with("v2:"), "{v2}");
    // The same bytes again: 200, nothing changes.
    let (status, body) = upload(&server, v2_bytes.clone(), Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["views_switched"], json!([]));

    // The list: two versions, 0.2.0 active, the view using it.
    let (status, body) = server.get_json("/plugins/tenure_bucket").await;
    assert_eq!(status, 200, "{body}");
    let versions: Vec<(&str, bool)> = body["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].as_str().unwrap(), v["active"].as_bool().unwrap()))
        .collect();
    assert_eq!(versions, [("0.2.0", true), ("0.1.0", false)]);
    assert_eq!(body["views"][0]["view"], "tenure_bucket_fv");
    let (status, body) = server.get_json("/plugins/nope").await;
    assert_eq!(status, 404, "{body}");
    assert!(body["message"].as_str().unwrap().contains("churn_signals, tenure_bucket"), "{body}");

    // Deleting the version in use: 409; roll back to 0.1.0; then 0.2.0 can go.
    let delete = |version: &'static str| {
        server
            .client
            .delete(server.url(&format!("/plugins/tenure_bucket/{version}")))
            .bearer_auth(TOKEN)
            .send()
    };
    let response = delete("0.2.0").await.unwrap();
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("used by tenure_bucket_fv"), "{body}");
    assert_eq!(activate(&server, "0.1.0").await, 200);
    assert_eq!(tenure(&server, &user).await, v1);
    let response = delete("0.2.0").await.unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(activate(&server, "0.2.0").await, 404);

    // The training set follows the active version too.
    let response = server
        .client
        .post(server.url("/historical"))
        .json(&json!({"entities": {"user_id": [user], "event_timestamp": ["2024-02-29"]}, "features": ["tenure_bucket_fv:tenure_bucket"]}))
        .send()
        .await
        .unwrap();
    // ... and says which bytes it ran.
    let provenance = response.headers()["x-skewless-plugins"].to_str().unwrap().to_string();
    assert!(provenance.starts_with("tenure_bucket@0.1.0="), "{provenance}");
    let text = response.text().await.unwrap();
    assert!(text.ends_with(&format!(",{v1}\n")), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_adds_lists_and_activates() {
    let (db, repo, user) = setup().await;
    let v2 = hostile_plugins_dir().join("tenure_v2.wasm");
    let out = skewless(repo.path(), &db)
        .args(["plugin", "add"])
        .arg(&v2)
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(stdout.contains("[OK] Stored and activated plugin tenure_bucket 0.2.0"), "{stdout}");
    assert!(stdout.contains("now running in tenure_bucket_fv"), "{stdout}");
    skewless(repo.path(), &db)
        .args(["online", &user, "--features", "tenure_bucket_fv:tenure_bucket"])
        .assert()
        .success()
        .stdout(predicates::str::contains("v2:"));
    skewless(repo.path(), &db)
        .args(["plugin", "list"])
        .assert()
        .success()
        .stdout(predicates::str::contains("* 0.2.0"))
        .stdout(predicates::str::contains("used by tenure_bucket_fv"));
    skewless(repo.path(), &db)
        .args(["plugin", "activate", "tenure_bucket", "0.1.0"])
        .assert()
        .success()
        .stdout(predicates::str::contains("[OK] Activated plugin tenure_bucket 0.1.0"));
    skewless(repo.path(), &db)
        .args(["online", &user, "--features", "tenure_bucket_fv:tenure_bucket"])
        .assert()
        .success()
        .stdout(predicates::str::contains("v2:").not());
    // Garbage and unknown versions fail with a message, not a panic.
    let garbage = repo.path().join("garbage.wasm");
    std::fs::write(&garbage, b"nope").unwrap();
    skewless(repo.path(), &db)
        .args(["plugin", "add"])
        .arg(&garbage)
        .assert()
        .failure()
        .stderr(predicates::str::contains("not a WebAssembly component"));
    skewless(repo.path(), &db)
        .args(["plugin", "activate", "tenure_bucket", "9.9.9"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("plugin `tenure_bucket` has no version 9.9.9"));
    // The example plugin files were not touched.
    assert!(plugins_dir().join("tenure_bucket.wasm").is_file());
}

use predicates::prelude::PredicateBooleanExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_follows_an_upload_under_load() {
    // A second view on the same plugin: a response asking for both must get both from
    // the same version — a request never mixes two versions' outputs.
    let (db, repo, user) = setup_with(|repo| {
        let views = repo.read("on_demand_feature_views.yaml");
        repo.write(
            "on_demand_feature_views.yaml",
            &format!(
                "{views}\n  - name: tenure_twin_fv\n    plugin: tenure_bucket\n    sources: [subs_profile_fv]\n    schema:\n      - {{name: tenure_bucket, dtype: String}}\n"
            ),
        );
    })
    .await;
    let a = server(&repo, &db).await;
    let b = server(&repo, &db).await;
    let v1 = tenure(&b, &user).await;
    let v2_bytes = read(hostile_plugins_dir().join("tenure_v2.wasm"));

    // Load on server B while server A uploads and re-activates versions.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..32)
        .map(|_| {
            let client = b.client.clone();
            let url = b.url(&format!("/features/{user}?features=tenure_bucket_fv:tenure_bucket,tenure_twin_fv:tenure_bucket,subs_profile_fv:months_active&full_feature_names=true"));
            let stop = stop.clone();
            let v1 = v1.clone();
            tokio::spawn(async move {
                let (mut ok, mut seen_v2) = (0u64, 0u64);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let response = client.get(&url).send().await.unwrap();
                    assert_eq!(response.status(), 200);
                    let body: Value = response.json().await.unwrap();
                    let value = body["features"]["tenure_bucket_fv__tenure_bucket"].as_str().unwrap();
                    let twin = body["features"]["tenure_twin_fv__tenure_bucket"].as_str().unwrap();
                    assert!(value == v1 || value.starts_with("v2:"), "{value}");
                    assert_eq!(value, twin, "one request, one version");
                    seen_v2 += value.starts_with("v2:") as u64;
                    ok += 1;
                }
                (ok, seen_v2)
            })
        })
        .collect();

    // The first upload: how long until server B serves it.
    let (status, body) = upload(&a, v2_bytes, Some(TOKEN)).await;
    assert_eq!(status, 201, "{body}");
    let started = Instant::now();
    while !tenure(&b, &user).await.starts_with("v2:") {
        assert!(started.elapsed() < Duration::from_secs(5), "server B still serves v1");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let delay = started.elapsed();
    eprintln!("server B switched {delay:?} after server A's upload answered");
    assert!(delay < Duration::from_secs(1), "{delay:?}");

    // Ten activations back and forth over 20 s under load (32 concurrent clients): no
    // failed request.
    for i in 0..10 {
        let version = if i % 2 == 0 { "0.1.0" } else { "0.2.0" };
        assert_eq!(activate(&a, version).await, 200);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for task in load {
        let (ok, _) = task.await.unwrap();
        total += ok;
    }
    eprintln!("{total} requests during the activations, none failed");
    assert!(total > 1000, "{total} requests");
    // The last activation was 0.2.0: both servers end on it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(tenure(&a, &user).await.starts_with("v2:"));
    assert!(tenure(&b, &user).await.starts_with("v2:"));
}
