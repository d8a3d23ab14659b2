//! skewless: a feature store server.
//!
//! Feast-compatible feature definitions ([`definitions`]) applied to a registry in
//! PostgreSQL ([`registry`]), point-in-time training sets computed inside PostgreSQL
//! ([`offline`]), an online store of typed tables ([`online`]), and data ingestion
//! ([`ingest`]) and generation ([`generate`]) for the StreamFlow churn lab.

pub mod batch;
pub mod config;
pub mod definitions;
pub mod generate;
pub mod ingest;
pub mod offline;
pub mod online;
pub mod output;
pub mod pgtypes;
pub mod plugins;
pub mod registry;
pub mod repo;
pub mod server;
pub mod time;
pub mod transform;
