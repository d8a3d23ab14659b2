//! Configuration: `feature_store.yaml` merged with the environment, in one place.
//!
//! The file keeps Feast's keys (`project`, `provider`, `registry`, `offline_store`,
//! `online_store`, `entity_key_serialization_version`) so an existing Feast repo needs
//! few edits, and adds a `server` section. Every key can be overridden from the
//! environment with the `SKEWLESS_` prefix and `__` for nesting
//! (`SKEWLESS_SERVER__ADMIN_TOKEN`, `SKEWLESS_ONLINE_STORE__HOST`), and `DATABASE_URL`,
//! when set, replaces the connection of both stores: that is what containers and CI set.
//!
//! Unknown keys and wrong types are errors: a typo in a config file that silently falls
//! back to a default is the worst kind of production bug.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Yaml};
use serde::Deserialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

/// Name of the configuration file inside a feature repo, as in Feast.
pub const CONFIG_FILE: &str = "feature_store.yaml";

/// Prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "SKEWLESS_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "{path} not found: a feature repo needs a {CONFIG_FILE} (point --repo at the folder that holds it)"
    )]
    Missing { path: PathBuf },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error(
        "DATABASE_URL is not a valid PostgreSQL URL ({0}); expected postgres://user[:password]@host[:port]/database"
    )]
    DatabaseUrl(String),
}

/// The whole configuration of a feature repo.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Project name: namespaces the registry and the online tables.
    pub project: String,
    /// Feast's provider key; only `local` makes sense for a single Rust binary.
    #[serde(default = "default_provider")]
    pub provider: String,
    #[serde(default)]
    pub registry: RegistryConfig,
    pub offline_store: PostgresStoreConfig,
    pub online_store: PostgresStoreConfig,
    /// Accepted for compatibility with Feast repos; skewless keys online rows by typed
    /// columns, not by serialized entity keys, so the value does not change anything.
    #[serde(default)]
    pub entity_key_serialization_version: Option<u32>,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// `DATABASE_URL` from the environment: replaces both stores' connection settings.
    #[serde(skip)]
    pub database_url: Option<String>,
}

fn default_provider() -> String {
    "local".into()
}

/// Where the registry lives. It is always PostgreSQL, in the online store's database,
/// because `apply` changes the registry and the online tables in ONE transaction.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Feast's key; only `sql` is supported.
    #[serde(default = "default_registry_type")]
    pub registry_type: String,
    /// The schema holding the registry tables.
    #[serde(default = "default_registry_schema")]
    pub schema: String,
    /// How long a server may keep a registry snapshot before re-reading it even if no
    /// change notification arrived (a safety net for lost notifications).
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl_seconds: u64,
}

fn default_registry_type() -> String {
    "sql".into()
}
fn default_registry_schema() -> String {
    "skewless_registry".into()
}
fn default_cache_ttl() -> u64 {
    60
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            registry_type: default_registry_type(),
            schema: default_registry_schema(),
            cache_ttl_seconds: default_cache_ttl(),
        }
    }
}

/// Feast's PostgreSQL store keys, for the offline and the online store alike.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresStoreConfig {
    #[serde(rename = "type")]
    pub store_type: StoreType,
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub database: String,
    /// Offline: the schema source queries run in (search_path). Online: the schema that
    /// holds the online tables.
    #[serde(default = "default_schema")]
    pub db_schema: String,
    #[serde(default = "default_user")]
    pub user: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub sslmode: Option<String>,
    #[serde(default = "default_min_conn")]
    pub min_conn: u32,
    #[serde(default = "default_max_conn")]
    pub max_conn: u32,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreType {
    Postgres,
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    5432
}
fn default_schema() -> String {
    "public".into()
}
fn default_user() -> String {
    "postgres".into()
}
fn default_min_conn() -> u32 {
    0
}
fn default_max_conn() -> u32 {
    16
}

