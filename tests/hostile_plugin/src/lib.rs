//! A plugin that misbehaves on purpose, in the way its cargo feature names. It declares
//! one input (`months_active` Int64) and one output (`score` Float64), as a well-behaved
//! plugin over `subs_profile_fv` would, so the host can only find out by running it.

wit_bindgen::generate!({
    world: "transformation",
    path: "../../wit",
});

use skewless::transform::types::{Column, Field, ValueType, Values};

const NAME: &str = if cfg!(feature = "spin") {
    "hostile_spin"
} else if cfg!(feature = "alloc") {
    "hostile_alloc"
} else if cfg!(feature = "panic") {
    "hostile_panic"
} else if cfg!(feature = "rows") {
    "hostile_rows"
} else if cfg!(feature = "types") {
    "hostile_types"
} else if cfg!(feature = "big") {
    "hostile_big"
} else if cfg!(feature = "describe_spin") {
    "hostile_describe_spin"
} else {
    "hostile_none"
};

/// The tenure_bucket look-alikes declare what the real one does (one Int64 input, one
/// String output), except that the mismatching one outputs Int64.
const TENURE: bool = cfg!(feature = "tenure_v2") || cfg!(feature = "tenure_mismatch");

struct Hostile;

fn spin_forever() -> u64 {
    let mut x: u64 = 1;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        if x == 0 {
            return x;
        }
    }
}

impl Guest for Hostile {
    fn describe() -> PluginInfo {
        if cfg!(feature = "describe_spin") {
            spin_forever();
        }
        if TENURE {
            return PluginInfo {
                name: "tenure_bucket".into(),
                version: if cfg!(feature = "tenure_v2") { "0.2.0" } else { "0.3.0" }.into(),
                inputs: vec![Field {
                    name: "months_active".into(),
                    dtype: ValueType::Int64,
                }],
                outputs: vec![Field {
                    name: "tenure_bucket".into(),
                    dtype: if cfg!(feature = "tenure_v2") {
                        ValueType::String
                    } else {
                        ValueType::Int64
                    },
                }],
            };
        }
        PluginInfo {
            name: NAME.to_string(),
            version: "0.1.0".to_string(),
            inputs: vec![Field {
                name: "months_active".into(),
                dtype: ValueType::Int64,
            }],
            outputs: vec![Field {
                name: "score".into(),
                dtype: ValueType::Float64,
            }],
        }
    }

    fn transform(input: Batch) -> Result<Batch, String> {
        let rows = input.rows as usize;
        if TENURE {
            let months = input
                .columns
                .iter()
                .find(|c| c.name == "months_active")
                .ok_or("months_active is missing")?;
            let Values::Int64(values) = &months.values else {
                return Err("months_active is not Int64".into());
            };
            let labels = values.iter().map(|m| format!("v2:{}", m / 12)).collect();
            return Ok(Batch {
                rows: input.rows,
                columns: vec![Column {
                    name: "tenure_bucket".into(),
                    values: Values::String(labels),
                    validity: months.validity.clone(),
                }],
            });
        }
        let mut values = Values::Float64(vec![1.0; rows]);
        let mut out_rows = input.rows;
        if cfg!(feature = "spin") {
            spin_forever();
        }
        if cfg!(feature = "alloc") {
            let mut v = vec![0u8; 1 << 30];
            for i in (0..v.len()).step_by(4096) {
                v[i] = 1;
            }
            std::hint::black_box(&v);
        }
        if cfg!(feature = "panic") {
            panic!("hostile_panic: deliberate panic on a batch of {rows} rows");
        }
        if cfg!(feature = "rows") {
            out_rows += 1;
            values = Values::Float64(vec![1.0; rows + 1]);
        }
        if cfg!(feature = "types") {
            values = Values::Int64(vec![1; rows]);
        }
        if cfg!(feature = "big") {
            return Ok(Batch {
                rows: input.rows,
                columns: vec![Column {
                    name: "blob".into(),
                    values: Values::String(vec!["x".repeat(100 << 20)]),
                    validity: Vec::new(),
                }],
            });
        }
        Ok(Batch {
            rows: out_rows,
            columns: vec![Column {
                name: "score".into(),
                values,
                validity: Vec::new(),
            }],
        })
    }
}

export!(Hostile);
