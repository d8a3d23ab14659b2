//! The Wasm host: one wasmtime [`Engine`], plugins compiled once, every call in a
//! capability-less instance with a deadline and a memory cap.
//!
//! Choices, measured on the 2-core reference machine (see reports/benchmarks.md):
//! - instances come from a kept `InstancePre` with the pooling allocator; one that
//!   finished a call cleanly is reused (≈ 3 µs per call instead of ≈ 25 µs for a fresh
//!   one), one that trapped, timed out, failed or printed is dropped, never re-entered;
//! - calls are `async` with epoch interruption: a 1 ms ticker thread bumps the epoch and
//!   the deadline callback yields to tokio at every tick, so a slow plugin never holds a
//!   runtime worker for more than a millisecond, and traps once its budget is spent
//!   (measured against `spawn_blocking`, which adds a thread hand-off to every call);
//! - the input batch is lent, not copied: its columns move into the WIT types and back;
//! - NaN canonicalization is on, so floats are bit-reproducible across machines.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    UpdateDeadline,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::batch::Batch;
use crate::definitions::{PluginInfo, ValueType};

use super::convert;

pub(super) mod bindings {
    wasmtime::component::bindgen!({
        world: "transformation",
        path: "wit/transform.wit",
        exports: { default: async },
    });
}

/// The WIT package plugins are built against; a component must import its `types`
/// interface at a compatible version (same major, or same minor while at 0.x).
pub const SUPPORTED_PACKAGE: &str = "skewless:transform@0.1.0";
const TYPES_INTERFACE: &str = "skewless:transform/types@";

/// Bytes of a plugin's stderr kept per call (panic messages land there).
const STDERR_CAP: usize = 16 * 1024;
/// How often the epoch advances: the granularity of deadlines and of yields to tokio.
const TICK: Duration = Duration::from_millis(1);

/// Limits applied to every call. They never change results, only whether a call may
/// finish.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Linear memory one instance may use.
    pub memory_bytes: usize,
    /// Largest output a call may return (sum of its values' sizes).
    pub max_output_bytes: usize,
    /// Where compiled artifacts are cached (by content hash and engine settings);
    /// `None`: compile in memory every time.
    pub cache_dir: Option<PathBuf>,
    /// Keep instances that finished a call cleanly for the next call (see
    /// [`Plugin::transform`]); `false`: a fresh instance for every call.
    pub reuse_instances: bool,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            max_output_bytes: 64 << 20,
            cache_dir: None,
            reuse_instances: true,
        }
    }
}

/// Why a plugin cannot be loaded. Every message names the plugin (its file or name).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("plugin {plugin}: not a WebAssembly component ({reason}); build it with `cargo build --release --target wasm32-wasip2`")]
    NotAComponent { plugin: String, reason: String },
    #[error("plugin {plugin} was built for {found}; this host supports {SUPPORTED_PACKAGE} (rebuild it against this skewless's wit/transform.wit)")]
    WrongPackage { plugin: String, found: String },
    #[error("plugin {plugin} does not implement the `transformation` world of {SUPPORTED_PACKAGE}: {reason}")]
    WrongWorld { plugin: String, reason: String },
    #[error("plugin {plugin} imports `{import}`, which the sandbox does not provide (plugins get no host capabilities)")]
    UnknownImport { plugin: String, import: String },
    #[error("plugin {plugin}: describe() failed: {source}")]
    Describe {
        plugin: String,
        #[source]
        source: TransformError,
    },
    #[error("plugin {plugin}: {message}")]
    BadInfo { plugin: String, message: String },
    /// The host itself could not start (not the plugin's fault): the Wasm engine could
    /// not be configured on this machine, e.g. no virtual memory for the instance pool.
    #[error("plugin {plugin} cannot be loaded: the Wasm engine did not start ({reason})")]
    Engine { plugin: String, reason: String },
}