/// Transformation plugins: where `apply` finds them, and the sandbox's limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Folder of built plugins (`<name>.wasm`), relative to the feature repo. `apply`
    /// reads them from here; servers load the applied bytes from the registry.
    #[serde(default = "default_plugins_dir")]
    pub dir: PathBuf,
    /// Budget of the plugin calls of one online request, in milliseconds.
    #[serde(default = "default_online_timeout")]
    pub online_timeout_ms: u64,
    /// Budget of one plugin call on one training-set batch, in milliseconds.
    #[serde(default = "default_offline_timeout")]
    pub offline_timeout_ms: u64,
    /// Linear memory one plugin instance may use, in MiB.
    #[serde(default = "default_plugin_memory")]
    pub memory_mib: usize,
    /// Reuse an instance after a clean call (faster: no instantiation, memory stays
    /// resident) rather than instantiating afresh for every call. A trapped, timed-out
    /// or failed instance is never reused either way.
    #[serde(default = "default_true")]
    pub reuse_instances: bool,
    /// Largest plugin `POST /plugins` accepts, in MiB.
    #[serde(default = "default_max_upload")]
    pub max_upload_mib: usize,
}

fn default_max_upload() -> usize {
    32
}

fn default_true() -> bool {
    true
}

fn default_plugins_dir() -> PathBuf {
    PathBuf::from("../plugins/target/wasm32-wasip2/release")
}
fn default_online_timeout() -> u64 {
    50
}
fn default_offline_timeout() -> u64 {
    30_000
}
fn default_plugin_memory() -> usize {
    64
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            dir: default_plugins_dir(),
            online_timeout_ms: default_online_timeout(),
            offline_timeout_ms: default_offline_timeout(),
            memory_mib: default_plugin_memory(),
            reuse_instances: true,
            max_upload_mib: default_max_upload(),
        }
    }
}

/// The feature server's own settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_bind")]
    pub bind: SocketAddr,
    /// Token required (as `Authorization: Bearer …`) by every mutating route.
    #[serde(default)]
    pub admin_token: Option<String>,
    /// Feature service served by `GET /features/{id}` when the request names none.
    #[serde(default)]
    pub default_feature_service: Option<String>,
    /// Most entities one online request may ask for.
    #[serde(default = "default_max_entities")]
    pub max_entities: usize,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Statement timeout for user-supplied entity SQL, in milliseconds.
    #[serde(default = "default_entity_sql_timeout")]
    pub entity_sql_timeout_ms: u64,
    /// How long a request waits for a database connection before answering 503.
    #[serde(default = "default_acquire_timeout")]
    pub db_acquire_timeout_ms: u64,
    /// How many PostgreSQL backends (cores of the database) share one training set's
    /// join, each over its share of the entity rows (CLI and server alike; 1: one).
    #[serde(default = "default_historical_partitions")]
    pub historical_partitions: usize,
    /// Fewest entity rows for which a training set is split over several backends.
    #[serde(default = "default_historical_partition_min_rows")]
    pub historical_partition_min_rows: u64,
}

fn default_bind() -> SocketAddr {
    "127.0.0.1:8000".parse().expect("static address")
}
fn default_max_entities() -> usize {
    1000
}
fn default_max_body() -> usize {
    2 * 1024 * 1024
}
fn default_entity_sql_timeout() -> u64 {
    60_000
}
fn default_acquire_timeout() -> u64 {
    1_000
}
fn default_historical_partitions() -> usize {
    2
}
fn default_historical_partition_min_rows() -> u64 {
    4096
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: default_bind(),
            admin_token: None,
            default_feature_service: None,
            max_entities: default_max_entities(),
            max_body_bytes: default_max_body(),
            entity_sql_timeout_ms: default_entity_sql_timeout(),
            db_acquire_timeout_ms: default_acquire_timeout(),
            historical_partitions: default_historical_partitions(),
            historical_partition_min_rows: default_historical_partition_min_rows(),
        }
    }
}

