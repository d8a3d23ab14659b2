//! Writers of batches to files and response bodies: CSV, JSON lines, Parquet.
//!
//! Text formats render every value through [`Column::write_text`] /
//! [`Column::write_json`], so a value prints the same in a CSV cell, a JSON line and an
//! online response. Writers work batch by batch over any `io::Write`: a training set is
//! never held in memory, whatever its size.

use std::io::Write;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float32Builder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

use crate::batch::{Batch, Column, ColumnSpec, Values};
use crate::definitions::ValueType;

/// Output formats of a training set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Jsonl,
    Parquet,
}

impl Format {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Some(Self::Csv),
            "jsonl" | "ndjson" | "json" => Some(Self::Jsonl),
            "parquet" => Some(Self::Parquet),
            _ => None,
        }
    }

    /// From a file name's extension.
    pub fn from_path(path: &std::path::Path) -> Option<Self> {
        Self::parse(path.extension()?.to_str()?)
    }

    /// From an HTTP `Accept` header (first supported type wins).
    pub fn from_accept(accept: &str) -> Option<Self> {
        accept
            .split(',')
            .map(|part| part.split(';').next().unwrap_or("").trim())
            .find_map(|mime| match mime {
                "text/csv" => Some(Self::Csv),
                "application/x-ndjson" | "application/jsonl" | "application/json" => {
                    Some(Self::Jsonl)
                }
                "application/vnd.apache.parquet" | "application/x-parquet" => Some(Self::Parquet),
                _ => None,
            })
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Csv => "text/csv; charset=utf-8",
            Self::Jsonl => "application/x-ndjson",
            Self::Parquet => "application/vnd.apache.parquet",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("write failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
}

/// Writes batches in one format.
pub enum BatchWriter<W: Write + Send> {
    Text {
        format: Format,
        out: W,
        line: String,
    },
    Parquet {
        writer: Box<ArrowWriter<W>>,
        schema: Arc<Schema>,
    },
}

impl<W: Write + Send> BatchWriter<W> {
    /// Starts a file: the CSV header, or the Parquet schema (with `metadata` as key-value
    /// metadata; text formats ignore it).
    pub fn new(
        format: Format,
        schema: &[ColumnSpec],
        mut out: W,
        metadata: &[(String, String)],
    ) -> Result<Self, OutputError> {
        match format {
            Format::Csv => {
                let mut line = String::new();
                for (i, c) in schema.iter().enumerate() {
                    if i > 0 {
                        line.push(',');
                    }
                    push_csv_field(&c.name, &mut line);
                }
                line.push('\n');
                out.write_all(line.as_bytes())?;
                Ok(Self::Text {
                    format,
                    out,
                    line: String::new(),
                })
            }
            Format::Jsonl => Ok(Self::Text {
                format,
                out,
                line: String::new(),
            }),
            Format::Parquet => {
                let schema = Arc::new(Schema::new(
                    schema
                        .iter()
                        .map(|c| Field::new(&c.name, arrow_type(c.dtype), true))
                        .collect::<Vec<_>>(),
                ));
                let mut props = WriterProperties::builder()
                    .set_compression(parquet::basic::Compression::SNAPPY)
                    .set_max_row_group_size(64 * 1024);
                if !metadata.is_empty() {
                    props = props.set_key_value_metadata(Some(
                        metadata
                            .iter()
                            .map(|(k, v)| {
                                parquet::file::metadata::KeyValue::new(k.clone(), v.clone())
                            })
                            .collect(),
                    ));
                }
                let writer = ArrowWriter::try_new(out, schema.clone(), Some(props.build()))?;
                Ok(Self::Parquet {
                    writer: Box::new(writer),
                    schema,
                })
            }
        }
    }

    pub fn write(&mut self, batch: &Batch) -> Result<(), OutputError> {
        match self {
            Self::Text { format, out, line } => {
                for row in 0..batch.rows {
                    line.clear();
                    match format {
                        Format::Csv => csv_row(batch, row, line),
                        _ => json_row(batch, row, line),
                    }
                    out.write_all(line.as_bytes())?;
                }
                Ok(())
            }
            Self::Parquet { writer, schema } => {
                let arrays: Vec<ArrayRef> = batch.columns.iter().map(arrow_array).collect();
                let record = RecordBatch::try_new(schema.clone(), arrays)?;
                writer.write(&record)?;
                Ok(())
            }
        }
    }

    /// Ends the file (the Parquet footer) and returns the underlying writer.
    pub fn finish(self) -> Result<W, OutputError> {
        match self {
            Self::Text { mut out, .. } => {
                out.flush()?;
                Ok(out)
            }
            Self::Parquet { writer, .. } => Ok(writer.into_inner()?),
        }
    }

    /// The underlying writer, e.g. to drain a buffer between batches.
    pub fn get_mut(&mut self) -> &mut W {
        match self {
            Self::Text { out, .. } => out,
            Self::Parquet { writer, .. } => writer.inner_mut(),
        }
    }
}

fn csv_row(batch: &Batch, row: usize, line: &mut String) {
    for (i, c) in batch.columns.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        if c.is_null(row) {
            continue;
        }
        match &c.values {
            // An empty string is not NULL: quote it so readers can tell.
            Values::String(v) if v[row].is_empty() => line.push_str("\"\""),
            Values::String(v) => push_csv_field(&v[row], line),
            // Numbers, booleans and timestamps never hold a character CSV must quote.
            _ => c.write_text(row, line),
        }
    }
    line.push('\n');
}

