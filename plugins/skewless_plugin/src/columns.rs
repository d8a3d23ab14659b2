//! Dense columns with Arrow-style validity bitmaps, as plain Rust (no WIT types), so the
//! NULL handling is unit-tested natively on its own.
//!
//! A bitmap holds bit `i` (least significant bit first, byte `i / 8`) set when row `i`
//! holds a value. An empty bitmap means "no NULLs". Bitmaps may be longer than
//! `ceil(rows / 8)` bytes (Arrow pads its buffers); the bits past `rows` are ignored.
//! Bitmaps produced here are always normalized: empty when no row is NULL, otherwise
//! exactly `ceil(rows / 8)` bytes with the bits past `rows` cleared.

/// An input column: `values` has one slot per row; a NULL slot holds any value.
#[derive(Clone, Copy, Debug)]
pub struct Col<'a, T> {
    pub values: &'a [T],
    pub validity: &'a [u8],
}

impl<'a, T> Col<'a, T> {
    /// A column with no NULLs.
    pub fn dense(values: &'a [T]) -> Self {
        Col {
            values,
            validity: &[],
        }
    }
}

/// An output column: dense values (the type's default in NULL slots) and a normalized
/// validity bitmap.
#[derive(Clone, Debug, PartialEq)]
pub struct Out<T> {
    pub values: Vec<T>,
    pub validity: Vec<u8>,
}

impl<T: Default> Out<T> {
    /// An output computed for every row, NULL slots included, by a *total* formula (one
    /// that cannot panic on any input value, e.g. arithmetic and comparisons): the NULL
    /// slots of `validity` are then reset to `T::default()`. The formula's loop has no
    /// per-row branch, so the compiler can vectorize it (wasm `simd128`); prefer [`fill`]
    /// when the formula can fail or is costly.
    pub fn masked(mut values: Vec<T>, validity: Vec<u8>) -> Self {
        debug_assert!(
            validity.is_empty() || validity.len() == bitmap_len(values.len()),
            "a normalized bitmap (see all_valid)"
        );
        if !validity.is_empty() {
            for (byte, &bits) in validity.iter().enumerate() {
                if bits == 0xFF {
                    continue;
                }
                for bit in 0..8 {
                    let i = byte * 8 + bit;
                    if bits >> bit & 1 == 0 && i < values.len() {
                        values[i] = T::default();
                    }
                }
            }
        }
        Out { values, validity }
    }
}

impl<T> Out<T> {
    /// Whether row `i` holds a value.
    pub fn is_valid(&self, i: usize) -> bool {
        is_valid(&self.validity, i)
    }
}

/// The number of bytes a bitmap needs for `rows` rows.
pub fn bitmap_len(rows: usize) -> usize {
    rows.div_ceil(8)
}

/// Whether row `i` holds a value (an empty bitmap: every row does).
pub fn is_valid(bitmap: &[u8], i: usize) -> bool {
    bitmap.is_empty() || (bitmap[i / 8] >> (i % 8)) & 1 == 1
}

/// The validity of an output that needs every one of `inputs`: row `i` is valid when it
/// is valid in each input. Normalized (see the module documentation).
///
/// Each non-empty bitmap must hold at least `bitmap_len(rows)` bytes (the glue checks).
pub fn all_valid(rows: usize, inputs: &[&[u8]]) -> Vec<u8> {
    let len = bitmap_len(rows);
    if rows == 0 || inputs.iter().all(|b| b.is_empty()) {
        return Vec::new();
    }
    let mut out = vec![0xFF_u8; len];
    for bitmap in inputs.iter().filter(|b| !b.is_empty()) {
        for (o, b) in out.iter_mut().zip(&bitmap[..len]) {
            *o &= b;
        }
    }
    // Clear the bits past the last row.
    let tail = rows % 8;
    if tail != 0 {
        out[len - 1] &= (1_u8 << tail) - 1;
    }
    let full = out[..rows / 8].iter().all(|&b| b == 0xFF)
        && (tail == 0 || out[len - 1] == (1_u8 << tail) - 1);
    if full { Vec::new() } else { out }
}