impl Config {
    /// Loads `<repo>/feature_store.yaml`, then the `SKEWLESS_*` environment, then
    /// `DATABASE_URL`.
    pub fn load(repo: &Path) -> Result<Self, ConfigError> {
        let path = repo.join(CONFIG_FILE);
        if !path.is_file() {
            return Err(ConfigError::Missing { path });
        }
        let database_url = std::env::var("DATABASE_URL")
            .ok()
            .filter(|url| !url.is_empty());
        Self::from_figment(
            Figment::from(Yaml::file(&path)).merge(Env::prefixed(ENV_PREFIX).split("__")),
            database_url,
        )
    }

    /// Builds a configuration from any figment (tests give inline YAML).
    pub fn from_figment(
        figment: Figment,
        database_url: Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut config: Config = figment.extract().map_err(|errors| {
            ConfigError::Invalid(
                errors
                    .into_iter()
                    .map(|e| describe_figment_error(&e))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        if let Some(url) = &database_url {
            PgConnectOptions::from_str(url).map_err(|e| ConfigError::DatabaseUrl(e.to_string()))?;
        }
        config.database_url = database_url;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if !is_identifier(&self.project) {
            return invalid(format!(
                "key `project`: `{}` is not a valid project name (expected letters, digits and underscores, starting with a letter)",
                self.project
            ));
        }
        if self.provider != "local" {
            return invalid(format!(
                "key `provider`: `{}` is not supported (expected `local`)",
                self.provider
            ));
        }
        if self.registry.registry_type != "sql" {
            return invalid(format!(
                "key `registry.registry_type`: `{}` is not supported (expected `sql`: the registry lives in PostgreSQL)",
                self.registry.registry_type
            ));
        }
        for (key, schema) in [
            ("registry.schema", &self.registry.schema),
            ("online_store.db_schema", &self.online_store.db_schema),
            ("offline_store.db_schema", &self.offline_store.db_schema),
        ] {
            if !is_identifier(schema) {
                return invalid(format!(
                    "key `{key}`: `{schema}` is not a valid schema name (expected letters, digits and underscores)"
                ));
            }
        }
        Ok(())
    }

    /// Connection options of the offline store (source queries run with its schema first
    /// on the search path).
    pub fn offline_connect_options(&self) -> PgConnectOptions {
        self.store_options(&self.offline_store).options([(
            "search_path",
            format!("{},public", self.offline_store.db_schema),
        )])
    }

    /// Connection options of the online store, which also holds the registry.
    pub fn online_connect_options(&self) -> PgConnectOptions {
        self.store_options(&self.online_store)
    }

    fn store_options(&self, store: &PostgresStoreConfig) -> PgConnectOptions {
        let options = match &self.database_url {
            Some(url) => PgConnectOptions::from_str(url).expect("checked when loaded"),
            None => {
                let mut options = PgConnectOptions::new()
                    .host(&store.host)
                    .port(store.port)
                    .database(&store.database)
                    .username(&store.user);
                if let Some(password) = &store.password {
                    options = options.password(password);
                }
                if let Some(mode) = &store.sslmode
                    && let Ok(mode) = mode.parse()
                {
                    options = options.ssl_mode(mode);
                }
                options
            }
        };
        // Every session runs in UTC so that DATE and TIMESTAMP values compare as UTC.
        options
            .options([("TimeZone", "UTC")])
            .application_name("skewless")
            .log_slow_statements(tracing::log::LevelFilter::Debug, Duration::from_secs(5))
            .log_statements(tracing::log::LevelFilter::Trace)
    }

    /// Opens a pool on the offline store.
    pub async fn offline_pool(&self) -> Result<PgPool, sqlx::Error> {
        pool_options(&self.offline_store)
            .connect_with(self.offline_connect_options())
            .await
    }

    /// The connections `skewless historical` needs: one, which runs one thing after
    /// another, plus, when training sets may be split, one for each further backend and
    /// one for the entity SQL's own transaction.
    ///
    /// `warm` names those it will use, which are opened now, at once, in the background.
    /// Each is a new backend (~4 ms to start here), and a split training set would
    /// otherwise open them one after another on its critical path (the entity SQL's
    /// after the snapshot is exported, the other backend's after the first rows are
    /// in). Measured on the stop-15 machine, with entity SQL: 7043 rows ~1.5 ms faster
    /// (within the noise: faster in 4 of 5 interleaved rounds), a 10-row set 1.6 ms
    /// slower (it starts backends it then does not use).
    pub async fn offline_connection_pool(&self, warm: Prewarm) -> Result<PgPool, sqlx::Error> {
        let partitions = self.server.historical_partitions.max(1) as u32;
        let extra = if partitions == 1 { 0 } else { partitions };
        let pool = pool_options(&self.offline_store)
            .min_connections(0)
            .max_connections(1 + extra)
            // A one-shot command's connections are seconds old: the ping a pool sends
            // before handing out an idle one (a round trip at each of the command's
            // ~8 acquisitions) can only find them alive.
            .test_before_acquire(false)
            .connect_with(self.offline_connect_options())
            .await?;
        let open = match warm {
            Prewarm::Nothing => 0,
            Prewarm::Backends => partitions - 1,
            Prewarm::BackendsAndEntitySql => extra,
        };
        if open > 0 {
            // The open connection is held back until every task has its own slot in
            // the pool (the pool counts a connection from the moment it starts opening
            // it), or a task would take it instead of opening a new one; then it goes
            // back for the command's own work, which waits for no backend start. A
            // task gives up after 500 ms (PostgreSQL refusing
            // connections is retried by the pool until its acquire timeout, which would
            // also hold up the pool's close at the end), and a failure goes unreported:
            // the training set opens its own connections, or does without.
            let first = pool.acquire().await?;
            for _ in 0..open {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_millis(500), pool.acquire()).await;
                });
            }
            let started = std::time::Instant::now();
            while pool.size() < 1 + open && started.elapsed() < Duration::from_millis(5) {
                tokio::task::yield_now().await;
            }
            drop(first);
        }
        Ok(pool)
    }

