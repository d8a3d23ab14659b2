//! Per-row cost of a derived-feature plugin: the churn_signals component run by the
//! skewless host (fresh sandboxed instance per call, batch copied in and out, output
//! checked) against the very same Rust compiled natively and called directly.
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

/// The same batch in the plugin crate's own (wit-bindgen) types, for the native call.
fn native_inputs(batch: &Batch) -> churn_signals::Batch {
    use churn_signals::skewless::transform::types as t;
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
            group.bench_with_input(BenchmarkId::new(name, rows), &batch, |b, input| {
                b.iter(|| {
                    runtime
                        .block_on(plugin.transform(input.clone(), Duration::from_secs(30)))
                        .unwrap()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
