//! `tenure_bucket`: a skewless transformation plugin (a WebAssembly component exporting
//! the `transformation` world of `wit/transform.wit`) bucketing `months_active`.
//!
//! This file is the WIT glue only: it takes the input column by name (checked by the
//! [`skewless_plugin`] SDK), hands a plain slice to [`buckets::compute`] and wraps the
//! result back into a batch. The buckets and the NULL rule are in [`buckets`].
//! Everything here also compiles natively, so `cargo test` exercises the same [`run`]
//! that the exported `transform` calls.

pub mod buckets;

pub use skewless_plugin::columns;
use skewless_plugin::{Batch, Guest, PluginInfo, ValueType, Values, column, output};

/// The plugin's name, as definitions refer to it (and the prefix of its error messages).
pub const NAME: &str = "tenure_bucket";

/// The columns `transform` reads, by name and type.
pub const INPUTS: [(&str, ValueType); 1] = [("months_active", ValueType::Int64)];

/// The columns `transform` returns, in this order.
pub const OUTPUTS: [(&str, ValueType); 1] = [("tenure_bucket", ValueType::String)];

struct TenureBucket;

impl Guest for TenureBucket {
    fn describe() -> PluginInfo {
        plugin_info()
    }

    fn transform(input: Batch) -> Result<Batch, String> {
        run(&input)
    }
}

skewless_plugin::export!(TenureBucket);

/// What `describe` returns.
pub fn plugin_info() -> PluginInfo {
    skewless_plugin::plugin_info(NAME, env!("CARGO_PKG_VERSION"), &INPUTS, &OUTPUTS)
}

