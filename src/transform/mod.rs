//! Derived features: sandboxed WebAssembly components, run the same way for training
//! sets and online requests.
//!
//! A plugin is a component implementing the `transformation` world of
//! `wit/transform.wit`. The host ([`Runtime`]) compiles it once, keeps an
//! `InstancePre`, and runs every call in a fresh instance that can reach nothing: no
//! files, environment, network, clock or randomness, a memory cap, a deadline. A fresh
//! instance per call is what makes a plugin a pure function of its input batch — no state
//! survives from one call to the next, so the value computed for a training set cannot
//! depend on what was computed before it, and offline and online agree bit for bit.
//!
//! [`FeaturePlan`] is the one code path both sides call: it says which stored features
//! to fetch, feeds them to the plugins as one [`crate::batch::Batch`], and assembles the
//! requested columns. This module knows no SQL and no HTTP.

mod convert;
mod host;
mod plan;

pub use host::{LoadError, Plugin, Runtime, RuntimeOptions, SUPPORTED_PACKAGE, TransformError};
pub use plan::{FeaturePlan, PlanError, PluginSet};
