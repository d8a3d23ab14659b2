//! The churn signals, as plain Rust (no WIT types): per-row formulas and the column-wise
//! computation with its NULL rule. `transform` (in `lib.rs`) only converts the WIT batch
//! into [`Inputs`] and [`Outputs`] back into a WIT batch.
//!
//! NULL rule: an output is NULL in a row when any input it needs is NULL in that row, and
//! its slot then holds 0 / false. The formulas are total (no panic, no trap on any value),
//! so each output is computed for every row in one branch-free loop (vectorized by the
//! compiler) and the NULL slots are reset afterwards ([`Out::masked`]): a NULL slot's
//! value never reaches an output. Which inputs each output needs:
//!
//! | output               | needs                                           |
//! |----------------------|-------------------------------------------------|
//! | `fee_per_watch_hour` | `monthly_fee`, `watch_hours_30d`                |
//! | `is_long_tenure`     | `months_active`                                 |
//! | `engagement_score`   | `watch_hours_30d`, `skips_7d`, `rebuffer_events_7d` |
//! | `has_payment_issue`  | `failed_payments_90d`                           |
//!
//! Floating point: the `Float32` inputs are widened with `as f64` (exact), then everything
//! is computed in `f64`. A NaN input gives a NaN output (never hidden as a number).

use skewless_plugin::columns::{Col, Out, all_valid};

/// Tenure from which a subscriber counts as long-standing (months, inclusive).
pub const LONG_TENURE_MONTHS: i64 = 24;
/// Watch hours (30 days) at which the watch-time part of the engagement score is 0.5.
pub const WATCH_HOURS_HALF: f64 = 10.0;
/// Skips (7 days) that halve the engagement score.
pub const SKIPS_HALF: f64 = 20.0;
/// Rebuffer events (7 days) that halve the engagement score.
pub const REBUFFERS_HALF: f64 = 10.0;

/// `monthly_fee / max(watch_hours_30d, 1)`: what an hour of viewing costs the subscriber.
///
/// The floor of one hour keeps near-zero viewers from producing huge ratios (a user who
/// watched 6 minutes is as "expensive" as one who watched an hour: the whole fee). A NaN
/// watch time gives NaN (unlike `f64::max`, which would silently return 1).
pub fn fee_per_watch_hour(monthly_fee: f32, watch_hours_30d: f32) -> f64 {
    let fee = monthly_fee as f64;
    let hours = watch_hours_30d as f64;
    let denominator = if hours < 1.0 { 1.0 } else { hours }; // NaN < 1.0 is false: NaN stays
    fee / denominator
}

/// `months_active >= 24`.
pub fn is_long_tenure(months_active: i64) -> bool {
    months_active >= LONG_TENURE_MONTHS
}

/// Engagement in [0, 1]:
///
/// ```text
/// w = max(watch_hours_30d, 0), s = max(skips_7d, 0), r = max(rebuffer_events_7d, 0)
/// engagement_score = w / (w + 10)  ×  1 / (1 + s / 20)  ×  1 / (1 + r / 10)
/// ```
///
/// - Watch time is the main signal; `w / (w + 10)` saturates (10 h → 0.5, 30 h → 0.75,
///   90 h → 0.9): past a few hours a week more viewing says little more about staying.
/// - Skips (content not landing) and rebuffers (playback failing) are friction that
///   precedes churn; each multiplies the score by a factor in (0, 1]. A rebuffer costs
///   twice what a skip does: it is the service failing, not taste. 20 skips or 10
///   rebuffers a week halve the score.
/// - Multiplicative, so no amount of viewing hides heavy friction, and zero viewing is 0.
///
/// The constants are a documented heuristic, not fitted; changing them changes the
/// feature, so it needs a new plugin version. Infinite watch time gives 1; NaN gives NaN.
pub fn engagement_score(watch_hours_30d: f32, skips_7d: i64, rebuffer_events_7d: i64) -> f64 {
    let w = watch_hours_30d as f64;
    // Negative hours count as 0; NaN < 0.0 is false, so a NaN stays NaN (f64::max would
    // turn it into 0). A select, not a branch: the loop stays vectorizable.
    let w = if w < 0.0 { 0.0 } else { w };
    let watch = 1.0 - WATCH_HOURS_HALF / (w + WATCH_HOURS_HALF); // = w / (w + 10), and 1 at +inf
    let skips = skips_7d.max(0) as f64;
    let rebuffers = rebuffer_events_7d.max(0) as f64;
    watch / (1.0 + skips / SKIPS_HALF) / (1.0 + rebuffers / REBUFFERS_HALF)
}

