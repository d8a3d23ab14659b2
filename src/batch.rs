//! The columnar batch: the one shape feature values take between PostgreSQL and
//! everything downstream — training-set writers (CSV, JSON lines, Parquet), online
//! responses, and the Wasm transformation plugins.
//!
//! There is exactly one decoder from PostgreSQL's binary wire format into a batch
//! ([`ColumnBuilder::push_pg_binary`]) and one text rendering of a value
//! ([`Column::write_text`]); the offline path (binary `COPY … TO STDOUT`) and the online
//! path (prepared statements, which sqlx runs in binary format) both go through them.
//! That is how a Float32 prints as `29.85` in a CSV, a JSON line and an online response
//! alike, and why skew has nowhere to hide.

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::definitions::ValueType;

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Values of one column, dense: a NULL slot holds the type's default value and is
/// marked in the validity bitmap.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Float32(Vec<f32>),
    Float64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
    /// Microseconds since the Unix epoch, UTC.
    Timestamp(Vec<i64>),
}

impl Values {
    fn with_capacity(dtype: ValueType, n: usize) -> Self {
        match dtype {
            ValueType::Int32 => Self::Int32(Vec::with_capacity(n)),
            ValueType::Int64 => Self::Int64(Vec::with_capacity(n)),
            ValueType::Float32 => Self::Float32(Vec::with_capacity(n)),
            ValueType::Float64 => Self::Float64(Vec::with_capacity(n)),
            ValueType::Bool => Self::Bool(Vec::with_capacity(n)),
            ValueType::String => Self::String(Vec::with_capacity(n)),
            ValueType::UnixTimestamp => Self::Timestamp(Vec::with_capacity(n)),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Int32(v) => v.len(),
            Self::Int64(v) => v.len(),
            Self::Float32(v) => v.len(),
            Self::Float64(v) => v.len(),
            Self::Bool(v) => v.len(),
            Self::String(v) => v.len(),
            Self::Timestamp(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push_default(&mut self) {
        match self {
            Self::Int32(v) => v.push(0),
            Self::Int64(v) => v.push(0),
            Self::Float32(v) => v.push(0.0),
            Self::Float64(v) => v.push(0.0),
            Self::Bool(v) => v.push(false),
            Self::String(v) => v.push(String::new()),
            Self::Timestamp(v) => v.push(0),
        }
    }
}

/// Arrow-style validity bitmap: bit `i` set means row `i` holds a value. `None` in a
/// [`Column`] means "no NULLs", which keeps the common case free.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Validity {
    bits: Vec<u8>,
    len: usize,
    nulls: usize,
}

impl Validity {
    pub fn push(&mut self, valid: bool) {
        if self.len.is_multiple_of(8) {
            self.bits.push(0);
        }
        if valid {
            self.bits[self.len / 8] |= 1 << (self.len % 8);
        } else {
            self.nulls += 1;
        }
        self.len += 1;
    }

    /// A bitmap of `len` rows, all valid.
    pub fn all_valid(len: usize) -> Self {
        let mut bits = vec![0xFFu8; len.div_ceil(8)];
        if !len.is_multiple_of(8)
            && let Some(last) = bits.last_mut()
        {
            *last = (1u8 << (len % 8)) - 1;
        }
        Self { bits, len, nulls: 0 }
    }

    /// Marks row `i` NULL.
    pub fn set_null(&mut self, i: usize) {
        if self.is_valid(i) {
            self.bits[i / 8] &= !(1 << (i % 8));
            self.nulls += 1;
        }
    }

    pub fn is_valid(&self, i: usize) -> bool {
        self.bits[i / 8] & (1 << (i % 8)) != 0
    }

    pub fn null_count(&self) -> usize {
        self.nulls
    }

    /// The raw bitmap, least significant bit first (Arrow's layout).
    pub fn bytes(&self) -> &[u8] {
        &self.bits
    }

    /// The raw bitmap, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bits
    }

    /// Builds a bitmap from raw bytes (e.g. from a plugin); `None` if too short.
    /// Bytes past `len` and bits past row `len` are dropped (Arrow pads its buffers).
    pub fn from_bytes(mut bits: Vec<u8>, len: usize) -> Option<Self> {
        if bits.len() < len.div_ceil(8) {
            return None;
        }
        bits.truncate(len.div_ceil(8));
        if !len.is_multiple_of(8)
            && let Some(last) = bits.last_mut()
        {
            *last &= (1u8 << (len % 8)) - 1;
        }
        // Bits past `len` are cleared above, so the set bits are the valid rows.
        let valid: usize = bits.iter().map(|b| b.count_ones() as usize).sum();
        Some(Self {
            bits,
            len,
            nulls: len - valid,
        })
    }
}

/// One named, typed column.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub dtype: ValueType,
    pub values: Values,
    /// `None`: every row holds a value.
    pub validity: Option<Validity>,
}

