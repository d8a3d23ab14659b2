//! Per-row cost of a derived-feature plugin: the churn_signals component run by the
//! skewless host (a reused or a fresh sandboxed instance per call, the batch lent to it
//! and copied into and out of the instance, output checked) against the very same Rust
//! compiled natively and called directly; and (`call_mode`) async calls against
//! spawn_blocking.
//!
//! `cargo bench --bench transform` (after scripts/build-plugins.sh). Criterion reports
//! time per batch and elements/s; reports/benchmarks.md turns them into ns per row.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use skewless::batch::{Batch, Column, Validity, Values};
use skewless::config::PluginsConfig;
use skewless::definitions::ValueType;
use skewless::plugins::PluginStore;

const SIZES: [usize; 5] = [1, 16, 256, 4096, 65536];

/// The allocator the skewless binary runs with (src/main.rs), so the host side of a call
/// costs here what it costs in the server.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// StreamFlow-like inputs; every 13th row has no usage data (NULL watch hours).
fn inputs(rows: usize) -> Batch {
    let mut nulls = Validity::default();
    for i in 0..rows {
        nulls.push(i % 13 != 0);
    }
    let column = |name: &str, dtype, values, validity: Option<Validity>| Column {
        name: name.into(),
        dtype,
        values,
        validity,
    };
    Batch {
        rows,
        columns: vec![
            column("months_active", ValueType::Int64, Values::Int64((0..rows).map(|i| (i % 72) as i64).collect()), None),
            column("monthly_fee", ValueType::Float32, Values::Float32((0..rows).map(|i| 18.25 + (i % 100) as f32).collect()), None),
            column("watch_hours_30d", ValueType::Float32, Values::Float32((0..rows).map(|i| (i % 50) as f32 * 1.5).collect()), Some(nulls.clone())),
            column("skips_7d", ValueType::Int64, Values::Int64((0..rows).map(|i| (i % 9) as i64).collect()), Some(nulls)),
            column("rebuffer_events_7d", ValueType::Int64, Values::Int64((0..rows).map(|i| (i % 4) as i64).collect()), None),
            column("failed_payments_90d", ValueType::Int64, Values::Int64((0..rows).map(|i| (i % 3 == 0) as i64).collect()), None),
        ],
    }
}

/// The same batch in another crate's copy of the WIT types (`$t`: a module holding
/// `Batch`, `Column` and `Values`).
macro_rules! wit_batch {
    ($t:path, $batch:expr) => {{
        use $t as t;
        let batch: &Batch = $batch;
        t::Batch {
            rows: batch.rows as u32,
            columns: batch
                .columns
                .iter()
                .map(|c| t::Column {
                    name: c.name.clone(),
                    values: match &c.values {
                        Values::Int64(v) => t::Values::Int64(v.clone()),
                        Values::Float32(v) => t::Values::Float32(v.clone()),
                        _ => unreachable!("inputs are Int64 and Float32"),
                    },
                    validity: c.validity.as_ref().map(|v| v.bytes().to_vec()).unwrap_or_default(),
                })
                .collect(),
        }
    }};
}

/// The same batch in the plugin crate's own (wit-bindgen) types, for the native call.
fn native_inputs(batch: &Batch) -> skewless_plugin::Batch {
    wit_batch!(skewless_plugin, batch)
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let load = |reuse_instances: bool| {
        let config = PluginsConfig {
            reuse_instances,
            ..PluginsConfig::default()
        };
        let store = PluginStore::new(&config, &root.join("feature_repo")).unwrap();
        let bytes = std::fs::read(store.dir().join("churn_signals.wasm"))
            .expect("build the plugins first: scripts/build-plugins.sh");
        runtime
            .block_on(store.load_bytes("churn_signals.wasm", &bytes))
            .unwrap()
    };
    let reused = load(true);
    let fresh = load(false);

    let mut group = c.benchmark_group("churn_signals");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    for rows in SIZES {
        let batch = inputs(rows);
        let native = native_inputs(&batch);
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_with_input(BenchmarkId::new("native", rows), &native, |b, input| {
            b.iter(|| black_box(churn_signals::run(black_box(input)).unwrap()))
        });
        for (name, plugin) in [("wasm-reused", &reused), ("wasm-fresh", &fresh)] {
            // The batch is lent to the plugin (as the training-set and online paths do):
            // no host-side copy per call.
            let mut input = batch.clone();
            group.bench_function(BenchmarkId::new(name, rows), |b| {
                b.iter(|| {
                    runtime
                        .block_on(plugin.transform(&mut input, Duration::from_secs(30)))
                        .unwrap()
                })
            });
        }
    }
    group.finish();
}

