//! The online store: one typed table per online view, keyed by the entity's join key.
//!
//! Unlike Feast's row-per-feature `bytea` layout, each view's row holds typed columns
//! (`user_id text PRIMARY KEY, months_active int8, …, event_ts, created_ts`), so one
//! `SELECT … WHERE user_id = ANY($1)` answers a whole view for many entities, and
//! Postgres itself enforces the types. [`materialize()`](materialize::materialize) fills
//! the tables from the offline sources, set-based, inside PostgreSQL.

pub mod layout;
pub mod materialize;
pub mod read;
pub mod write;

pub use materialize::{
    MaterializeError, MaterializeReport, ViewReport, Window, materialize, materialize_incremental,
    watermarks,
};
