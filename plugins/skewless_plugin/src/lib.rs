//! The plugin SDK: what every skewless transformation plugin shares, so a plugin crate
//! holds only its formulas.
//!
//! - The bindings of the `transformation` world of `wit/transform.wit`, generated once
//!   here (`Guest`, `Batch`, `Column`, `Values`, …) with a public [`export!`] macro: a
//!   plugin implements [`Guest`] and calls `skewless_plugin::export!(MyPlugin);`.
//! - [`column`]: an input column found by name and checked (present once, declared type,
//!   one value per row, a bitmap covering every row), with errors naming the plugin and
//!   the column — the same messages in every plugin.
//! - [`columns`]: validity bitmaps as plain Rust, unit-tested natively.
//!
//! Everything compiles natively too, so a plugin's `cargo test` runs the very code its
//! exported `transform` runs.

pub mod columns;

/// The generated bindings (in a module of their own: wit-bindgen's public `export!`
/// macro is defined at the crate root, where it would clash with the generated one).
pub mod bindings {
    wit_bindgen::generate!({
        world: "transformation",
        path: "../../wit",
        pub_export_macro: true,
        default_bindings_module: "skewless_plugin::bindings",
    });
}

pub use bindings::skewless::transform::types::{Batch, Column, Field, PluginInfo, ValueType, Values};
pub use bindings::{Guest, export};
pub use columns::{Col, Out};

/// A Rust element type that a WIT column can hold, tied to its `value-type`.
pub trait ColumnType: Sized {
    /// The WIT type of a column of `Self`.
    const TYPE: ValueType;
    /// The values, when `values` holds this type.
    fn pick(values: &Values) -> Option<&[Self]>;
}

macro_rules! column_type {
    ($($t:ty => $variant:ident),* $(,)?) => {$(
        impl ColumnType for $t {
            const TYPE: ValueType = ValueType::$variant;
            fn pick(values: &Values) -> Option<&[Self]> {
                match values {
                    Values::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    )*};
}

column_type!(i32 => Int32, i64 => Int64, f32 => Float32, f64 => Float64, bool => Bool, String => String);

/// What `describe` returns for a plugin reading `inputs` and writing `outputs` (names and
/// types, outputs in the order `transform` returns them).
pub fn plugin_info(
    name: &str,
    version: &str,
    inputs: &[(&str, ValueType)],
    outputs: &[(&str, ValueType)],
) -> PluginInfo {
    let fields = |list: &[(&str, ValueType)]| {
        list.iter()
            .map(|&(name, dtype)| Field {
                name: name.to_string(),
                dtype,
            })
            .collect()
    };
    PluginInfo {
        name: name.to_string(),
        version: version.to_string(),
        inputs: fields(inputs),
        outputs: fields(outputs),
    }
}

/// The input column `name` of `batch`, checked: present once, of type `T`, one value per
/// row, and a bitmap that is empty or covers every row. Errors start with `plugin`.
/// Columns are found by name: their order is free and extra columns are ignored.
pub fn column<'a, T: ColumnType>(
    plugin: &str,
    batch: &'a Batch,
    name: &str,
) -> Result<Col<'a, T>, String> {
    let mut found = batch.columns.iter().filter(|c| c.name == name);
    let c = match (found.next(), found.next()) {
        (Some(c), None) => c,
        (None, _) => return Err(format!("{plugin}: input column `{name}` is missing")),
        (Some(_), Some(_)) => {
            return Err(format!(
                "{plugin}: input column `{name}` appears more than once"
            ));
        }
    };
    let Some(values) = T::pick(&c.values) else {
        return Err(format!(
            "{plugin}: input column `{name}` has type {}, expected {}",
            type_name(dtype(&c.values)),
            type_name(T::TYPE),
        ));
    };
    let rows = batch.rows as usize;
    if values.len() != rows {
        return Err(format!(
            "{plugin}: input column `{name}` has {} values, expected {rows} (the batch's rows)",
            values.len(),
        ));
    }
    let needed = columns::bitmap_len(rows);
    if !c.validity.is_empty() && c.validity.len() < needed {
        return Err(format!(
            "{plugin}: input column `{name}` has a validity bitmap of {} bytes, expected none \
             or at least {needed} for {rows} rows",
            c.validity.len(),
        ));
    }
    Ok(Col {
        values,
        validity: &c.validity,
    })
}

/// An output column named `name`.
pub fn output(name: &str, values: Values, validity: Vec<u8>) -> Column {
    Column {
        name: name.to_string(),
        values,
        validity,
    }
}

/// The type of a column's values.
pub fn dtype(v: &Values) -> ValueType {
    match v {
        Values::Int32(_) => ValueType::Int32,
        Values::Int64(_) => ValueType::Int64,
        Values::Float32(_) => ValueType::Float32,
        Values::Float64(_) => ValueType::Float64,
        Values::Bool(_) => ValueType::Bool,
        Values::String(_) => ValueType::String,
        Values::UnixTimestamp(_) => ValueType::UnixTimestamp,
    }
}

/// A type's name as the WIT spells it.
pub fn type_name(t: ValueType) -> &'static str {
    match t {
        ValueType::Int32 => "int32",
        ValueType::Int64 => "int64",
        ValueType::Float32 => "float32",
        ValueType::Float64 => "float64",
        ValueType::Bool => "bool",
        ValueType::String => "string",
        ValueType::UnixTimestamp => "unix-timestamp",
    }
}