impl Column {
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn is_null(&self, i: usize) -> bool {
        self.validity.as_ref().is_some_and(|v| !v.is_valid(i))
    }

    /// Makes row `i` NULL (its slot keeps whatever it held; readers see NULL).
    pub fn set_null(&mut self, i: usize) {
        let len = self.len();
        self.validity
            .get_or_insert_with(|| Validity::all_valid(len))
            .set_null(i);
    }

    /// Renders row `i` as text, the one way a value prints everywhere (CSV cells, JSON
    /// numbers, CLI output). NULL renders as nothing; the caller decides how to show it.
    /// Floats use the shortest representation that reads back to the same bits (ryu,
    /// as serde_json does), at the column's own precision: an f32 prints as an f32.
    pub fn write_text(&self, i: usize, out: &mut String) {
        if self.is_null(i) {
            return;
        }
        match &self.values {
            Values::Int32(v) => out.push_str(itoa::Buffer::new().format(v[i])),
            Values::Int64(v) => out.push_str(itoa::Buffer::new().format(v[i])),
            Values::Float32(v) => write_f32(v[i], out),
            Values::Float64(v) => write_f64(v[i], out),
            Values::Bool(v) => out.push_str(if v[i] { "true" } else { "false" }),
            Values::String(v) => out.push_str(&v[i]),
            Values::Timestamp(v) => out.push_str(&format_timestamp(v[i])),
        }
    }

    /// Row `i` as a JSON value (numbers stay numbers, NULL is `null`).
    pub fn write_json(&self, i: usize, out: &mut String) {
        if self.is_null(i) {
            out.push_str("null");
            return;
        }
        match &self.values {
            Values::String(v) => write_json_string(&v[i], out),
            Values::Timestamp(v) => write_json_string(&format_timestamp(v[i]), out),
            Values::Float32(v) if !v[i].is_finite() => out.push_str("null"),
            Values::Float64(v) if !v[i].is_finite() => out.push_str("null"),
            _ => self.write_text(i, out),
        }
    }
}

/// f32 in shortest round-trip form; non-finite values as `NaN`, `inf`, `-inf`.
pub fn write_f32(v: f32, out: &mut String) {
    if v.is_finite() {
        out.push_str(ryu::Buffer::new().format_finite(v));
    } else {
        let _ = write!(out, "{v}");
    }
}

/// f64 in shortest round-trip form.
pub fn write_f64(v: f64, out: &mut String) {
    if v.is_finite() {
        out.push_str(ryu::Buffer::new().format_finite(v));
    } else {
        let _ = write!(out, "{v}");
    }
}

/// A timestamp as RFC 3339 in UTC (`2024-01-31T00:00:00Z`).
pub fn format_timestamp(micros: i64) -> String {
    match DateTime::<Utc>::from_timestamp_micros(micros) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        None => micros.to_string(),
    }
}