    /// Whether both stores are one database reached as one user (`DATABASE_URL`, or the
    /// same settings), so that the registry can be read over the offline connection.
    pub fn stores_share_database(&self) -> bool {
        let (online, offline) = (
            self.online_connect_options(),
            self.offline_connect_options(),
        );
        online.get_host() == offline.get_host()
            && online.get_port() == offline.get_port()
            && online.get_socket() == offline.get_socket()
            && online.get_database() == offline.get_database()
            && online.get_username() == offline.get_username()
            && (self.database_url.is_some()
                || self.online_store.password == self.offline_store.password)
    }

    /// Opens a pool on the online store (and registry).
    pub async fn online_pool(&self) -> Result<PgPool, sqlx::Error> {
        pool_options(&self.online_store)
            .connect_with(self.online_connect_options())
            .await
    }

    /// Pools for a long-running server: created without connecting (the server starts,
    /// and answers 503, while the database is down) and failing fast when it is.
    pub fn server_pools(&self) -> (PgPool, PgPool) {
        let fail_fast = Duration::from_millis(self.server.db_acquire_timeout_ms);
        // Online reads are small prepared statements run over and over: planning them
        // anew each time (PostgreSQL's custom plans for the first executions, and again
        // whenever it judges them cheaper) costs more than running them. The generic plan
        // (index lookups per key) is the right one for every request shape.
        let online = pool_options(&self.online_store)
            .acquire_timeout(fail_fast)
            .connect_lazy_with(
                self.online_connect_options()
                    .options([("plan_cache_mode", "force_generic_plan"), ("jit", "off")]),
            );
        let offline = pool_options(&self.offline_store)
            .acquire_timeout(fail_fast)
            .connect_lazy_with(self.offline_connect_options());
        (online, offline)
    }

    /// Qualified name of the online table of a view: `"<schema>"."<project>_<view>"`.
    pub fn online_table(&self, view: &str) -> String {
        format!(
            "\"{}\".\"{}_{}\"",
            self.online_store.db_schema, self.project, view
        )
    }
}

