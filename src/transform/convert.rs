//! The one conversion between [`crate::batch::Batch`] and the WIT batch, both ways, and
//! the checks on what a plugin returns. Offline and online calls both come through here.

use crate::batch::{Batch, Column, Validity, Values};
use crate::definitions::{PluginField, PluginInfo, ValueType};

use super::host::bindings::skewless::transform::types as wit;

fn from_wit_type(t: wit::ValueType) -> ValueType {
    match t {
        wit::ValueType::Int32 => ValueType::Int32,
        wit::ValueType::Int64 => ValueType::Int64,
        wit::ValueType::Float32 => ValueType::Float32,
        wit::ValueType::Float64 => ValueType::Float64,
        wit::ValueType::Bool => ValueType::Bool,
        wit::ValueType::String => ValueType::String,
        wit::ValueType::UnixTimestamp => ValueType::UnixTimestamp,
    }
}

/// `describe()` as the pure model has it, with names checked.
pub(super) fn plugin_info(raw: wit::PluginInfo) -> Result<PluginInfo, String> {
    let fields = |list: Vec<wit::Field>, what: &str| -> Result<Vec<PluginField>, String> {
        let mut out: Vec<PluginField> = Vec::with_capacity(list.len());
        for f in list {
            if !crate::config::is_identifier(&f.name) {
                return Err(format!("describe(): {what} `{}` is not a valid column name", f.name));
            }
            if out.iter().any(|x| x.name == f.name) {
                return Err(format!("describe(): {what} `{}` is listed twice", f.name));
            }
            out.push(PluginField {
                name: f.name,
                dtype: from_wit_type(f.dtype),
            });
        }
        Ok(out)
    };
    if !crate::config::is_identifier(&raw.name) {
        return Err(format!("describe(): name `{}` is not a valid plugin name (letters, digits, underscores)", raw.name));
    }
    let inputs = fields(raw.inputs, "input")?;
    let outputs = fields(raw.outputs, "output")?;
    if outputs.is_empty() {
        return Err("describe(): the plugin declares no outputs".into());
    }
    Ok(PluginInfo {
        name: raw.name,
        version: raw.version,
        inputs,
        outputs,
    })
}

/// A batch as the plugin receives it (moved, not copied; the boundary copies once).
/// [`from_lent`] moves it back afterwards.
pub(super) fn to_wit(batch: Batch) -> wit::Batch {
    wit::Batch {
        rows: batch.rows as u32,
        columns: batch
            .columns
            .into_iter()
            .map(|c| wit::Column {
                name: c.name,
                values: match c.values {
                    Values::Int32(v) => wit::Values::Int32(v),
                    Values::Int64(v) => wit::Values::Int64(v),
                    Values::Float32(v) => wit::Values::Float32(v),
                    Values::Float64(v) => wit::Values::Float64(v),
                    Values::Bool(v) => wit::Values::Bool(v),
                    Values::String(v) => wit::Values::String(v),
                    Values::Timestamp(v) => wit::Values::UnixTimestamp(v),
                },
                validity: c.validity.map(|v| v.into_bytes()).unwrap_or_default(),
            })
            .collect(),
    }
}

/// The batch [`to_wit`] made, moved back into host columns (`dtypes`: the original
/// columns' types, which the WIT variants do not all carry). Infallible: these are the
/// host's own columns, which the call only borrowed.
pub(super) fn from_lent(batch: wit::Batch, dtypes: &[ValueType]) -> Batch {
    Batch {
        rows: batch.rows as usize,
        columns: batch
            .columns
            .into_iter()
            .zip(dtypes)
            .map(|(c, &dtype)| {
                let values = match c.values {
                    wit::Values::Int32(v) => Values::Int32(v),
                    wit::Values::Int64(v) => Values::Int64(v),
                    wit::Values::Float32(v) => Values::Float32(v),
                    wit::Values::Float64(v) => Values::Float64(v),
                    wit::Values::Bool(v) => Values::Bool(v),
                    wit::Values::String(v) => Values::String(v),
                    wit::Values::UnixTimestamp(v) => Values::Timestamp(v),
                };
                // The bitmap was made from this column's own validity, so it covers the
                // column's values whatever `rows` says.
                let len = values.len();
                Column {
                    name: c.name,
                    dtype,
                    validity: (!c.validity.is_empty()).then(|| {
                        Validity::from_bytes(c.validity, len).expect("the column's own bitmap")
                    }),
                    values,
                }
            })
            .collect(),
    }
}

/// Checks a plugin's output against its declaration: the row count of the input, the
/// declared columns in the declared order with the declared types, well-formed bitmaps,
/// a bounded size. Returns the columns as a batch.
pub(super) fn from_wit(
    output: wit::Batch,
    rows: usize,
    declared: &[PluginField],
    max_bytes: usize,
) -> Result<Batch, String> {
    if output.rows as usize != rows {
        return Err(format!("{} rows for an input of {rows}", output.rows));
    }
    let names: Vec<&str> = output.columns.iter().map(|c| c.name.as_str()).collect();
    let expected: Vec<&str> = declared.iter().map(|f| f.name.as_str()).collect();
    if names != expected {
        return Err(format!(
            "columns [{}], but describe() declares [{}]",
            names.join(", "),
            expected.join(", ")
        ));
    }
    let mut bytes = 0usize;
    let mut columns = Vec::with_capacity(declared.len());
    for (column, field) in output.columns.into_iter().zip(declared) {
        let (values, dtype, size) = match column.values {
            wit::Values::Int32(v) => (Values::Int32(v), ValueType::Int32, 4 * rows),
            wit::Values::Int64(v) => (Values::Int64(v), ValueType::Int64, 8 * rows),
            wit::Values::Float32(v) => (Values::Float32(v), ValueType::Float32, 4 * rows),
            wit::Values::Float64(v) => (Values::Float64(v), ValueType::Float64, 8 * rows),
            wit::Values::Bool(v) => (Values::Bool(v), ValueType::Bool, rows),
            wit::Values::String(v) => {
                let size = v.iter().map(String::len).sum();
                (Values::String(v), ValueType::String, size)
            }
            wit::Values::UnixTimestamp(v) => (Values::Timestamp(v), ValueType::UnixTimestamp, 8 * rows),
        };
        if dtype != field.dtype {
            return Err(format!(
                "column `{}` holds {dtype} values, but describe() declares {}",
                field.name, field.dtype
            ));
        }
        if values.len() != rows {
            return Err(format!(
                "column `{}` holds {} values for {rows} rows",
                field.name,
                values.len()
            ));
        }
        bytes = bytes.saturating_add(size);
        if bytes > max_bytes {
            return Err(format!(
                "output larger than the {} MiB limit",
                max_bytes >> 20
            ));
        }
        let validity = if column.validity.is_empty() {
            None
        } else {
            let v = Validity::from_bytes(column.validity, rows).ok_or_else(|| {
                format!(
                    "column `{}`: validity bitmap shorter than {} bytes",
                    field.name,
                    rows.div_ceil(8)
                )
            })?;
            (v.null_count() > 0).then_some(v)
        };
        columns.push(Column {
            name: field.name.clone(),
            dtype,
            values,
            validity,
        });
    }
    Ok(Batch { columns, rows })
}