/// Appends `s` as a JSON string literal.
pub fn write_json_string(s: &str, out: &mut String) {
    out.push_str(&serde_json::to_string(s).expect("a str serializes"));
}

/// Rows of columns, all of the same length.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Batch {
    pub columns: Vec<Column>,
    pub rows: usize,
}

impl Batch {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// A column's name and type: what a batch will hold before it holds anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnSpec {
    pub name: String,
    pub dtype: ValueType,
}

/// Wrong bytes for a declared type: a bug (our SQL casts every column), never user input.
#[derive(Debug, thiserror::Error)]
#[error("column `{column}`: {message}")]
pub struct DecodeError {
    pub column: String,
    pub message: String,
}

/// Builds one column row by row.
#[derive(Debug)]
pub struct ColumnBuilder {
    name: String,
    dtype: ValueType,
    values: Values,
    validity: Validity,
}

impl ColumnBuilder {
    pub fn new(spec: &ColumnSpec, capacity: usize) -> Self {
        Self {
            name: spec.name.clone(),
            dtype: spec.dtype,
            values: Values::with_capacity(spec.dtype, capacity),
            validity: Validity::default(),
        }
    }

    pub fn push_null(&mut self) {
        self.values.push_default();
        self.validity.push(false);
    }

    /// Appends a value from PostgreSQL's binary format (`None` = SQL NULL). The bytes
    /// must be of [`crate::pgtypes::column_type`] of this column's dtype: every query
    /// skewless runs casts to it.
    pub fn push_pg_binary(&mut self, bytes: Option<&[u8]>) -> Result<(), DecodeError> {
        let Some(b) = bytes else {
            self.push_null();
            return Ok(());
        };
        let wrong = |expected: usize| DecodeError {
            column: self.name.clone(),
            message: format!(
                "expected {expected} bytes for {}, got {}",
                self.dtype,
                b.len()
            ),
        };
        match &mut self.values {
            Values::Int32(v) => v.push(i32::from_be_bytes(b.try_into().map_err(|_| wrong(4))?)),
            Values::Int64(v) => v.push(i64::from_be_bytes(b.try_into().map_err(|_| wrong(8))?)),
            Values::Float32(v) => v.push(f32::from_be_bytes(b.try_into().map_err(|_| wrong(4))?)),
            Values::Float64(v) => v.push(f64::from_be_bytes(b.try_into().map_err(|_| wrong(8))?)),
            Values::Bool(v) => match b {
                [x] => v.push(*x != 0),
                _ => return Err(wrong(1)),
            },
            Values::String(v) => v.push(
                std::str::from_utf8(b)
                    .map_err(|e| DecodeError {
                        column: self.name.clone(),
                        message: format!("invalid UTF-8: {e}"),
                    })?
                    .to_string(),
            ),
            Values::Timestamp(v) => {
                let pg = i64::from_be_bytes(b.try_into().map_err(|_| wrong(8))?);
                // ±infinity stay at the extremes rather than overflowing.
                v.push(pg.saturating_add(PG_EPOCH_OFFSET_MICROS));
            }
        }
        self.validity.push(true);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn finish(self) -> Column {
        let validity = (self.validity.null_count() > 0).then_some(self.validity);
        Column {
            name: self.name,
            dtype: self.dtype,
            values: self.values,
            validity,
        }
    }
}

/// Builds a batch row by row from PostgreSQL binary values.
#[derive(Debug)]
pub struct BatchBuilder {
    specs: Vec<ColumnSpec>,
    columns: Vec<ColumnBuilder>,
    capacity: usize,
}

impl BatchBuilder {
    pub fn new(specs: Vec<ColumnSpec>, capacity: usize) -> Self {
        let columns = specs
            .iter()
            .map(|s| ColumnBuilder::new(s, capacity))
            .collect();
        Self {
            specs,
            columns,
            capacity,
        }
    }

    pub fn specs(&self) -> &[ColumnSpec] {
        &self.specs
    }

