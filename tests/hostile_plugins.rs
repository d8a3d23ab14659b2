//! Plugins are untrusted code. Deliberately broken components (tests/hostile_plugin,
//! one behaviour per cargo feature, built by scripts/build-plugins.sh; others assembled
//! here from WebAssembly text) each fail with a clear error naming the plugin, within
//! their budget — at apply (nothing changes), online (a JSON 5xx) and offline (a failed
//! training set, nothing written) — while the server keeps answering other requests.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::server::{TestServer, config};
use common::{TempRepo, TestDb, hostile_plugins_dir, plugins_dir, skewless};
use serde_json::Value;
use skewless::config::PluginsConfig;
use skewless::plugins::PluginStore;

const MODES: [&str; 6] = ["spin", "alloc", "panic", "rows", "types", "big"];

fn hostile(mode: &str) -> Vec<u8> {
    let path = hostile_plugins_dir().join(format!("hostile_{mode}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (build the hostile plugins: scripts/build-plugins.sh)",
            path.display()
        )
    })
}

fn store() -> PluginStore {
    PluginStore::new(&PluginsConfig::default(), Path::new(".")).unwrap()
}

/// A plugins folder with the example plugins and `extra` files.
fn plugins_folder(extra: &[(&str, Vec<u8>)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["churn_signals", "tenure_bucket"] {
        let file = format!("{name}.wasm");
        std::fs::copy(plugins_dir().join(&file), dir.path().join(&file)).unwrap();
    }
    for (file, bytes) in extra {
        std::fs::write(dir.path().join(file), bytes).unwrap();
    }
    dir
}

/// A StreamFlow repo using `plugins` as its plugins folder, with `views` appended to the
/// on-demand views, and offline plugin calls capped at one second.
fn repo_with(plugins: &Path, views: &str) -> TempRepo {
    let repo = TempRepo::streamflow();
    let config = repo.read("feature_store.yaml");
    let (before, _) = config.rsplit_once("plugins:\n").unwrap();
    repo.write(
        "feature_store.yaml",
        &format!(
            "{before}plugins:\n  dir: {}\n  offline_timeout_ms: 1000\n",
            plugins.display()
        ),
    );
    let odfv = repo.read("on_demand_feature_views.yaml");
    repo.write("on_demand_feature_views.yaml", &format!("{odfv}{views}"));
    repo
}

fn hostile_view(mode: &str) -> String {
    format!(
        "  - name: hostile_{mode}_fv\n    plugin: hostile_{mode}\n    sources: [subs_profile_fv]\n    schema:\n      - {{name: score, dtype: Float64}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_not_a_plugin_is_refused_at_load() {
    let store = store();
    let err = |r: Result<_, skewless::transform::LoadError>| match r {
        Ok(_) => panic!("loaded"),
        Err(e) => e.to_string(),
    };
    let e = err(store.load_bytes("garbage.wasm", b"not wasm at all").await);
    assert!(e.contains("garbage.wasm: not a WebAssembly component (no component header)"), "{e}");
    let core = wat::parse_str("(module (func (export \"transform\")))").unwrap();
    let e = err(store.load_bytes("core.wasm", &core).await);
    assert!(e.contains("core.wasm: not a WebAssembly component (it is a core module)"), "{e}");
    let truncated = &hostile("panic")[..2000];
    let e = err(store.load_bytes("truncated.wasm", truncated).await);
    assert!(e.contains("truncated.wasm: not a WebAssembly component"), "{e}");

    // An import the sandbox does not provide.
    let evil = wat::parse_str(
        r#"(component (import "skewless:evil/network@0.1.0" (instance (export "connect" (func)))))"#,
    )
    .unwrap();
    let e = err(store.load_bytes("evil.wasm", &evil).await);
    assert!(
        e.contains("evil.wasm imports `") && e.contains("skewless:evil/network@0.1.0"),
        "{e}"
    );
    // Built against another version of our package.
    let future = wat::parse_str(
        r#"(component (import "skewless:transform/types@0.2.0" (instance)))"#,
    )
    .unwrap();
    let e = err(store.load_bytes("future.wasm", &future).await);
    assert!(
        e.contains("future.wasm was built for skewless:transform@0.2.0; this host supports skewless:transform@0.1.0"),
        "{e}"
    );
    // A component exporting nothing of the world.
    let empty = wat::parse_str("(component)").unwrap();
    let e = err(store.load_bytes("empty.wasm", &empty).await);
    assert!(
        e.contains("empty.wasm does not implement the `transformation` world"),
        "{e}"
    );
    // describe() that never returns: stopped by its deadline.
    let started = Instant::now();
    let e = err(store.load_bytes("hostile_describe_spin.wasm", &hostile("describe_spin")).await);
    assert!(e.contains("ran past its 5000 ms budget"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_fails_on_a_broken_plugin_and_changes_nothing() {
    let (db, _) = common::ingested_and_applied(20, |_| {}).await;
    let pool = db.pool().await;
    let before = common::fingerprint(&pool, "skewless_registry").await;
    let core = wat::parse_str("(module)").unwrap();
    let folder = plugins_folder(&[
        ("hostile_garbage.wasm", b"\0asm garbage".to_vec()),
        ("hostile_core.wasm", core),
        ("hostile_describe_spin.wasm", hostile("describe_spin")),
    ]);
    let views: String = ["garbage", "core", "describe_spin"]
        .iter()
        .map(|m| hostile_view(m))
        .collect();
    let repo = repo_with(folder.path(), &views);
    let output = skewless(repo.path(), &db).arg("apply").assert().code(3);
    let stderr = String::from_utf8_lossy(&output.get_output().stderr).to_string();
    assert!(stderr.contains("3 problems with the transformation plugins"), "{stderr}");
    for expected in [
        "on-demand feature view `hostile_garbage_fv`: plugin",
        "hostile_garbage.wasm: not a WebAssembly component",
        "hostile_core.wasm: not a WebAssembly component (it is a core module)",
        "hostile_describe_spin.wasm: describe() failed: plugin `",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
    assert_eq!(common::fingerprint(&pool, "skewless_registry").await, before);
}

/// Features of a hostile view for one user, over HTTP: (status, body, time taken).
async fn request(server: &TestServer, user: &str, mode: &str) -> (u16, Value, Duration) {
    let started = Instant::now();
    let (status, body) = server
        .get_json(&format!("/features/{user}?features=hostile_{mode}_fv:score"))
        .await;
    (status, body, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_plugins_fail_alone_within_their_budget() {
    let folder = plugins_folder(
        &MODES
            .iter()
            .map(|m| (Box::leak(format!("hostile_{m}.wasm").into_boxed_str()) as &str, hostile(m)))
            .collect::<Vec<_>>(),
    );
    let views: String = MODES.iter().map(|m| hostile_view(m)).collect();
    let db = TestDb::new().await;
    let repo = repo_with(folder.path(), &views);
    let seeds = common::generated_seeds(50, 2);
    common::ingest_both_months(&repo, &db, seeds.path());
    skewless(repo.path(), &db).arg("apply").assert().success();
    skewless(repo.path(), &db)
        .args(["materialize", "2024-01-01", "2024-03-01"])
        .assert()
        .success();
    let pool = db.pool().await;
    let user: String = sqlx::query_scalar("SELECT min(user_id) FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    let server = TestServer::start(config(repo.path(), &db)).await;

    let expected: [(&str, u16, &str, &str); 6] = [
        ("spin", 500, "PLUGIN_TIMEOUT", "ran past its 50 ms budget"),
        ("alloc", 500, "PLUGIN_MEMORY", "more than its 64 MiB of memory"),
        ("panic", 500, "PLUGIN_CRASHED", "deliberate panic on a batch of 1 rows"),
        ("rows", 500, "PLUGIN_BAD_OUTPUT", "2 rows for an input of 1"),
        ("types", 500, "PLUGIN_BAD_OUTPUT", "column `score` holds Int64 values, but describe() declares Float64"),
        ("big", 500, "PLUGIN_MEMORY", "more than its 64 MiB of memory"),
    ];
    for (mode, status, code, message) in expected {
        let (got, body, took) = request(&server, &user, mode).await;
        assert_eq!(got, status, "{mode}: {body}");
        assert_eq!(body["code"], code, "{mode}: {body}");
        let text = body["message"].as_str().unwrap();
        assert!(text.contains(&format!("plugin `hostile_{mode}`")), "{mode}: {text}");
        assert!(text.contains(message), "{mode}: {text}");
        assert!(took < Duration::from_secs(2), "{mode} took {took:?}");
    }

    // While plugins spin, other requests are served at normal latency.
    let spinning: Vec<_> = (0..4)
        .map(|_| {
            let client = server.client.clone();
            let url = server.url(&format!("/features/{user}?features=hostile_spin_fv:score"));
            tokio::spawn(async move {
                for _ in 0..10 {
                    let r = client.get(&url).send().await.unwrap();
                    assert_eq!(r.status(), 500);
                }
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for _ in 0..50 {
        let started = Instant::now();
        let (status, body) = server
            .get_json(&format!("/features/{user}?feature_service=churn_serving_v1"))
            .await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["statuses"]["tenure_bucket"], "PRESENT");
    }
    for task in spinning {
        task.await.unwrap();
    }
    assert!(slowest < Duration::from_millis(500), "slowest normal request {slowest:?}");

    // Offline: the training set fails with the plugin's error and nothing is written.
    for (mode, message) in [
        ("spin", "ran past its 1000 ms budget"),
        ("panic", "deliberate panic on a batch of 50 rows"),
        ("types", "holds Int64 values"),
    ] {
        let out: PathBuf = repo.path().join(format!("{mode}.csv"));
        let started = Instant::now();
        let output = skewless(repo.path(), &db)
            .args(["historical", "--entity-sql"])
            .arg("SELECT user_id, as_of AS event_timestamp FROM subscriptions_profile_snapshots WHERE as_of = '2024-02-29'")
            .args(["--features", &format!("subs_profile_fv:months_active,hostile_{mode}_fv:score"), "--out"])
            .arg(&out)
            .assert()
            .failure();
        let stderr = String::from_utf8_lossy(&output.get_output().stderr).to_string();
        assert!(stderr.contains(&format!("plugin `hostile_{mode}`")), "{stderr}");
        assert!(stderr.contains(message), "{stderr}");
        assert!(!out.exists(), "{mode}: a failed training set leaves no file");
        assert!(started.elapsed() < Duration::from_secs(20));
    }
    // And the server still serves.
    let (status, _) = server
        .get_json(&format!("/features/{user}"))
        .await;
    assert_eq!(status, 200);
}
