//! [`FeaturePlan`]: the single code path from stored features to requested features.
//!
//! Training sets and online requests both resolve their feature list into a plan, fetch
//! [`FeaturePlan::base`] from their store (the requested stored features, then any
//! plugin input not requested), and hand the fetched columns to
//! [`FeaturePlan::derive`], which runs each on-demand view's plugin over them and
//! returns the requested columns in the requested order. Same plan, same conversion,
//! same plugin bytes on both sides: there is no second implementation to drift.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::batch::{Batch, Column};
use crate::definitions::{Definitions, SelectedFeature};

use super::host::{Plugin, TransformError};

/// Loaded plugins by the sha256 of their bytes (what on-demand views resolve to).
#[derive(Debug, Clone, Default)]
pub struct PluginSet {
    by_sha: HashMap<String, Arc<Plugin>>,
}

impl PluginSet {
    pub fn insert(&mut self, plugin: Arc<Plugin>) {
        self.by_sha.insert(plugin.sha256().to_string(), plugin);
    }

    pub fn get(&self, sha256: &str) -> Option<&Arc<Plugin>> {
        self.by_sha.get(sha256)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.by_sha.values()
    }

    pub fn len(&self) -> usize {
        self.by_sha.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_sha.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("on-demand feature view `{view}` has no plugin loaded (sha256 {sha256}); run `skewless apply` with the plugin built")]
    PluginMissing { view: String, sha256: String },
    #[error("on-demand feature view `{view}` does not match its plugin: {problems}")]
    Mismatch { view: String, problems: String },
}

/// One plugin call: which base columns feed it, under which input names.
#[derive(Debug, Clone)]
struct Step {
    plugin: Arc<Plugin>,
    /// (index in the base columns, plugin input name), in the plugin's input order.
    inputs: Vec<(usize, String)>,
}

/// Where a requested feature comes from.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Base(usize),
    Derived { step: usize, output: usize },
}

/// How to produce a list of requested features from stored ones.
#[derive(Debug, Clone)]
pub struct FeaturePlan {
    requested: Vec<SelectedFeature>,
    base: Vec<SelectedFeature>,
    steps: Vec<Step>,
    slots: Vec<Slot>,
}

impl FeaturePlan {
    /// Plans `requested` (as resolved by [`Definitions::select_features`]).
    pub fn new(
        defs: &Definitions,
        plugins: &PluginSet,
        requested: Vec<SelectedFeature>,
    ) -> Result<Self, PlanError> {
        let mut base: Vec<SelectedFeature> = requested
            .iter()
            .filter(|f| defs.on_demand_view(&f.view).is_none())
            .cloned()
            .collect();
        let mut steps: Vec<Step> = Vec::new();
        let mut step_of_view: HashMap<&str, usize> = HashMap::new();
        let mut slots = Vec::with_capacity(requested.len());
        for f in &requested {
            let Some(view) = defs.on_demand_view(&f.view) else {
                let i = base
                    .iter()
                    .position(|b| b.view == f.view && b.field.name == f.field.name)
                    .expect("base features are listed");
                slots.push(Slot::Base(i));
                continue;
            };
            let step = match step_of_view.get(view.name.as_str()) {
                Some(&step) => step,
                None => {
                    let sha256 = view.plugin.resolved_sha256.clone().unwrap_or_default();
                    let plugin =
                        plugins
                            .get(&sha256)
                            .cloned()
                            .ok_or_else(|| PlanError::PluginMissing {
                                view: view.name.clone(),
                                sha256: sha256.clone(),
                            })?;
                    let sources = defs.check_plugin(view, plugin.info()).map_err(|problems| {
                        PlanError::Mismatch {
                            view: view.name.clone(),
                            problems: problems.join("; "),
                        }
                    })?;
                    let mut inputs = Vec::with_capacity(sources.len());
                    for ((source_view, field), declared) in sources.into_iter().zip(&plugin.info().inputs) {
                        let i = match base
                            .iter()
                            .position(|b| b.view == source_view && b.field.name == field.name)
                        {
                            Some(i) => i,
                            None => {
                                base.push(SelectedFeature {
                                    output_name: format!("__input__{source_view}__{}", field.name),
                                    view: source_view,
                                    field,
                                });
                                base.len() - 1
                            }
                        };
                        inputs.push((i, declared.name.clone()));
                    }
                    steps.push(Step { plugin, inputs });
                    step_of_view.insert(&view.name, steps.len() - 1);
                    steps.len() - 1
                }
            };
            let output = steps[step]
                .plugin
                .info()
                .outputs
                .iter()
                .position(|o| o.name == f.field.name)
                .expect("check_plugin verified the schema");
            slots.push(Slot::Derived { step, output });
        }
        Ok(Self {
            requested,
            base,
            steps,
            slots,
        })
    }

