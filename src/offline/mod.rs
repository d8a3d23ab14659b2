//! The offline store: PostgreSQL tables behind the data sources' queries.
//!
//! This module checks sources against the database and builds point-in-time training
//! sets; every source query runs as a subquery inside PostgreSQL, never as rows pulled
//! through the client.

mod check;
pub mod copy;
pub mod historical;

pub use check::{check_sources, database_message, is_unavailable};
pub use historical::{
    Entities, HistoricalError, HistoricalOptions, HistoricalRequest, TrainingSet,
};
