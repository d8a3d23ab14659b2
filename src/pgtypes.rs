//! The one mapping between feature value types and PostgreSQL types.
//!
//! Offline reads, online tables and materialization all cast through [`column_type`], so
//! a Float32 is a `real` on every path and the client decodes exactly one Postgres type
//! per value type: the first wall against training-serving skew.

use crate::definitions::ValueType;

/// The Postgres type a value of `dtype` is stored and read as.
pub fn column_type(dtype: ValueType) -> &'static str {
    match dtype {
        ValueType::Int32 => "int4",
        ValueType::Int64 => "int8",
        ValueType::Float32 => "float4",
        ValueType::Float64 => "float8",
        ValueType::Bool => "bool",
        ValueType::String => "text",
        ValueType::UnixTimestamp => "timestamptz",
    }
}

/// Whether a source column of Postgres type `pg` (as sqlx names it: `INT8`, `FLOAT4`,
/// `TIMESTAMPTZ`, …) can hold values of `dtype` without inventing or truncating data.
/// Narrowing a float8 or numeric to Float32 is allowed (that is what declaring Float32
/// asks for); narrowing an int8 to Int32 is not (it could overflow).
pub fn accepts(dtype: ValueType, pg: &str) -> bool {
    let pg = pg.to_ascii_uppercase();
    let allowed: &[&str] = match dtype {
        ValueType::Int32 => &["INT2", "INT4"],
        ValueType::Int64 => &["INT2", "INT4", "INT8"],
        ValueType::Float32 | ValueType::Float64 => &["FLOAT4", "FLOAT8", "NUMERIC", "INT2", "INT4"],
        ValueType::Bool => &["BOOL"],
        ValueType::String => &[
            "TEXT", "VARCHAR", "BPCHAR", "CHAR", "NAME", "CITEXT", "UUID",
        ],
        ValueType::UnixTimestamp => TEMPORAL,
    };
    allowed.contains(&pg.as_str())
}

/// Types a `timestamp_field` may have. A DATE compares as midnight UTC.
pub const TEMPORAL: &[&str] = &["TIMESTAMPTZ", "TIMESTAMP", "DATE"];

/// Whether a Postgres type can serve as an event timestamp.
pub fn is_temporal(pg: &str) -> bool {
    TEMPORAL.contains(&pg.to_ascii_uppercase().as_str())
}

/// Appends `s` in COPY's text format (backslash escapes), for `COPY … FROM STDIN`.
pub fn write_copy_text(buf: &mut Vec<u8>, s: &str) {
    for b in s.bytes() {
        match b {
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            _ => buf.push(b),
        }
    }
}

/// Quotes an identifier for SQL (names are validated already; quoting is belt and braces).
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes() {
        let mut buf = Vec::new();
        write_copy_text(&mut buf, "a\tb\\c\nd");
        assert_eq!(buf, b"a\\tb\\\\c\\nd");
    }

    #[test]
    fn every_type_accepts_its_own_column_type() {
        use ValueType::*;
        for t in [Int32, Int64, Float32, Float64, Bool, String, UnixTimestamp] {
            assert!(accepts(t, column_type(t)), "{t}");
        }
        assert!(!accepts(Int32, "int8"));
        assert!(!accepts(Int64, "text"));
        assert!(!accepts(Bool, "int4"));
        assert!(is_temporal("date") && !is_temporal("text"));
    }
}
