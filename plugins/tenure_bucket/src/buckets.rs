//! Tenure buckets, as plain Rust (no WIT types): the bucket boundaries and the
//! column-wise computation with its NULL rule. `transform` (in `lib.rs`) only converts
//! the WIT batch into a [`Col`] and the result back into a WIT batch.
//!
//! | months_active | tenure_bucket |
//! |---------------|---------------|
//! | 0 – 5         | `"0-5"`       |
//! | 6 – 11        | `"6-11"`      |
//! | 12 – 23       | `"12-23"`     |
//! | 24 – 47       | `"24-47"`     |
//! | 48 and more   | `"48+"`       |
//!
//! NULL rule: a NULL `months_active` gives a NULL `tenure_bucket` (its slot holds `""`);
//! a NULL slot's value is never read, so whatever it holds cannot fail the batch. A
//! negative (non-NULL) `months_active` is an error for the whole batch, naming the row.

use skewless_plugin::columns::{Col, Out, all_valid, fill};

/// Each bucket's first month (inclusive) and label, ascending; a bucket ends where the
/// next begins, the last one is open-ended.
pub const BUCKETS: [(i64, &str); 5] = [
    (0, "0-5"),
    (6, "6-11"),
    (12, "12-23"),
    (24, "24-47"),
    (48, "48+"),
];

/// The bucket of `months_active`, or `None` when it is negative.
pub fn tenure_bucket(months_active: i64) -> Option<&'static str> {
    BUCKETS
        .iter()
        .rev()
        .find(|&&(first, _)| months_active >= first)
        .map(|&(_, label)| label)
}

/// A negative tenure: the first row (0-based, in the batch) holding one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NegativeTenure {
    pub row: usize,
    pub months_active: i64,
}

/// The bucket of every row. `months_active.values` has exactly `rows` entries and a
/// non-empty bitmap at least `ceil(rows / 8)` bytes (the glue checks both).
pub fn compute(rows: usize, months_active: Col<'_, i64>) -> Result<Out<String>, NegativeTenure> {
    let mut negative = None;
    let out = fill(
        rows,
        all_valid(rows, &[months_active.validity]),
        |i| match tenure_bucket(months_active.values[i]) {
            Some(label) => label.to_string(),
            None => {
                negative.get_or_insert(i);
                String::new()
            }
        },
    );
    match negative {
        Some(row) => Err(NegativeTenure {
            row,
            months_active: months_active.values[row],
        }),
        None => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skewless_plugin::columns::bitmap_from_bools;

    #[test]
    fn bucket_boundaries() {
        let cases = [
            (0, "0-5"),
            (5, "0-5"),
            (6, "6-11"),
            (11, "6-11"),
            (12, "12-23"),
            (23, "12-23"),
            (24, "24-47"),
            (47, "24-47"),
            (48, "48+"),
            (72, "48+"),
            (i64::MAX, "48+"),
        ];
        for (months, label) in cases {
            assert_eq!(tenure_bucket(months), Some(label), "{months}");
        }
        assert_eq!(tenure_bucket(-1), None);
        assert_eq!(tenure_bucket(i64::MIN), None);
    }

    #[test]
    fn nulls_map_to_nulls_and_their_slots_are_not_read() {
        // 11 rows; rows 3 and 10 NULL, holding values that would fail if read.
        let months = [0, 6, 12, -7, 24, 48, 5, 11, 23, 47, i64::MIN];
        let validity = bitmap_from_bools(&(0..11).map(|i| i != 3 && i != 10).collect::<Vec<_>>());
        assert_eq!(validity, [0b1111_0111, 0b0000_0011]);
        let out = compute(
            11,
            Col {
                values: &months,
                validity: &validity,
            },
        )
        .unwrap();
        assert_eq!(
            out.values,
            [
                "0-5", "6-11", "12-23", "", "24-47", "48+", "0-5", "6-11", "12-23", "24-47", ""
            ]
        );
        assert_eq!(out.validity, validity);
    }

    #[test]
    fn no_nulls_gives_an_empty_bitmap_and_zero_rows_an_empty_column() {
        let out = compute(
            3,
            Col {
                values: &[1, 30, 60],
                validity: &[0xFF],
            },
        )
        .unwrap();
        assert_eq!(
            out,
            Out {
                values: vec!["0-5".into(), "24-47".into(), "48+".into()],
                validity: vec![]
            }
        );
        assert_eq!(
            compute(0, Col::dense(&[])).unwrap(),
            Out {
                values: vec![],
                validity: vec![]
            }
        );
    }

    #[test]
    fn a_negative_tenure_names_the_first_row() {
        let months = [3, 4, -1, 9, -20];
        assert_eq!(
            compute(5, Col::dense(&months)),
            Err(NegativeTenure {
                row: 2,
                months_active: -1
            })
        );
    }
}