/// What `transform` returns: the bucket of every row of `input`, or an error naming the
/// offending column or row. Columns other than the input are ignored.
pub fn run(input: &Batch) -> Result<Batch, String> {
    let rows = input.rows as usize;
    let months_active = column(NAME, input, "months_active")?;
    let out = buckets::compute(rows, months_active).map_err(|e| {
        format!(
            "{NAME}: row {}: months_active is {}, expected a tenure >= 0 months",
            e.row, e.months_active
        )
    })?;
    Ok(Batch {
        rows: input.rows,
        columns: vec![output(
            "tenure_bucket",
            Values::String(out.values),
            out.validity,
        )],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use columns::bitmap_from_bools;
    use skewless_plugin::{Column, dtype};

    fn col(name: &str, values: Values, validity: Vec<u8>) -> Column {
        Column {
            name: name.to_string(),
            values,
            validity,
        }
    }

    fn months(values: Vec<i64>, validity: Vec<u8>) -> Batch {
        Batch {
            rows: values.len() as u32,
            columns: vec![col("months_active", Values::Int64(values), validity)],
        }
    }

    fn strings(c: &Column) -> &[String] {
        match &c.values {
            Values::String(v) => v,
            other => panic!("{}: {other:?}", c.name),
        }
    }

    #[test]
    fn describe_declares_the_input_and_output() {
        let info = <TenureBucket as Guest>::describe();
        assert_eq!(info.name, "tenure_bucket");
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(info.inputs.len(), 1);
        assert_eq!(
            (info.inputs[0].name.as_str(), info.inputs[0].dtype),
            ("months_active", ValueType::Int64)
        );
        assert_eq!(info.outputs.len(), 1);
        assert_eq!(
            (info.outputs[0].name.as_str(), info.outputs[0].dtype),
            ("tenure_bucket", ValueType::String)
        );
    }

    #[test]
    fn transform_buckets_by_name_among_other_columns() {
        let mut b = months(vec![0, 5, 6, 11, 12, 23, 24, 47, 48, 100], vec![]);
        b.columns.insert(
            0,
            col("user_id", Values::String(vec!["u".into(); 10]), vec![]),
        );
        b.columns
            .push(col("months_active_v2", Values::Int64(vec![-1; 10]), vec![]));
        let out = <TenureBucket as Guest>::transform(b).unwrap();
        assert_eq!(out.rows, 10);
        assert_eq!(out.columns.len(), 1);
        let c = &out.columns[0];
        assert_eq!(c.name, "tenure_bucket");
        assert_eq!(dtype(&c.values), ValueType::String);
        assert_eq!(
            strings(c),
            [
                "0-5", "0-5", "6-11", "6-11", "12-23", "12-23", "24-47", "24-47", "48+", "48+"
            ]
        );
        assert!(c.validity.is_empty());
    }

    #[test]
    fn transform_maps_null_to_null_over_several_bitmap_bytes() {
        // 20 rows, every third NULL (holding a negative that must not be read).
        let valid: Vec<bool> = (0..20).map(|i| i % 3 != 0).collect();
        let values: Vec<i64> = (0..20)
            .map(|i| if i % 3 == 0 { -1 } else { i * 3 })
            .collect();
        let out = run(&months(values.clone(), bitmap_from_bools(&valid))).unwrap();
        let c = &out.columns[0];
        assert_eq!(c.validity, bitmap_from_bools(&valid));
        assert_eq!(c.validity, [0b1011_0110, 0b0110_1101, 0b0000_1011]);
        for i in 0..20 {
            let want = if valid[i] {
                buckets::tenure_bucket(values[i]).unwrap()
            } else {
                ""
            };
            assert_eq!(strings(c)[i], want, "row {i}");
        }
    }

    #[test]
    fn transform_on_zero_rows() {
        let out = run(&months(vec![], vec![])).unwrap();
        assert_eq!(out.rows, 0);
        assert!(strings(&out.columns[0]).is_empty());
        assert!(out.columns[0].validity.is_empty());
    }

    #[test]
    fn a_negative_tenure_fails_the_batch_naming_the_row() {
        let err =
            <TenureBucket as Guest>::transform(months(vec![3, 4, -1, 9], vec![])).unwrap_err();
        assert_eq!(
            err,
            "tenure_bucket: row 2: months_active is -1, expected a tenure >= 0 months"
        );
    }

    #[test]
    fn a_missing_or_wrong_column_is_named() {
        let err = run(&Batch {
            rows: 0,
            columns: vec![],
        })
        .unwrap_err();
        assert_eq!(
            err,
            "tenure_bucket: input column `months_active` is missing"
        );
        let b = Batch {
            rows: 2,
            columns: vec![col("months_active", Values::Int32(vec![1, 2]), vec![])],
        };
        assert_eq!(
            run(&b).unwrap_err(),
            "tenure_bucket: input column `months_active` has type int32, expected int64"
        );
        let b = Batch {
            rows: 1,
            columns: vec![col(
                "months_active",
                Values::String(vec!["1".into()]),
                vec![],
            )],
        };
        assert_eq!(
            run(&b).unwrap_err(),
            "tenure_bucket: input column `months_active` has type string, expected int64"
        );
        let b = Batch {
            rows: 3,
            columns: vec![col("months_active", Values::Int64(vec![1, 2]), vec![])],
        };
        assert_eq!(
            run(&b).unwrap_err(),
            "tenure_bucket: input column `months_active` has 2 values, expected 3 (the batch's rows)"
        );
        let b = Batch {
            rows: 9,
            columns: vec![col("months_active", Values::Int64(vec![1; 9]), vec![0xFF])],
        };
        assert_eq!(
            run(&b).unwrap_err(),
            "tenure_bucket: input column `months_active` has a validity bitmap of 1 bytes, expected none or at \
             least 2 for 9 rows"
        );
        let mut b = months(vec![1], vec![]);
        b.columns
            .push(col("months_active", Values::Int64(vec![2]), vec![]));
        assert_eq!(
            run(&b).unwrap_err(),
            "tenure_bucket: input column `months_active` appears more than once"
        );
    }
}