    pub fn column_mut(&mut self, i: usize) -> &mut ColumnBuilder {
        &mut self.columns[i]
    }

    pub fn rows(&self) -> usize {
        self.columns.first().map_or(0, ColumnBuilder::len)
    }

    pub fn is_full(&self) -> bool {
        self.rows() >= self.capacity
    }

    /// Takes the rows built so far as a batch and starts afresh.
    pub fn take(&mut self) -> Batch {
        let fresh = self
            .specs
            .iter()
            .map(|s| ColumnBuilder::new(s, self.capacity))
            .collect();
        let columns: Vec<Column> = std::mem::replace(&mut self.columns, fresh)
            .into_iter()
            .map(ColumnBuilder::finish)
            .collect();
        let rows = columns.first().map_or(0, Column::len);
        Batch { columns, rows }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dtype: ValueType) -> ColumnSpec {
        ColumnSpec {
            name: name.into(),
            dtype,
        }
    }

    #[test]
    fn decodes_postgres_binary_values() {
        let mut b = BatchBuilder::new(
            vec![
                spec("i", ValueType::Int64),
                spec("f", ValueType::Float32),
                spec("b", ValueType::Bool),
                spec("s", ValueType::String),
                spec("t", ValueType::UnixTimestamp),
            ],
            4,
        );
        b.column_mut(0)
            .push_pg_binary(Some(&7i64.to_be_bytes()))
            .unwrap();
        b.column_mut(1)
            .push_pg_binary(Some(&29.85f32.to_be_bytes()))
            .unwrap();
        b.column_mut(2).push_pg_binary(None).unwrap();
        b.column_mut(3).push_pg_binary(Some(b"DSL")).unwrap();
        // 2024-01-31T00:00:00Z in PostgreSQL's epoch.
        let pg = 1_706_659_200_000_000i64 - PG_EPOCH_OFFSET_MICROS;
        b.column_mut(4)
            .push_pg_binary(Some(&pg.to_be_bytes()))
            .unwrap();
        let batch = b.take();
        assert_eq!(batch.rows, 1);
        let text = |c: usize| {
            let mut s = String::new();
            batch.columns[c].write_text(0, &mut s);
            s
        };
        assert_eq!(text(0), "7");
        assert_eq!(text(1), "29.85");
        assert_eq!(text(2), "");
        assert!(batch.columns[2].is_null(0));
        assert!(batch.columns[0].validity.is_none());
        assert_eq!(text(3), "DSL");
        assert_eq!(text(4), "2024-01-31T00:00:00Z");
        let mut json = String::new();
        batch.columns[2].write_json(0, &mut json);
        assert_eq!(json, "null");
    }

    #[test]
    fn float_text_is_shortest_at_its_own_precision() {
        let mut s = String::new();
        write_f32(24.483650766787413f64 as f32, &mut s);
        assert_eq!(s, "24.48365");
        assert_eq!(s.parse::<f32>().unwrap(), 24.483650766787413f64 as f32);
        // The same rendering serde_json gives an f32.
        assert_eq!(serde_json::to_string(&(0.1f32 + 0.2f32)).unwrap(), {
            let mut t = String::new();
            write_f32(0.1f32 + 0.2f32, &mut t);
            t
        });
    }

    #[test]
    fn validity_bitmap_is_arrow_layout() {
        let mut v = Validity::default();
        for i in 0..10 {
            v.push(i % 3 != 0);
        }
        assert_eq!(v.null_count(), 4);
        assert_eq!(v.bytes(), &[0b1011_0110, 0b0000_0001]);
        let back = Validity::from_bytes(v.bytes().to_vec(), 10).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn wrong_width_is_an_error() {
        let mut b = ColumnBuilder::new(&spec("x", ValueType::Int32), 1);
        assert!(b.push_pg_binary(Some(&[1, 2])).is_err());
    }
}
