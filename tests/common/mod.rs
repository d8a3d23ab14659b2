//! Shared test helpers: an isolated PostgreSQL database per test, a copy of the
//! StreamFlow feature repo pointed at it, and the `skewless` binary.
#![allow(dead_code)]

pub mod proxy;
pub mod server;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::{Connection, PgConnection, PgPool};

/// Admin connection used to create and drop test databases.
pub fn admin_url() -> String {
    std::env::var("SKEWLESS_TEST_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database that exists for the life of one test and is dropped afterwards, so runs
/// never see each other's state.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    pub async fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "skewless_test_{}_{}_{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let mut admin = PgConnection::connect(&admin_url())
            .await
            .expect("PostgreSQL must be running for the integration tests (see README)");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let base = admin_url();
        let url = match base.rsplit_once('/') {
            Some((head, _)) => format!("{head}/{name}"),
            None => panic!("admin URL without a database: {base}"),
        };
        Self { name, url }
    }

    pub async fn pool(&self) -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.url)
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee: use a private one on its own thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&admin_url()).await {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&mut admin)
                            .await;
                }
            });
        })
        .join();
    }
}

/// The checkout being tested. Read at run time (cargo sets it for test processes): a
/// build cache shared between checkouts may hand this test a binary compiled in another
/// one, whose compile-time path could be gone.
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The repository's own StreamFlow feature repo.
pub fn streamflow_repo_dir() -> PathBuf {
    manifest_dir().join("feature_repo")
}

/// Where scripts/test.sh builds the example plugins (`<name>.wasm`).
pub fn plugins_dir() -> PathBuf {
    manifest_dir().join("plugins/target/wasm32-wasip2/release")
}

/// Where scripts/test.sh builds the deliberately broken plugins of tests/hostile_plugin
/// (`hostile_<mode>.wasm`).
pub fn hostile_plugins_dir() -> PathBuf {
    manifest_dir().join("tests/hostile_plugin/out")
}

/// A copy of the StreamFlow feature repo in a temp dir, so a test can edit it.
pub struct TempRepo {
    pub dir: tempfile::TempDir,
}

impl TempRepo {
    pub fn streamflow() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(streamflow_repo_dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) == Some("yaml") {
                std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
            }
        }
        // The copy lives elsewhere: point it at this checkout's built plugins.
        let config = dir.path().join("feature_store.yaml");
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(&format!(
            "plugins:\n  dir: {}\n",
            plugins_dir().display()
        ));
        std::fs::write(&config, text).unwrap();
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.path().join(file)).unwrap()
    }

    pub fn write(&self, file: &str, text: &str) {
        std::fs::write(self.path().join(file), text).unwrap();
    }

    /// Removes the on-demand views (and their features from the services), for tests
    /// that change the stored features the plugins read.
    pub fn without_derived_views(&self) {
        self.write("on_demand_feature_views.yaml", "");
        let services = self.read("feature_services.yaml");
        self.write(
            "feature_services.yaml",
            &services
                .replace("      - churn_signals_fv\n", "")
                .replace("      - tenure_bucket_fv\n", ""),
        );
    }

    /// Replaces `from` by `to` in `file`, failing loudly if `from` is not there.
    pub fn edit(&self, file: &str, from: &str, to: &str) {
        let text = self.read(file);
        assert!(text.contains(from), "{file} does not contain {from:?}");
        self.write(file, &text.replacen(from, to, 1));
    }
}

/// The `skewless` binary, pointed at `repo` and `db`.
pub fn skewless(repo: &Path, db: &TestDb) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("skewless").unwrap();
    cmd.arg("--repo").arg(repo).env("DATABASE_URL", &db.url);
    for (key, _) in std::env::vars() {
        if key.starts_with("SKEWLESS_") && key != "SKEWLESS_TEST_ADMIN_URL" {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Where the real course data lives (`STREAMFLOW_SEEDS`), if this machine has it.
pub fn course_seeds() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("STREAMFLOW_SEEDS")?);
    assert!(
        dir.join("month_000").is_dir(),
        "STREAMFLOW_SEEDS={} has no month_000 folder",
        dir.display()
    );
    Some(dir)
}

/// Generated StreamFlow-shaped months (deterministic), in a temp dir.
pub fn generated_seeds(users: u64, months: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    skewless::generate::generate(
        &skewless::generate::GenerateOptions {
            users,
            months,
            out: dir.path().to_path_buf(),
            seed: 7,
            first_as_of: chrono::NaiveDate::from_ymd_opt(2024, 1, 31).unwrap(),
        },
        None,
    )
    .unwrap();
    dir
}

/// A database with `users` generated users over two months (as of 2024-01-31 and
/// 2024-02-29) ingested with the CLI, and a StreamFlow repo copy, which `edit` may
/// change, applied to it.
pub async fn ingested_and_applied(users: u64, edit: impl FnOnce(&TempRepo)) -> (TestDb, TempRepo) {
    let db = TestDb::new().await;
    let repo = TempRepo::streamflow();
    let seeds = generated_seeds(users, 2);
    ingest_both_months(&repo, &db, seeds.path());
    edit(&repo);
    skewless(repo.path(), &db).arg("apply").assert().success();
    (db, repo)
}

/// Ingests `seeds/month_000` (as of 2024-01-31) and `seeds/month_001` (2024-02-29) with
/// the CLI, each expected to succeed and to write rows.
pub fn ingest_both_months(repo: &TempRepo, db: &TestDb, seeds: &Path) {
    for (month, as_of) in [("month_000", "2024-01-31"), ("month_001", "2024-02-29")] {
        skewless(repo.path(), db)
            .args(["ingest", "--seeds"])
            .arg(seeds.join(month))
            .args(["--as-of", as_of])
            .assert()
            .success()
            .stdout(predicates::str::contains("[OK] Ingested"));
    }
}

/// A fingerprint of every user table's contents AND row versions (xmin) in a schema:
/// equal fingerprints mean not one row was inserted, updated or deleted.
pub async fn fingerprint(pool: &PgPool, schema: &str) -> String {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = $1 AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out = String::new();
    for t in tables {
        let digest: Option<String> = sqlx::query_scalar(&format!(
            "SELECT md5(string_agg(x.xmin::text || ':' || x::text, ',' ORDER BY x::text)) FROM \"{schema}\".\"{t}\" x"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        out.push_str(&format!("{t}={}\n", digest.unwrap_or_default()));
    }
    out
}