    /// The features as requested, in order.
    pub fn requested(&self) -> &[SelectedFeature] {
        &self.requested
    }

    /// The stored features to fetch, in the order [`Self::derive`] expects them.
    pub fn base(&self) -> &[SelectedFeature] {
        &self.base
    }

    /// Whether no plugin runs (the base columns are the answer).
    pub fn is_identity(&self) -> bool {
        self.steps.is_empty()
    }

    /// The plugins this plan runs.
    pub fn plugins(&self) -> impl Iterator<Item = &Plugin> {
        self.steps.iter().map(|s| s.plugin.as_ref())
    }

    /// For requested feature `i`: `None` if stored, else the base columns its plugin
    /// reads (so the online path can derive its status from theirs).
    pub fn derived_inputs(&self, i: usize) -> Option<Vec<usize>> {
        match self.slots[i] {
            Slot::Base(_) => None,
            Slot::Derived { step, .. } => {
                Some(self.steps[step].inputs.iter().map(|(b, _)| *b).collect())
            }
        }
    }

    /// For requested feature `i` stored in a view: its index among the base columns.
    pub fn base_index(&self, i: usize) -> Option<usize> {
        match self.slots[i] {
            Slot::Base(b) => Some(b),
            Slot::Derived { .. } => None,
        }
    }

    /// Runs the plugins over `base` (one column per [`Self::base`] entry, `rows` rows)
    /// and returns the requested columns, named as requested. Each plugin call gets
    /// `budget`.
    pub async fn derive(
        &self,
        base: Vec<Column>,
        rows: usize,
        budget: Duration,
    ) -> Result<Vec<Column>, TransformError> {
        debug_assert_eq!(base.len(), self.base.len());
        // Base columns are lent to each plugin (moved in under the plugin's input names,
        // moved back afterwards), never copied on the host side.
        let mut base: Vec<Option<Column>> = base.into_iter().map(Some).collect();
        let mut outputs: Vec<Vec<Option<Column>>> = Vec::with_capacity(self.steps.len());
        for step in &self.steps {
            let mut input = Batch {
                rows,
                columns: Vec::with_capacity(step.inputs.len()),
            };
            // Per input column: the base slot and name it was lent from (`None`: a copy).
            let mut lent: Vec<Option<(usize, String)>> = Vec::with_capacity(step.inputs.len());
            for (i, name) in &step.inputs {
                let column = match base[*i].take() {
                    Some(mut column) => {
                        let original = std::mem::replace(&mut column.name, name.clone());
                        lent.push(Some((*i, original)));
                        column
                    }
                    // The same base column under a second input name: that one is a copy.
                    None => {
                        let k = lent
                            .iter()
                            .position(|l| matches!(l, Some((j, _)) if j == i))
                            .expect("lent above");
                        let mut column = input.columns[k].clone();
                        column.name.clone_from(name);
                        lent.push(None);
                        column
                    }
                };
                input.columns.push(column);
            }
            let result = step.plugin.transform(&mut input, budget).await;
            for (lent, mut column) in lent.into_iter().zip(input.columns) {
                if let Some((i, name)) = lent {
                    column.name = name;
                    base[i] = Some(column);
                }
            }
            outputs.push(result?.columns.into_iter().map(Some).collect());
        }
        let mut result = Vec::with_capacity(self.requested.len());
        for (f, slot) in self.requested.iter().zip(&self.slots) {
            let mut column = match *slot {
                Slot::Base(i) => base[i].take(),
                Slot::Derived { step, output } => outputs[step][output].take(),
            }
            .expect("each requested column is taken once");
            column.name.clone_from(&f.output_name);
            result.push(column);
        }
        Ok(result)
    }
}
