//! The feature server, in-process, on an ephemeral loopback port.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use skewless::config::Config;
use skewless::server::{ServeOptions, ServerError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::TestDb;

/// The repo's configuration pointed at `url` (normally a [`TestDb`]'s): what
/// `Config::load` gives, minus the environment, so a developer's `SKEWLESS_*` variables
/// cannot change a test (as [`super::skewless`] does for the CLI).
pub fn config_for(repo: &Path, url: &str) -> Config {
    use figment::providers::Format;
    let file = repo.join(skewless::config::CONFIG_FILE);
    Config::from_figment(
        figment::Figment::from(figment::providers::Yaml::file(&file)),
        Some(url.to_string()),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// The repo's configuration pointed at `db`.
pub fn config(repo: &Path, db: &TestDb) -> Config {
    config_for(repo, &db.url)
}

/// A server spawned on the test's runtime with [`skewless::server::serve_on`], bound to
/// `127.0.0.1:0`. Dropping it signals shutdown and aborts the task.
pub struct TestServer {
    /// `http://127.0.0.1:<port>`
    pub base_url: String,
    pub addr: SocketAddr,
    /// A client without a proxy (tests talk to loopback only).
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), ServerError>>>,
}

impl TestServer {
    /// Starts a server (not dev mode).
    pub async fn start(config: Config) -> Self {
        Self::start_with(config, false).await
    }

    /// Starts a server; `dev` as `skewless serve --dev` (without file watching).
    pub async fn start_with(config: Config, dev: bool) -> Self {
        Self::start_options(config, dev, None).await
    }

    /// Starts a server in dev mode watching `repo` for changes, as `skewless serve --dev`.
    pub async fn start_watching(config: Config, repo: &Path) -> Self {
        Self::start_options(config, true, Some(repo.to_path_buf())).await
    }

    async fn start_options(config: Config, dev: bool, watch: Option<std::path::PathBuf>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(skewless::server::serve_on(
            listener,
            config,
            ServeOptions { addr, dev, watch },
            async move {
                let _ = rx.await;
            },
        ));
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Self {
            base_url: format!("http://{addr}"),
            addr,
            client,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path))
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(self.url(path))
    }

    /// GET `path`, expecting JSON: (status, body).
    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self.get(path).send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {text}"));
        (status, body)
    }

    /// POST `body` (raw bytes, no Content-Type) to `path`, expecting JSON back.
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let response = self
            .post(path)
            .body(serde_json::to_vec(body).unwrap())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("POST {path}: not JSON ({e}): {text}"));
        (status, body)
    }

    /// Signals graceful shutdown (in-flight requests finish; new connections are refused).
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for the server task to end (after [`Self::trigger_shutdown`]).
    pub async fn join(&mut self, within: Duration) -> Result<(), ServerError> {
        let handle = self.handle.take().expect("joined once");
        tokio::time::timeout(within, handle)
            .await
            .expect("the server must stop in time")
            .expect("the server task must not panic")
    }

    /// Whether the server task has ended.
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Graceful shutdown, waiting for the server to stop.
    pub async fn stop(mut self) {
        self.trigger_shutdown();
        self.join(Duration::from_secs(10)).await.unwrap();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.trigger_shutdown();
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

/// The `tenure_bucket` feature `server` serves for `user`: the plugin tests' probe of which
/// `tenure_bucket` version is active (0.1.0 gives buckets like "0-5", 0.2.0 "v2:<years>").
pub async fn tenure(server: &TestServer, user: &str) -> String {
    let (status, body) = server
        .get_json(&format!("/features/{user}?features=tenure_bucket_fv:tenure_bucket"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["features"]["tenure_bucket"].as_str().unwrap().to_string()
}