/// Builds an output column: `f(i)` for each valid row of `validity`, `T::default()` in the
/// NULL slots (`f` is never called for them, so it never sees a NULL slot's value).
pub fn fill<T: Default>(rows: usize, validity: Vec<u8>, mut f: impl FnMut(usize) -> T) -> Out<T> {
    let values = if validity.is_empty() {
        (0..rows).map(f).collect()
    } else {
        (0..rows)
            .map(|i| {
                if is_valid(&validity, i) {
                    f(i)
                } else {
                    T::default()
                }
            })
            .collect()
    };
    Out { values, validity }
}

/// Builds a bitmap from one flag per row (tests and callers that compute validity row by
/// row). Normalized.
pub fn bitmap_from_bools(valid: &[bool]) -> Vec<u8> {
    if valid.iter().all(|&v| v) {
        return Vec::new();
    }
    let mut out = vec![0_u8; bitmap_len(valid.len())];
    for (i, _) in valid.iter().enumerate().filter(|(_, v)| **v) {
        out[i / 8] |= 1 << (i % 8);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_bitmap_means_every_row_is_valid() {
        assert!(is_valid(&[], 0));
        assert!(is_valid(&[], 1000));
    }

    #[test]
    fn bits_are_lsb_first() {
        // Rows 0 and 9 valid: byte 0 = 0b0000_0001, byte 1 = 0b0000_0010.
        let b = [0b0000_0001, 0b0000_0010];
        let valid: Vec<usize> = (0..16).filter(|&i| is_valid(&b, i)).collect();
        assert_eq!(valid, [0, 9]);
        assert_eq!(
            bitmap_from_bools(&(0..10).map(|i| i == 0 || i == 9).collect::<Vec<_>>()),
            b
        );
    }

    #[test]
    fn bitmap_len_rounds_up() {
        assert_eq!(bitmap_len(0), 0);
        assert_eq!(bitmap_len(1), 1);
        assert_eq!(bitmap_len(8), 1);
        assert_eq!(bitmap_len(9), 2);
        assert_eq!(bitmap_len(4096), 512);
    }

    #[test]
    fn all_valid_ands_the_inputs_and_normalizes() {
        // 10 rows: a has row 1 NULL, b has row 8 NULL; garbage bits past row 9.
        let a = [0b1111_1101, 0b1111_1111];
        let b = [0b1111_1111, 0b1111_1110];
        assert_eq!(all_valid(10, &[&a, &b, &[]]), [0b1111_1101, 0b0000_0010]);
        // All-ones bitmaps (even with garbage past the end, or padded) become empty.
        assert_eq!(
            all_valid(10, &[&[0xFF, 0xFF], &[0xFF, 0x03, 0x00, 0x00]]),
            Vec::<u8>::new()
        );
        assert_eq!(all_valid(16, &[&[0xFF, 0xFF]]), Vec::<u8>::new());
        // Only empty inputs, or no rows: empty.
        assert_eq!(all_valid(10, &[&[], &[]]), Vec::<u8>::new());
        assert_eq!(all_valid(0, &[&[0x00]]), Vec::<u8>::new());
        // A padded input bitmap: the output is exactly ceil(rows / 8) bytes.
        assert_eq!(all_valid(3, &[&[0b0000_0101, 0xFF, 0xFF]]), [0b0000_0101]);
    }

    #[test]
    fn masked_resets_null_slots_only() {
        let validity = bitmap_from_bools(&[true, false, true, true, true, true, true, true, false, true]);
        let out = Out::masked((1..=10).collect::<Vec<i64>>(), validity.clone());
        assert_eq!(out.values, [1, 0, 3, 4, 5, 6, 7, 8, 0, 10]);
        assert_eq!(out.validity, validity);
        let dense = Out::masked(vec![1.5_f64, 2.5], Vec::new());
        assert_eq!(dense.values, [1.5, 2.5]);
        assert!(dense.validity.is_empty());
    }

    #[test]
    fn fill_skips_null_slots() {
        let validity = bitmap_from_bools(&[true, false, true]);
        let out = fill(3, validity.clone(), |i| {
            assert_ne!(i, 1, "called for a NULL slot");
            i as i64 + 10
        });
        assert_eq!(
            out,
            Out {
                values: vec![10, 0, 12],
                validity
            }
        );
        assert!(out.is_valid(0) && !out.is_valid(1) && out.is_valid(2));
        assert_eq!(
            fill(0, Vec::new(), |_| 1.0_f64),
            Out {
                values: vec![],
                validity: vec![]
            }
        );
    }
}