/// `failed_payments_90d > 0`.
pub fn has_payment_issue(failed_payments_90d: i64) -> bool {
    failed_payments_90d > 0
}

/// The input columns; every `values` slice has exactly `rows` entries and every non-empty
/// bitmap at least `ceil(rows / 8)` bytes (the glue checks both).
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    pub months_active: Col<'a, i64>,
    pub monthly_fee: Col<'a, f32>,
    pub watch_hours_30d: Col<'a, f32>,
    pub skips_7d: Col<'a, i64>,
    pub rebuffer_events_7d: Col<'a, i64>,
    pub failed_payments_90d: Col<'a, i64>,
}

/// The output columns, in the declared order.
#[derive(Clone, Debug, PartialEq)]
pub struct Outputs {
    pub fee_per_watch_hour: Out<f64>,
    pub is_long_tenure: Out<bool>,
    pub engagement_score: Out<f64>,
    pub has_payment_issue: Out<bool>,
}

/// Computes every output for `rows` rows, applying the NULL rule above.
pub fn compute(rows: usize, x: &Inputs<'_>) -> Outputs {
    // Slices of exactly `rows` values: the zipped loops below carry no bounds checks.
    let months = &x.months_active.values[..rows];
    let fee = &x.monthly_fee.values[..rows];
    let hours = &x.watch_hours_30d.values[..rows];
    let skips = &x.skips_7d.values[..rows];
    let rebuffers = &x.rebuffer_events_7d.values[..rows];
    let failed = &x.failed_payments_90d.values[..rows];

    let fee_per_watch_hour = Out::masked(
        fee.iter()
            .zip(hours)
            .map(|(&f, &h)| fee_per_watch_hour(f, h))
            .collect(),
        all_valid(rows, &[x.monthly_fee.validity, x.watch_hours_30d.validity]),
    );
    let is_long_tenure = Out::masked(
        months.iter().map(|&m| is_long_tenure(m)).collect(),
        all_valid(rows, &[x.months_active.validity]),
    );
    let engagement_score = Out::masked(
        hours
            .iter()
            .zip(skips)
            .zip(rebuffers)
            .map(|((&h, &s), &r)| engagement_score(h, s, r))
            .collect(),
        all_valid(
            rows,
            &[
                x.watch_hours_30d.validity,
                x.skips_7d.validity,
                x.rebuffer_events_7d.validity,
            ],
        ),
    );
    let has_payment_issue = Out::masked(
        failed.iter().map(|&f| has_payment_issue(f)).collect(),
        all_valid(rows, &[x.failed_payments_90d.validity]),
    );
    Outputs {
        fee_per_watch_hour,
        is_long_tenure,
        engagement_score,
        has_payment_issue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skewless_plugin::columns::bitmap_from_bools;

    #[test]
    fn fee_per_watch_hour_uses_the_f32_values_widened() {
        // The lab's first user: 29.85 a month, 24.48365 hours.
        let got = fee_per_watch_hour(29.85, 24.48365);
        assert_eq!(got, 29.85_f32 as f64 / 24.48365_f32 as f64);
        assert!((got - 1.219181).abs() < 1e-6, "{got}");
        // Not computed in f32 then widened, not from the decimal f64 literals.
        assert_ne!(got, (29.85_f32 / 24.48365_f32) as f64);
    }

    #[test]
    fn fee_per_watch_hour_floors_watch_time_at_one_hour() {
        assert_eq!(fee_per_watch_hour(20.0, 0.0), 20.0);
        assert_eq!(fee_per_watch_hour(20.0, 0.25), 20.0);
        assert_eq!(fee_per_watch_hour(20.0, -3.0), 20.0);
        assert_eq!(fee_per_watch_hour(20.0, 1.0), 20.0);
        assert_eq!(fee_per_watch_hour(20.0, 4.0), 5.0);
        assert!(fee_per_watch_hour(20.0, f32::NAN).is_nan());
        assert!(fee_per_watch_hour(f32::NAN, 4.0).is_nan());
        assert_eq!(fee_per_watch_hour(20.0, f32::INFINITY), 0.0);
    }

    #[test]
    fn tenure_and_payment_thresholds() {
        assert!(!is_long_tenure(0));
        assert!(!is_long_tenure(23));
        assert!(is_long_tenure(24));
        assert!(is_long_tenure(72));
        assert!(!is_long_tenure(-5));
        assert!(!has_payment_issue(0));
        assert!(has_payment_issue(1));
        assert!(has_payment_issue(3));
        assert!(!has_payment_issue(-1));
    }

    #[test]
    fn engagement_score_values() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert_eq!(engagement_score(0.0, 0, 0), 0.0);
        assert!(close(engagement_score(10.0, 0, 0), 0.5));
        assert!(close(engagement_score(30.0, 0, 0), 0.75));
        assert!(close(engagement_score(30.0, 20, 0), 0.375));
        assert!(close(engagement_score(30.0, 0, 10), 0.375));
        assert!(close(engagement_score(30.0, 20, 10), 0.1875));
        // A typical generated user: ~30 h, 5 skips, 2 rebuffers.
        assert!(close(engagement_score(30.0, 5, 2), 0.75 / 1.25 / 1.2));
        // Negative counts and hours count as 0; infinite viewing is 1; NaN stays NaN.
        assert_eq!(engagement_score(-4.0, 3, 3), 0.0);
        assert!(close(engagement_score(30.0, -7, -1), 0.75));
        assert_eq!(engagement_score(f32::INFINITY, 0, 0), 1.0);
        assert!(engagement_score(f32::NAN, 0, 0).is_nan());
    }

    #[test]
    fn engagement_score_is_bounded_and_monotone() {
        let hours = [
            0.0,
            0.25,
            1.0,
            5.0,
            30.0,
            200.0,
            1e6,
            f32::MAX,
            f32::INFINITY,
        ];
        let counts = [0, 1, 5, 50, 10_000, i64::MAX];
        for &w in &hours {
            for &s in &counts {
                for &r in &counts {
                    let e = engagement_score(w, s, r);
                    assert!((0.0..=1.0).contains(&e), "{w} {s} {r} -> {e}");
                    assert!(engagement_score(w, s.saturating_add(1), r) <= e);
                    assert!(engagement_score(w, s, r.saturating_add(1)) <= e);
                }
            }
        }
        for pair in hours.windows(2) {
            assert!(engagement_score(pair[0], 5, 2) <= engagement_score(pair[1], 5, 2));
        }
    }

    /// Ten rows; each input NULL in its own row (valid == false), to check which outputs
    /// each NULL reaches.
    #[test]
    fn nulls_reach_exactly_the_outputs_that_need_them() {
        const ROWS: usize = 10;
        let null_at =
            |row: usize| bitmap_from_bools(&(0..ROWS).map(|i| i != row).collect::<Vec<_>>());
        // NULL slots hold garbage; none of it may reach an output.
        let months = [30, 1, 2, 3, 4, 5, 6, 7, 8, 9_i64];
        let fee = [
            10.0, -99.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0_f32,
        ];
        let hours = [5.0_f32; ROWS];
        let skips = [0, 0, 0, 0, 9_999, 0, 0, 0, 0, 0_i64];
        let rebuf = [0_i64; ROWS];
        let failed = [0, 0, 0, 0, 0, 0, 0, 0, 0, 7_i64];
        let (m_v, f_v, h_v, s_v, r_v, p_v) = (
            null_at(0),
            null_at(1),
            null_at(3),
            null_at(4),
            null_at(5),
            null_at(9),
        );
        let x = Inputs {
            months_active: Col {
                values: &months,
                validity: &m_v,
            },
            monthly_fee: Col {
                values: &fee,
                validity: &f_v,
            },
            watch_hours_30d: Col {
                values: &hours,
                validity: &h_v,
            },
            skips_7d: Col {
                values: &skips,
                validity: &s_v,
            },
            rebuffer_events_7d: Col {
                values: &rebuf,
                validity: &r_v,
            },
            failed_payments_90d: Col {
                values: &failed,
                validity: &p_v,
            },
        };
        let out = compute(ROWS, &x);
        let nulls =
            |valid: &dyn Fn(usize) -> bool| (0..ROWS).filter(|&i| !valid(i)).collect::<Vec<_>>();
        assert_eq!(nulls(&|i| out.fee_per_watch_hour.is_valid(i)), [1, 3]);
        assert_eq!(nulls(&|i| out.is_long_tenure.is_valid(i)), [0]);
        assert_eq!(nulls(&|i| out.engagement_score.is_valid(i)), [3, 4, 5]);
        assert_eq!(nulls(&|i| out.has_payment_issue.is_valid(i)), [9]);
        // Bitmaps: two bytes for 10 rows, LSB first, bits past row 9 clear.
        assert_eq!(out.fee_per_watch_hour.validity, [0b1111_0101, 0b0000_0011]);
        assert_eq!(out.is_long_tenure.validity, [0b1111_1110, 0b0000_0011]);
        assert_eq!(out.engagement_score.validity, [0b1100_0111, 0b0000_0011]);
        assert_eq!(out.has_payment_issue.validity, [0b1111_1111, 0b0000_0001]);
        // NULL slots hold the default; valid slots the formula.
        assert_eq!(out.fee_per_watch_hour.values[1], 0.0);
        assert_eq!(out.fee_per_watch_hour.values[0], 2.0);
        assert!(!out.is_long_tenure.values[0]);
        assert!(!out.is_long_tenure.values[9]);
        assert_eq!(out.engagement_score.values[4], 0.0);
        assert!((out.engagement_score.values[0] - 5.0 / 15.0).abs() < 1e-12);
        assert!(!out.has_payment_issue.values[9]);
    }

    #[test]
    fn no_nulls_gives_empty_bitmaps_and_zero_rows_gives_empty_columns() {
        let months = [24_i64, 3];
        let fee = [12.0_f32, 30.0];
        let hours = [0.5_f32, 60.0];
        let counts = [1_i64, 0];
        // All-ones bitmaps count as "no NULL" too.
        let ones = [0b11_u8];
        let x = Inputs {
            months_active: Col::dense(&months),
            monthly_fee: Col {
                values: &fee,
                validity: &ones,
            },
            watch_hours_30d: Col::dense(&hours),
            skips_7d: Col::dense(&counts),
            rebuffer_events_7d: Col::dense(&counts),
            failed_payments_90d: Col::dense(&counts),
        };
        let out = compute(2, &x);
        assert_eq!(
            out.fee_per_watch_hour,
            Out {
                values: vec![12.0, 0.5],
                validity: vec![]
            }
        );
        assert_eq!(
            out.is_long_tenure,
            Out {
                values: vec![true, false],
                validity: vec![]
            }
        );
        assert_eq!(
            out.has_payment_issue,
            Out {
                values: vec![true, false],
                validity: vec![]
            }
        );
        assert!(out.engagement_score.validity.is_empty());
        assert!((out.engagement_score.values[1] - 60.0 / 70.0).abs() < 1e-12);

        let empty = Inputs {
            months_active: Col::dense(&[]),
            monthly_fee: Col::dense(&[]),
            watch_hours_30d: Col::dense(&[]),
            skips_7d: Col::dense(&[]),
            rebuffer_events_7d: Col::dense(&[]),
            failed_payments_90d: Col::dense(&[]),
        };
        let out = compute(0, &empty);
        assert!(
            out.fee_per_watch_hour.values.is_empty() && out.fee_per_watch_hour.validity.is_empty()
        );
        assert!(out.is_long_tenure.values.is_empty() && out.has_payment_issue.values.is_empty());
        assert!(out.engagement_score.values.is_empty());
    }
}