fn push_csv_field(s: &str, line: &mut String) {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        line.push('"');
        line.push_str(&s.replace('"', "\"\""));
        line.push('"');
    } else {
        line.push_str(s);
    }
}

fn json_row(batch: &Batch, row: usize, line: &mut String) {
    line.push('{');
    for (i, c) in batch.columns.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        crate::batch::write_json_string(&c.name, line);
        line.push(':');
        c.write_json(row, line);
    }
    line.push_str("}\n");
}

fn arrow_type(dtype: ValueType) -> DataType {
    match dtype {
        ValueType::Int32 => DataType::Int32,
        ValueType::Int64 => DataType::Int64,
        ValueType::Float32 => DataType::Float32,
        ValueType::Float64 => DataType::Float64,
        ValueType::Bool => DataType::Boolean,
        ValueType::String => DataType::Utf8,
        ValueType::UnixTimestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
    }
}

fn arrow_array(c: &Column) -> ArrayRef {
    macro_rules! build {
        ($builder:expr, $values:expr) => {{
            let mut b = $builder;
            for (i, v) in $values.iter().enumerate() {
                if c.is_null(i) {
                    b.append_null();
                } else {
                    b.append_value(v.clone());
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    let n = c.len();
    match &c.values {
        Values::Int32(v) => build!(Int32Builder::with_capacity(n), v),
        Values::Int64(v) => build!(Int64Builder::with_capacity(n), v),
        Values::Float32(v) => build!(Float32Builder::with_capacity(n), v),
        Values::Float64(v) => build!(Float64Builder::with_capacity(n), v),
        Values::Bool(v) => build!(BooleanBuilder::with_capacity(n), v),
        Values::String(v) => build!(StringBuilder::with_capacity(n, n * 8), v),
        Values::Timestamp(v) => build!(
            TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC"),
            v
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchBuilder, ColumnSpec};
    use arrow_array::Array;

    fn sample() -> (Vec<ColumnSpec>, Batch) {
        let specs = vec![
            ColumnSpec {
                name: "user_id".into(),
                dtype: ValueType::String,
            },
            ColumnSpec {
                name: "fee".into(),
                dtype: ValueType::Float32,
            },
            ColumnSpec {
                name: "tv".into(),
                dtype: ValueType::Bool,
            },
        ];
        let mut b = BatchBuilder::new(specs.clone(), 4);
        b.column_mut(0).push_pg_binary(Some(b"a,\"b\"")).unwrap();
        b.column_mut(1)
            .push_pg_binary(Some(&29.85f32.to_be_bytes()))
            .unwrap();
        b.column_mut(2).push_pg_binary(None).unwrap();
        b.column_mut(0).push_pg_binary(Some(b"")).unwrap();
        b.column_mut(1).push_pg_binary(None).unwrap();
        b.column_mut(2).push_pg_binary(Some(&[1])).unwrap();
        (specs, b.take())
    }

    #[test]
    fn csv_quotes_and_keeps_null_apart_from_empty() {
        let (specs, batch) = sample();
        let mut w = BatchWriter::new(Format::Csv, &specs, Vec::new(), &[]).unwrap();
        w.write(&batch).unwrap();
        let text = String::from_utf8(w.finish().unwrap()).unwrap();
        assert_eq!(text, "user_id,fee,tv\n\"a,\"\"b\"\"\",29.85,\n\"\",,true\n");
    }

    #[test]
    fn jsonl_uses_the_same_numbers() {
        let (specs, batch) = sample();
        let mut w = BatchWriter::new(Format::Jsonl, &specs, Vec::new(), &[]).unwrap();
        w.write(&batch).unwrap();
        let text = String::from_utf8(w.finish().unwrap()).unwrap();
        assert_eq!(
            text,
            "{\"user_id\":\"a,\\\"b\\\"\",\"fee\":29.85,\"tv\":null}\n{\"user_id\":\"\",\"fee\":null,\"tv\":true}\n"
        );
    }

    #[test]
    fn parquet_round_trips_types_and_nulls() {
        let (specs, batch) = sample();
        let mut w = BatchWriter::new(
            Format::Parquet,
            &specs,
            Vec::new(),
            &[("skewless.test".into(), "1".into())],
        )
        .unwrap();
        w.write(&batch).unwrap();
        let bytes = bytes::Bytes::from(w.finish().unwrap());
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
        let kv = reader
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .cloned();
        assert!(kv.unwrap().iter().any(|k| k.key == "skewless.test"));
        let batches: Vec<_> = reader.build().unwrap().collect::<Result<_, _>>().unwrap();
        let fee = batches[0]
            .column(1)
            .as_any()
            .downcast_ref::<arrow_array::Float32Array>()
            .unwrap();
        assert_eq!(fee.value(0), 29.85f32);
        assert!(fee.is_null(1));
    }
}
