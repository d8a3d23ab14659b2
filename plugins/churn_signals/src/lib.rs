//! `churn_signals`: a skewless transformation plugin (a WebAssembly component exporting
//! the `transformation` world of `wit/transform.wit`) deriving churn signals from
//! `subs_profile_fv`, `usage_agg_30d_fv` and `payments_agg_90d_fv` features.
//!
//! This file is the WIT glue only: it takes the input columns by name (checked by the
//! [`skewless_plugin`] SDK), hands plain slices to [`signals::compute`] and wraps the
//! result back into a batch. The formulas and the NULL rule are in [`signals`].
//! Everything here also compiles natively, so `cargo test` exercises the same [`run`]
//! that the exported `transform` calls.

pub mod signals;

pub use skewless_plugin::columns;
use skewless_plugin::{Batch, Guest, PluginInfo, ValueType, Values, column, output};

/// The plugin's name, as definitions refer to it (and the prefix of its error messages).
pub const NAME: &str = "churn_signals";

/// The columns `transform` reads, by name and type.
pub const INPUTS: [(&str, ValueType); 6] = [
    ("months_active", ValueType::Int64),
    ("monthly_fee", ValueType::Float32),
    ("watch_hours_30d", ValueType::Float32),
    ("skips_7d", ValueType::Int64),
    ("rebuffer_events_7d", ValueType::Int64),
    ("failed_payments_90d", ValueType::Int64),
];

/// The columns `transform` returns, in this order.
pub const OUTPUTS: [(&str, ValueType); 4] = [
    ("fee_per_watch_hour", ValueType::Float64),
    ("is_long_tenure", ValueType::Bool),
    ("engagement_score", ValueType::Float64),
    ("has_payment_issue", ValueType::Bool),
];

struct ChurnSignals;

impl Guest for ChurnSignals {
    fn describe() -> PluginInfo {
        plugin_info()
    }

    fn transform(input: Batch) -> Result<Batch, String> {
        run(&input)
    }
}

skewless_plugin::export!(ChurnSignals);

/// What `describe` returns.
pub fn plugin_info() -> PluginInfo {
    skewless_plugin::plugin_info(NAME, env!("CARGO_PKG_VERSION"), &INPUTS, &OUTPUTS)
}

