//! The offline store: PostgreSQL tables behind the data sources' queries.
//!
//! This module checks sources against the database (here) and builds point-in-time
//! training sets; every source query runs as a subquery inside PostgreSQL, never as rows
//! pulled through the client.

mod check;

pub use check::{check_sources, database_message};