/// The alternative to async calls that issue #5 asks to measure: the same component called
/// synchronously on tokio's blocking pool (`spawn_blocking`), as a server would have to
/// without async support. Bench-only: the product runs async calls (see `call_mode`).
mod blocking {
    use std::sync::{Arc, Mutex};

    use wasmtime::component::{Component, Linker, ResourceTable};
    use wasmtime::{Config, Engine, Store};
    use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

    wasmtime::component::bindgen!({
        world: "transformation",
        path: "wit/transform.wit",
    });

    pub use self::skewless::transform::types as wit;

    pub struct Ctx {
        wasi: WasiCtx,
        table: ResourceTable,
    }

    impl WasiView for Ctx {
        fn ctx(&mut self) -> WasiCtxView<'_> {
            WasiCtxView {
                ctx: &mut self.wasi,
                table: &mut self.table,
            }
        }
    }

    /// One instance (reused, as the product's default), behind a mutex so a blocking
    /// task can take it.
    pub type Instance = Arc<Mutex<(Store<Ctx>, Transformation)>>;

    /// Engine settings as the product's (epoch interruption, NaN canonicalization), WASI
    /// granting nothing, linked synchronously.
    pub fn instance(bytes: &[u8]) -> Instance {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.cranelift_nan_canonicalization(true);
        config.wasm_component_model(true);
        let engine = Engine::new(&config).unwrap();
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
        linker.instance("skewless:transform/types@0.1.0").unwrap();
        let component = Component::new(&engine, bytes).unwrap();
        let ctx = Ctx {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
        };
        let mut store = Store::new(&engine, ctx);
        store.set_epoch_deadline(u64::MAX / 2);
        let plugin = Transformation::instantiate(&mut store, &component, &linker).unwrap();
        Arc::new(Mutex::new((store, plugin)))
    }

    pub fn call(instance: &Instance, input: &wit::Batch) -> wit::Batch {
        let mut guard = instance.lock().unwrap();
        let (store, plugin) = &mut *guard;
        plugin.call_transform(store, input).unwrap().unwrap()
    }
}

/// The same batch in the synchronous bindings' types.
fn blocking_inputs(batch: &Batch) -> blocking::wit::Batch {
    wit_batch!(blocking::wit, batch)
}

/// Async calls (the product) against `spawn_blocking` + synchronous calls, each issued
/// from a task on a 2-worker multi-thread runtime, as a request handler would.
fn call_mode(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let store = PluginStore::new(&PluginsConfig::default(), &root.join("feature_repo")).unwrap();
    let bytes = std::fs::read(store.dir().join("churn_signals.wasm"))
        .expect("build the plugins first: scripts/build-plugins.sh");
    let plugin = runtime
        .block_on(store.load_bytes("churn_signals.wasm", &bytes))
        .unwrap();
    let sync_instance = blocking::instance(&bytes);

    let mut group = c.benchmark_group("call_mode");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    for rows in [1, 256, 4096] {
        let batch = inputs(rows);
        group.throughput(Throughput::Elements(rows as u64));
        let mut slot = Some(batch.clone());
        group.bench_function(BenchmarkId::new("async", rows), |b| {
            b.iter(|| {
                let (plugin, mut input) = (plugin.clone(), slot.take().unwrap());
                let (input, out) = runtime
                    .block_on(runtime.spawn(async move {
                        let out = plugin.transform(&mut input, Duration::from_secs(30)).await;
                        (input, out.unwrap())
                    }))
                    .unwrap();
                slot = Some(input);
                out
            })
        });
        let input = std::sync::Arc::new(blocking_inputs(&batch));
        group.bench_function(BenchmarkId::new("spawn_blocking", rows), |b| {
            b.iter(|| {
                let (instance, input) = (sync_instance.clone(), input.clone());
                runtime
                    .block_on(runtime.spawn(async move {
                        tokio::task::spawn_blocking(move || blocking::call(&instance, &input))
                            .await
                            .unwrap()
                    }))
                    .unwrap()
            })
        });
        group.bench_function(BenchmarkId::new("sync_inline", rows), |b| {
            b.iter(|| blocking::call(&sync_instance, &input))
        });
    }
    group.finish();
}

criterion_group!(benches, bench, call_mode);
criterion_main!(benches);