/// What `transform` returns: the outputs for every row of `input`, or an error naming the
/// offending column. Columns other than the inputs are ignored; their order is free.
pub fn run(input: &Batch) -> Result<Batch, String> {
    let rows = input.rows as usize;
    let x = signals::Inputs {
        months_active: column(NAME, input, "months_active")?,
        monthly_fee: column(NAME, input, "monthly_fee")?,
        watch_hours_30d: column(NAME, input, "watch_hours_30d")?,
        skips_7d: column(NAME, input, "skips_7d")?,
        rebuffer_events_7d: column(NAME, input, "rebuffer_events_7d")?,
        failed_payments_90d: column(NAME, input, "failed_payments_90d")?,
    };
    let out = signals::compute(rows, &x);
    Ok(Batch {
        rows: input.rows,
        columns: vec![
            output(
                "fee_per_watch_hour",
                Values::Float64(out.fee_per_watch_hour.values),
                out.fee_per_watch_hour.validity,
            ),
            output(
                "is_long_tenure",
                Values::Bool(out.is_long_tenure.values),
                out.is_long_tenure.validity,
            ),
            output(
                "engagement_score",
                Values::Float64(out.engagement_score.values),
                out.engagement_score.validity,
            ),
            output(
                "has_payment_issue",
                Values::Bool(out.has_payment_issue.values),
                out.has_payment_issue.validity,
            ),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use columns::{bitmap_from_bools, is_valid};
    use skewless_plugin::{Column, Field, dtype};

    fn col(name: &str, values: Values, validity: Vec<u8>) -> Column {
        Column {
            name: name.to_string(),
            values,
            validity,
        }
    }

    /// A value of each type, `rows` times, no NULLs.
    fn filler(t: ValueType, rows: usize) -> Values {
        match t {
            ValueType::Int32 => Values::Int32(vec![1; rows]),
            ValueType::Int64 => Values::Int64(vec![1; rows]),
            ValueType::Float32 => Values::Float32(vec![1.0; rows]),
            ValueType::Float64 => Values::Float64(vec![1.0; rows]),
            ValueType::Bool => Values::Bool(vec![true; rows]),
            ValueType::String => Values::String(vec!["x".to_string(); rows]),
            ValueType::UnixTimestamp => Values::UnixTimestamp(vec![0; rows]),
        }
    }

    /// A batch with every declared input (as `describe` declares it), `rows` rows.
    fn declared_batch(rows: usize) -> Batch {
        let columns = plugin_info()
            .inputs
            .iter()
            .map(|f| col(&f.name, filler(f.dtype, rows), vec![]))
            .collect();
        Batch {
            rows: rows as u32,
            columns,
        }
    }

    fn without(mut b: Batch, name: &str) -> Batch {
        b.columns.retain(|c| c.name != name);
        b
    }

    fn replace(mut b: Batch, c: Column) -> Batch {
        let slot = b
            .columns
            .iter_mut()
            .find(|x| x.name == c.name)
            .expect("known column");
        *slot = c;
        b
    }

    fn f64s(c: &Column) -> &[f64] {
        match &c.values {
            Values::Float64(v) => v,
            other => panic!("{}: {other:?}", c.name),
        }
    }

    fn bools(c: &Column) -> &[bool] {
        match &c.values {
            Values::Bool(v) => v,
            other => panic!("{}: {other:?}", c.name),
        }
    }

    #[test]
    fn describe_declares_the_inputs_and_outputs() {
        let info = <ChurnSignals as Guest>::describe();
        assert_eq!(info.name, "churn_signals");
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
        let pairs = |fs: &[Field]| {
            fs.iter()
                .map(|f| (f.name.clone(), f.dtype))
                .collect::<Vec<_>>()
        };
        let expect = |list: &[(&str, ValueType)]| {
            list.iter()
                .map(|&(n, t)| (n.to_string(), t))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            pairs(&info.inputs),
            expect(&[
                ("months_active", ValueType::Int64),
                ("monthly_fee", ValueType::Float32),
                ("watch_hours_30d", ValueType::Float32),
                ("skips_7d", ValueType::Int64),
                ("rebuffer_events_7d", ValueType::Int64),
                ("failed_payments_90d", ValueType::Int64),
            ])
        );
        assert_eq!(
            pairs(&info.outputs),
            expect(&[
                ("fee_per_watch_hour", ValueType::Float64),
                ("is_long_tenure", ValueType::Bool),
                ("engagement_score", ValueType::Float64),
                ("has_payment_issue", ValueType::Bool),
            ])
        );
    }

    #[test]
    fn transform_accepts_what_describe_declares_and_returns_it_in_order() {
        for rows in [0, 1, 8, 9, 100] {
            let out = <ChurnSignals as Guest>::transform(declared_batch(rows)).unwrap();
            assert_eq!(out.rows as usize, rows);
            let got: Vec<_> = out
                .columns
                .iter()
                .map(|c| (c.name.clone(), dtype(&c.values)))
                .collect();
            let declared: Vec<_> = plugin_info()
                .outputs
                .into_iter()
                .map(|f| (f.name, f.dtype))
                .collect();
            assert_eq!(got, declared);
            for c in &out.columns {
                assert!(
                    c.validity.is_empty(),
                    "{}: no NULL in, no bitmap out",
                    c.name
                );
            }
        }
    }

    #[test]
    fn transform_finds_columns_by_name_and_maps_nulls_through_bitmaps() {
        // 12 rows: two bitmap bytes. Row 2: monthly_fee NULL; row 9: watch_hours_30d NULL;
        // row 10: months_active and failed_payments_90d NULL; row 11: skips_7d NULL.
        const ROWS: usize = 12;
        let null_at = |rows: &[usize]| {
            bitmap_from_bools(&(0..ROWS).map(|i| !rows.contains(&i)).collect::<Vec<_>>())
        };
        let months: Vec<i64> = (0..ROWS as i64).map(|i| i * 5).collect(); // 0, 5, ..., 55
        let fee: Vec<f32> = vec![20.0; ROWS];
        let hours: Vec<f32> = (0..ROWS).map(|i| i as f32 * 2.0).collect(); // 0, 2, ..., 22
        let skips: Vec<i64> = vec![4; ROWS];
        let rebuf: Vec<i64> = vec![1; ROWS];
        let failed: Vec<i64> = (0..ROWS as i64).map(|i| i % 3).collect();
        // Shuffled, with extra columns the plugin must ignore.
        let batch = Batch {
            rows: ROWS as u32,
            columns: vec![
                col(
                    "user_id",
                    Values::String(vec!["u".to_string(); ROWS]),
                    vec![],
                ),
                col(
                    "failed_payments_90d",
                    Values::Int64(failed.clone()),
                    null_at(&[10]),
                ),
                col("skips_7d", Values::Int64(skips.clone()), null_at(&[11])),
                col(
                    "watch_hours_30d",
                    Values::Float32(hours.clone()),
                    null_at(&[9]),
                ),
                col("monthly_fee", Values::Float32(fee.clone()), null_at(&[2])),
                col(
                    "event_timestamp",
                    Values::UnixTimestamp(vec![0; ROWS]),
                    vec![],
                ),
                col("rebuffer_events_7d", Values::Int64(rebuf.clone()), vec![]),
                col(
                    "months_active",
                    Values::Int64(months.clone()),
                    null_at(&[10]),
                ),
            ],
        };
        let out = <ChurnSignals as Guest>::transform(batch).unwrap();
        assert_eq!(out.rows, ROWS as u32);
        let [fee_c, tenure_c, engage_c, pay_c] = &out.columns[..] else {
            panic!()
        };

        assert_eq!(fee_c.validity, null_at(&[2, 9]));
        assert_eq!(tenure_c.validity, null_at(&[10]));
        assert_eq!(engage_c.validity, null_at(&[9, 11]));
        assert_eq!(pay_c.validity, null_at(&[10]));
        assert_eq!(fee_c.validity, [0b1111_1011, 0b0000_1101]);

        for i in 0..ROWS {
            let f = f64s(fee_c)[i];
            if is_valid(&fee_c.validity, i) {
                assert_eq!(f, signals::fee_per_watch_hour(fee[i], hours[i]), "row {i}");
            } else {
                assert_eq!(f, 0.0);
            }
            assert_eq!(bools(tenure_c)[i], i != 10 && months[i] >= 24, "row {i}");
            let e = f64s(engage_c)[i];
            if is_valid(&engage_c.validity, i) {
                assert_eq!(e, signals::engagement_score(hours[i], skips[i], rebuf[i]));
            } else {
                assert_eq!(e, 0.0);
            }
            assert_eq!(bools(pay_c)[i], i != 10 && failed[i] > 0, "row {i}");
        }
        assert_eq!(f64s(fee_c)[0], 20.0); // 0 hours: floored at 1
        assert_eq!(f64s(fee_c)[5], 2.0); // 10 hours
    }

    /// 4096 rows with pseudo-random NULLs in every input, against a row-by-row reference
    /// written with `Option`s.
    #[test]
    fn transform_matches_an_option_reference_on_a_large_batch() {
        const ROWS: usize = 4096;
        let mut seed = 0x2545_F491_4F6C_DD1D_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut opt_col = |null_one_in: u64| -> Vec<Option<u64>> {
            (0..ROWS)
                .map(|_| {
                    let r = next();
                    (r % null_one_in != 0).then_some(r >> 8)
                })
                .collect()
        };
        let raw: Vec<Vec<Option<u64>>> = (0..6).map(|k| opt_col(3 + k)).collect();
        let int = |k: usize| -> Vec<Option<i64>> {
            raw[k].iter().map(|v| v.map(|v| (v % 100) as i64)).collect()
        };
        let flt = |k: usize| -> Vec<Option<f32>> {
            raw[k]
                .iter()
                .map(|v| v.map(|v| (v % 10_000) as f32 / 100.0))
                .collect()
        };
        let (months, fee, hours, skips, rebuf, failed) =
            (int(0), flt(1), flt(2), int(3), int(4), int(5));
        let dense_i =
            |c: &[Option<i64>]| Values::Int64(c.iter().map(|v| v.unwrap_or(-12345)).collect());
        let dense_f =
            |c: &[Option<f32>]| Values::Float32(c.iter().map(|v| v.unwrap_or(f32::NAN)).collect());
        let bits = |valid: Vec<bool>| bitmap_from_bools(&valid);
        let vi = |c: &[Option<i64>]| bits(c.iter().map(Option::is_some).collect());
        let vf = |c: &[Option<f32>]| bits(c.iter().map(Option::is_some).collect());
        let batch = Batch {
            rows: ROWS as u32,
            columns: vec![
                col("months_active", dense_i(&months), vi(&months)),
                col("monthly_fee", dense_f(&fee), vf(&fee)),
                col("watch_hours_30d", dense_f(&hours), vf(&hours)),
                col("skips_7d", dense_i(&skips), vi(&skips)),
                col("rebuffer_events_7d", dense_i(&rebuf), vi(&rebuf)),
                col("failed_payments_90d", dense_i(&failed), vi(&failed)),
            ],
        };
        let out = run(&batch).unwrap();
        let read_f = |c: &Column| -> Vec<Option<f64>> {
            f64s(c)
                .iter()
                .enumerate()
                .map(|(i, &v)| is_valid(&c.validity, i).then_some(v))
                .collect()
        };
        let read_b = |c: &Column| -> Vec<Option<bool>> {
            bools(c)
                .iter()
                .enumerate()
                .map(|(i, &v)| is_valid(&c.validity, i).then_some(v))
                .collect()
        };
        for c in &out.columns {
            assert_eq!(
                c.validity.len(),
                ROWS / 8,
                "{}: some NULLs, a full bitmap",
                c.name
            );
        }
        let (got_fee, got_tenure) = (read_f(&out.columns[0]), read_b(&out.columns[1]));
        let (got_engage, got_pay) = (read_f(&out.columns[2]), read_b(&out.columns[3]));
        let mut nulls = 0;
        for i in 0..ROWS {
            let want_fee = fee[i]
                .zip(hours[i])
                .map(|(f, h)| signals::fee_per_watch_hour(f, h));
            let want_tenure = months[i].map(signals::is_long_tenure);
            let want_engage = match (hours[i], skips[i], rebuf[i]) {
                (Some(h), Some(s), Some(r)) => Some(signals::engagement_score(h, s, r)),
                _ => None,
            };
            let want_pay = failed[i].map(signals::has_payment_issue);
            assert_eq!(got_fee[i], want_fee, "row {i}");
            assert_eq!(got_tenure[i], want_tenure, "row {i}");
            assert_eq!(got_engage[i], want_engage, "row {i}");
            assert_eq!(got_pay[i], want_pay, "row {i}");
            nulls += usize::from(want_engage.is_none());
        }
        assert!(nulls > ROWS / 4, "the NULL pattern is not trivial: {nulls}");
    }

    #[test]
    fn a_missing_column_is_named() {
        for (name, _) in INPUTS {
            let err = run(&without(declared_batch(3), name)).unwrap_err();
            assert_eq!(
                err,
                format!("churn_signals: input column `{name}` is missing")
            );
        }
        let err = <ChurnSignals as Guest>::transform(Batch {
            rows: 0,
            columns: vec![],
        })
        .unwrap_err();
        assert_eq!(
            err,
            "churn_signals: input column `months_active` is missing"
        );
    }

    #[test]
    fn a_wrong_type_is_named() {
        let b = replace(
            declared_batch(3),
            col("monthly_fee", Values::Float64(vec![1.0; 3]), vec![]),
        );
        assert_eq!(
            run(&b).unwrap_err(),
            "churn_signals: input column `monthly_fee` has type float64, expected float32"
        );
        let b = replace(
            declared_batch(3),
            col("skips_7d", Values::Int32(vec![1; 3]), vec![]),
        );
        assert_eq!(
            run(&b).unwrap_err(),
            "churn_signals: input column `skips_7d` has type int32, expected int64"
        );
        let b = replace(
            declared_batch(0),
            col("months_active", Values::UnixTimestamp(vec![]), vec![]),
        );
        assert_eq!(
            run(&b).unwrap_err(),
            "churn_signals: input column `months_active` has type unix-timestamp, expected int64"
        );
        let b = replace(
            declared_batch(1),
            col("failed_payments_90d", Values::Bool(vec![true]), vec![]),
        );
        assert_eq!(
            run(&b).unwrap_err(),
            "churn_signals: input column `failed_payments_90d` has type bool, expected int64"
        );
    }

    #[test]
    fn a_column_with_the_wrong_length_is_refused() {
        let b = replace(
            declared_batch(4),
            col("watch_hours_30d", Values::Float32(vec![1.0; 3]), vec![]),
        );
        assert_eq!(
            run(&b).unwrap_err(),
            "churn_signals: input column `watch_hours_30d` has 3 values, expected 4 (the batch's rows)"
        );
        let b = replace(
            declared_batch(9),
            col("skips_7d", Values::Int64(vec![1; 9]), vec![0xFF]),
        );
        assert_eq!(
            run(&b).unwrap_err(),
            "churn_signals: input column `skips_7d` has a validity bitmap of 1 bytes, expected \
             none or at least 2 for 9 rows"
        );
        // A padded bitmap (Arrow-style) is fine.
        let b = replace(
            declared_batch(9),
            col(
                "skips_7d",
                Values::Int64(vec![1; 9]),
                vec![0xFF, 0x01, 0, 0],
            ),
        );
        assert!(run(&b).unwrap().columns[2].validity.is_empty());
    }

    #[test]
    fn a_duplicated_input_column_is_refused() {
        let mut b = declared_batch(2);
        b.columns
            .push(col("monthly_fee", Values::Float32(vec![2.0; 2]), vec![]));
        assert_eq!(
            run(&b).unwrap_err(),
            "churn_signals: input column `monthly_fee` appears more than once"
        );
    }
}