/// Why a call failed. Every message names the plugin.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    #[error("plugin `{plugin}` ran past its {budget_ms} ms budget and was stopped")]
    Timeout { plugin: String, budget_ms: u64 },
    #[error("plugin `{plugin}` tried to use more than its {limit_mib} MiB of memory and was stopped")]
    Memory { plugin: String, limit_mib: usize },
    #[error("plugin `{plugin}` crashed: {message}")]
    Trap { plugin: String, message: String },
    #[error("plugin `{plugin}` refused the batch: {message}")]
    Refused { plugin: String, message: String },
    #[error("plugin `{plugin}` returned a bad batch: {message}")]
    BadOutput { plugin: String, message: String },
    #[error("plugin `{plugin}` cannot run now: {message}")]
    Unavailable { plugin: String, message: String },
}

impl TransformError {
    /// Whether the plugin (rather than the host) is at fault.
    pub fn is_plugin_fault(&self) -> bool {
        !matches!(self, Self::Unavailable { .. })
    }
}

/// What one instance's store holds: a WASI context granting nothing, the limiter, and
/// the call's deadline.
struct Sandbox {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryCap,
    deadline: Instant,
    timed_out: bool,
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps linear memory and remembers whether the cap was hit (so the error says so).
struct MemoryCap {
    limit: usize,
    hit: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = true;
            return Err(wasmtime::format_err!(
                "memory limit of {} bytes exceeded",
                self.limit
            ));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// A wall clock stuck at the Unix epoch: plugins cannot tell the time.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// The host: one engine, one linker, the epoch ticker. Cheap to share (`Arc`).
pub struct Runtime {
    engine: Engine,
    linker: Linker<Sandbox>,
    options: RuntimeOptions,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("options", &self.options)
            .finish()
    }
}

impl Runtime {
    /// Builds the engine (pooling allocator, epoch interruption, NaN canonicalization)
    /// and starts the epoch ticker.
    pub fn new(options: RuntimeOptions) -> Result<Arc<Self>, wasmtime::Error> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.cranelift_nan_canonicalization(true);
        config.wasm_component_model(true);
        let mut pool = PoolingAllocationConfig::default();
        pool.max_memory_size(options.memory_bytes);
        // Concurrent instances (one per running call); each memory slot reserves
        // address space (not memory) for bounds-check-free code.
        pool.total_component_instances(256);
        pool.total_memories(256);
        pool.total_tables(256);
        pool.total_core_instances(512);
        // One fiber stack per running call, like the instances. (wasmtime's default, 1000
        // stacks, costs a guard-page mprotect each when the engine starts: ~5 ms of a
        // one-shot CLI run.)
        pool.total_stacks(256);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        // Every WASI interface a std guest may import, backed by a context that grants
        // nothing: no preopened directories, no env or args, sockets denied, clocks
        // frozen, randomness a constant. Anything else a plugin imports is refused at
        // load time.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        linker.instance(&format!(
            "{TYPES_INTERFACE}{}",
            SUPPORTED_PACKAGE.rsplit('@').next().expect("versioned")
        ))?;
        start_ticker(&engine);
        Ok(Arc::new(Self {
            engine,
            linker,
            options,
        }))
    }

    pub fn options(&self) -> &RuntimeOptions {
        &self.options
    }

    /// Compiles (or loads the cached artifact of) a plugin, checks it implements the
    /// world, and runs its `describe()`. `label` names it in messages (a file name).
    #[tracing::instrument(skip_all, fields(plugin = %label))]
    pub async fn load(self: &Arc<Self>, label: &str, bytes: &[u8]) -> Result<Plugin, LoadError> {
        let sha256 = hex::encode(Sha256::digest(bytes));
        let started = Instant::now();
        let this = self.clone();
        let owned = bytes.to_vec();
        let sha = sha256.clone();
        let name = label.to_string();
        let component = tokio::task::spawn_blocking(move || this.compile(&name, &sha, &owned))
            .await
            .map_err(|e| LoadError::NotAComponent {
                plugin: label.to_string(),
                reason: format!("compilation panicked: {e}"),
            })??;
        self.check_imports(label, &component)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::UnknownImport {
                plugin: label.to_string(),
                import: root_message(&e),
            })?;
        let pre = bindings::TransformationPre::new(pre).map_err(|e| LoadError::WrongWorld {
            plugin: label.to_string(),
            reason: root_message(&e),
        })?;
        let mut plugin = Plugin {
            runtime: self.clone(),
            pre,
            idle: std::sync::Mutex::new(Vec::new()),
            sha256,
            size: bytes.len(),
            info: PluginInfo::default(),
        };
        let raw = plugin
            .describe(label, Duration::from_secs(5))
            .await
            .map_err(|source| LoadError::Describe {
                plugin: label.to_string(),
                source,
            })?;
        plugin.info = convert::plugin_info(raw).map_err(|message| LoadError::BadInfo {
            plugin: label.to_string(),
            message,
        })?;
        tracing::info!(
            name = %plugin.info.name,
            version = %plugin.info.version,
            sha256 = %plugin.sha256,
            ms = started.elapsed().as_millis() as u64,
            "plugin loaded"
        );
        Ok(plugin)
    }

    fn compile(&self, label: &str, sha256: &str, bytes: &[u8]) -> Result<Component, LoadError> {
        let not_component = |reason: String| LoadError::NotAComponent {
            plugin: label.to_string(),
            reason,
        };
        if !wasmparser::Parser::is_component(bytes) {
            let reason = if wasmparser::Parser::is_core_wasm(bytes) {
                "it is a core module".to_string()
            } else {
                "no component header".to_string()
            };
            return Err(not_component(reason));
        }
        let Some(dir) = &self.options.cache_dir else {
            return Component::new(&self.engine, bytes).map_err(|e| not_component(root_message(&e)));
        };
        let path = dir.join(format!("{sha256}-{}.cwasm", self.engine_key()));
        if path.is_file() {
            // SAFETY: the file was written by `precompile_component` of an engine with
            // these exact settings (the key says so), in a directory only skewless writes.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(component) => return Ok(component),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "ignoring a bad cached artifact"),
            }
        }
        let artifact = self
            .engine
            .precompile_component(bytes)
            .map_err(|e| not_component(root_message(&e)))?;
        // The cache is an optimisation: failing to write it only costs a recompile.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::create_dir_all(dir).is_ok()
            && std::fs::write(&tmp, &artifact).is_ok()
            && std::fs::rename(&tmp, &path).is_ok()
        {
            // SAFETY: as above; we just wrote it.
            if let Ok(component) = unsafe { Component::deserialize_file(&self.engine, &path) } {
                return Ok(component);
            }
        }
        let _ = std::fs::remove_file(&tmp);
        // SAFETY: `artifact` comes from this engine's own `precompile_component`.
        unsafe { Component::deserialize(&self.engine, &artifact) }
            .map_err(|e| not_component(root_message(&e)))
    }

    /// A short key for the engine settings an artifact depends on.
    fn engine_key(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        format!("{:016x}", h.finish())
    }

    /// Refuses components built against another version of our package, naming it.
    fn check_imports(&self, label: &str, component: &Component) -> Result<(), LoadError> {
        let ty = component.component_type();
        for (name, _) in ty.imports(&self.engine) {
            if let Some(version) = name.strip_prefix(TYPES_INTERFACE) {
                let supported = SUPPORTED_PACKAGE.rsplit('@').next().expect("versioned");
                if !compatible(version, supported) {
                    return Err(LoadError::WrongPackage {
                        plugin: label.to_string(),
                        found: format!("skewless:transform@{version}"),
                    });
                }
            } else if name.starts_with("skewless:transform/") {
                return Err(LoadError::WrongPackage {
                    plugin: label.to_string(),
                    found: name.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// Semver compatibility of two `x.y.z` versions (0.x: same minor).
fn compatible(found: &str, supported: &str) -> bool {
    let parts = |v: &str| -> Vec<u64> {
        v.split(['.', '-', '+'])
            .take(3)
            .map(|p| p.parse().unwrap_or(u64::MAX))
            .collect()
    };
    let (f, s) = (parts(found), parts(supported));
    if f.len() < 2 || s.len() < 2 {
        return false;
    }
    if s[0] == 0 {
        f[0] == 0 && f[1] == s[1]
    } else {
        f[0] == s[0]
    }
}

/// The ticker every deadline counts in; it lives as long as the process.
fn start_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("skewless-wasm-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(TICK);
            }
        })
        .expect("spawn the epoch ticker");
}

fn root_message(e: &wasmtime::Error) -> String {
    format!("{e:#}")
}

/// An instance with its store, between calls.
struct Warm {
    store: Store<Sandbox>,
    stderr: MemoryOutputPipe,
    instance: bindings::Transformation,
}

/// Most idle instances kept per plugin (one per concurrent call is enough on a small
/// machine; extra ones are dropped).
const MAX_IDLE: usize = 16;

/// A loaded plugin: its describe() output, its hash, and what makes an instance.
pub struct Plugin {
    runtime: Arc<Runtime>,
    pre: bindings::TransformationPre<Sandbox>,
    /// Instances that completed a call cleanly, ready for the next one.
    idle: std::sync::Mutex<Vec<Warm>>,
    sha256: String,
    size: usize,
    info: PluginInfo,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.info.name)
            .field("version", &self.info.version)
            .field("sha256", &self.sha256)
            .finish()
    }
}