/// Which connections `skewless historical` will use besides its first, for
/// [`Config::offline_connection_pool`] to open up front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prewarm {
    /// None (`--explain` runs on one backend).
    Nothing,
    /// One per further backend (entity rows from a file or a request).
    Backends,
    /// One per further backend, and one for the entity SQL's own transaction.
    BackendsAndEntitySql,
}

fn pool_options(store: &PostgresStoreConfig) -> PgPoolOptions {
    PgPoolOptions::new()
        .min_connections(store.min_conn)
        .max_connections(store.max_conn.max(1))
        .acquire_timeout(Duration::from_secs(5))
}

/// Whether `s` is safe to splice into SQL as an identifier (we also always quote).
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 63
}

/// Figment's errors already name the key and the file; we add the expectation in plain
/// words and drop figment's "default." profile prefix.
fn describe_figment_error(error: &figment::Error) -> String {
    let key = error
        .path
        .iter()
        .filter(|p| p.as_str() != "default")
        .cloned()
        .collect::<Vec<_>>()
        .join(".");
    let source = match error.metadata.as_ref() {
        Some(meta) => match &meta.source {
            Some(figment::Source::File(path)) => format!(" in {}", path.display()),
            Some(other) => format!(" in {other}"),
            None => format!(" in {}", meta.name),
        },
        None => String::new(),
    };
    if key.is_empty() {
        format!("{}{source}", error.kind)
    } else {
        format!("key `{key}`{source}: {}", error.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
project: streamflow
provider: local
offline_store: {type: postgres, host: 127.0.0.1, port: 5432, database: streamflow, user: postgres}
online_store: {type: postgres, database: streamflow, db_schema: online}
"#;

    fn load(yaml: &str) -> Result<Config, ConfigError> {
        Config::from_figment(Figment::from(Yaml::string(yaml)), None)
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let config = load(MINIMAL).unwrap();
        assert_eq!(config.registry.schema, "skewless_registry");
        assert_eq!(config.server.bind.to_string(), "127.0.0.1:8000");
        assert_eq!(config.online_store.db_schema, "online");
        assert_eq!(
            config.online_table("subs"),
            "\"online\".\"streamflow_subs\""
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load(&format!("{MINIMAL}\nserver: {{bind_addr: 1}}\n")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("server.bind_addr"), "{msg}");
        assert!(msg.contains("unknown field"), "{msg}");
    }

    #[test]
    fn wrong_type_says_what_was_expected() {
        let yaml = MINIMAL.replace("port: 5432", "port: lots");
        let msg = load(&yaml).unwrap_err().to_string();
        assert!(msg.contains("offline_store.port"), "{msg}");
        assert!(msg.contains("u16") || msg.contains("integer"), "{msg}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API, not ours
    fn env_overrides_nested_keys() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SKEWLESS_SERVER__ADMIN_TOKEN", "s3cret");
            jail.set_env("SKEWLESS_ONLINE_STORE__PORT", "6543");
            let config = Config::from_figment(
                Figment::from(Yaml::string(MINIMAL)).merge(Env::prefixed(ENV_PREFIX).split("__")),
                None,
            )
            .unwrap();
            assert_eq!(config.server.admin_token.as_deref(), Some("s3cret"));
            assert_eq!(config.online_store.port, 6543);
            Ok(())
        });
    }

    #[test]
    fn database_url_overrides_both_stores() {
        let config = Config::from_figment(
            Figment::from(Yaml::string(MINIMAL)),
            Some("postgres://alice:pw@db.example:6000/other".into()),
        )
        .unwrap();
        for options in [
            config.offline_connect_options(),
            config.online_connect_options(),
        ] {
            assert_eq!(options.get_host(), "db.example");
            assert_eq!(options.get_port(), 6000);
            assert_eq!(options.get_database(), Some("other"));
        }
    }

    #[test]
    fn bad_project_name_is_refused() {
        let msg = load(&MINIMAL.replace("streamflow\n", "stream-flow\n"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("key `project`"), "{msg}");
    }
}