impl Plugin {
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    pub fn name(&self) -> &str {
        &self.info.name
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// A fresh store whose WASI context grants nothing, with the call's deadline.
    fn store(&self, budget: Duration) -> (Store<Sandbox>, MemoryOutputPipe) {
        let stderr = MemoryOutputPipe::new(STDERR_CAP);
        let wasi = WasiCtx::builder()
            .stderr(stderr.clone())
            .stdout(stderr.clone())
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .secure_random(wasmtime_wasi::Deterministic::new(vec![0]))
            .insecure_random(wasmtime_wasi::Deterministic::new(vec![0]))
            .insecure_random_seed(0)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        let mut store = Store::new(
            &self.runtime.engine,
            Sandbox {
                wasi,
                table: ResourceTable::new(),
                limiter: MemoryCap {
                    limit: self.runtime.options.memory_bytes,
                    hit: false,
                },
                deadline: Instant::now() + budget,
                timed_out: false,
            },
        );
        store.limiter(|s| &mut s.limiter);
        // With epoch interruption a new store's deadline is "now": set it before running
        // anything, then yield to tokio at every tick until the budget is spent.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            let sandbox = ctx.data_mut();
            if Instant::now() >= sandbox.deadline {
                sandbox.timed_out = true;
                return Ok(UpdateDeadline::Interrupt);
            }
            Ok(UpdateDeadline::Yield(1))
        });
        (store, stderr)
    }

    /// Turns a wasmtime failure into a message about the plugin.
    fn failure(
        &self,
        plugin: &str,
        store: &Store<Sandbox>,
        stderr: &MemoryOutputPipe,
        budget: Duration,
        error: wasmtime::Error,
    ) -> TransformError {
        let plugin = plugin.to_string();
        if store.data().timed_out {
            return TransformError::Timeout {
                plugin,
                budget_ms: budget.as_millis() as u64,
            };
        }
        if store.data().limiter.hit {
            return TransformError::Memory {
                plugin,
                limit_mib: self.runtime.options.memory_bytes >> 20,
            };
        }
        let text = String::from_utf8_lossy(&stderr.contents()).trim().to_string();
        let message = if text.is_empty() {
            root_message(&error)
        } else {
            format!("{} ({})", text, root_message(&error))
        };
        // An exhausted instance pool is the host's problem, not the plugin's.
        if error.chain().any(|e| e.is::<wasmtime::PoolConcurrencyLimitError>()) {
            return TransformError::Unavailable { plugin, message };
        }
        TransformError::Trap { plugin, message }
    }

    fn log_output(&self, stderr: &MemoryOutputPipe) {
        let out = stderr.contents();
        if !out.is_empty() {
            tracing::warn!(plugin = %self.info.name, output = %String::from_utf8_lossy(&out), "plugin wrote to stdout/stderr");
        }
    }

    async fn describe(
        &self,
        label: &str,
        budget: Duration,
    ) -> Result<bindings::skewless::transform::types::PluginInfo, TransformError> {
        let (mut store, stderr) = self.store(budget);
        let result = async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            instance.call_describe(&mut store).await
        }
        .await;
        self.log_output(&stderr);
        result.map_err(|e| self.failure(label, &store, &stderr, budget, e))
    }

    /// Runs `transform` on `input` (columns named and typed as [`PluginInfo::inputs`])
    /// within `budget`, and returns the declared outputs, checked.
    ///
    /// The instance comes from the idle list, or fresh from the `InstancePre`. Only an
    /// instance whose call succeeded and printed nothing goes back to the list: after a
    /// trap, a timeout, an error or any output it is dropped, never re-entered. Reuse
    /// skips instantiation and keeps the instance's memory resident (reports/benchmarks.md
    /// measures both ways); `transform` must not keep state between calls, which the
    /// world's contract says and the offline/online equality test checks.
    #[tracing::instrument(skip_all, fields(plugin = %self.info.name, rows = input.rows))]
    ///
    /// `input` is lent, not consumed: its columns cross the boundary without a host-side
    /// copy (the canonical ABI copies them into the instance once) and are back in
    /// `input` when this returns, whatever the outcome. (If the future is dropped before
    /// it completes, `input` is left empty: callers lend a batch they own.)
    pub async fn transform(&self, input: &mut Batch, budget: Duration) -> Result<Batch, TransformError> {
        let name = self.info.name.as_str();
        let rows = input.rows;
        let dtypes: Vec<ValueType> = input.columns.iter().map(|c| c.dtype).collect();
        let wit_input = convert::to_wit(std::mem::take(input));
        let reuse = self.runtime.options.reuse_instances;
        let warm = if reuse {
            self.idle.lock().expect("not poisoned").pop()
        } else {
            None
        };
        let (mut store, stderr, instance) = match warm {
            Some(mut w) => {
                let data = w.store.data_mut();
                data.deadline = Instant::now() + budget;
                data.timed_out = false;
                data.limiter.hit = false;
                w.store.set_epoch_deadline(1);
                (w.store, w.stderr, Some(w.instance))
            }
            None => {
                let (store, stderr) = self.store(budget);
                (store, stderr, None)
            }
        };
        let result = async {
            let instance = match instance {
                Some(i) => i,
                None => self.pre.instantiate_async(&mut store).await?,
            };
            let out = instance.call_transform(&mut store, &wit_input).await?;
            Ok::<_, wasmtime::Error>((instance, out))
        }
        .await;
        *input = convert::from_lent(wit_input, &dtypes);
        let printed = !stderr.contents().is_empty();
        self.log_output(&stderr);
        match result {
            Err(e) => Err(self.failure(name, &store, &stderr, budget, e)),
            Ok((_, Err(message))) => Err(TransformError::Refused {
                plugin: name.to_string(),
                message,
            }),
            Ok((instance, Ok(output))) => {
                let checked = convert::from_wit(
                    output,
                    rows,
                    &self.info.outputs,
                    self.runtime.options.max_output_bytes,
                )
                .map_err(|message| TransformError::BadOutput {
                    plugin: name.to_string(),
                    message,
                });
                if reuse && checked.is_ok() && !printed {
                    let mut idle = self.idle.lock().expect("not poisoned");
                    if idle.len() < MAX_IDLE {
                        idle.push(Warm {
                            store,
                            stderr,
                            instance,
                        });
                    }
                }
                checked
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::compatible;

    #[test]
    fn package_versions_follow_semver() {
        assert!(compatible("0.1.0", "0.1.0"));
        assert!(compatible("0.1.3", "0.1.0"));
        assert!(!compatible("0.2.0", "0.1.0"));
        assert!(!compatible("1.0.0", "0.1.0"));
        assert!(compatible("1.4.0", "1.0.0"));
        assert!(!compatible("2.0.0", "1.0.0"));
    }
}
