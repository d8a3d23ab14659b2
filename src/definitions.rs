//! The feature definitions: a pure model, parsed from YAML text and checked for internal
//! consistency. No I/O here: the caller reads the files (see [`crate::repo`]), the
//! registry stores the model as JSON, and the offline store checks it against the
//! database. Keeping this pure is what lets a server rebuild the very same model from
//! the registry that `apply` validated from files.
//!
//! The YAML mirrors Feast's Python objects field for field: `entities`, `data_sources`,
//! `feature_views`, `feature_services` (and, as the model grows, on-demand and label
//! views). Any definition file may hold any of these top-level lists.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

/// Names of the value types, as in Feast's `feast.types`.
pub const VALUE_TYPES: &str = "Int32, Int64, Float32, Float64, Bool, String, UnixTimestamp";

/// The type of a feature (or entity key). Every value of every type is nullable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ValueType {
    Int32,
    Int64,
    Float32,
    Float64,
    Bool,
    String,
    UnixTimestamp,
}

impl ValueType {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "Int32" => Self::Int32,
            "Int64" => Self::Int64,
            "Float32" => Self::Float32,
            "Float64" => Self::Float64,
            "Bool" => Self::Bool,
            "String" => Self::String,
            "UnixTimestamp" => Self::UnixTimestamp,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Int32 => "Int32",
            Self::Int64 => "Int64",
            Self::Float32 => "Float32",
            Self::Float64 => "Float64",
            Self::Bool => "Bool",
            Self::String => "String",
            Self::UnixTimestamp => "UnixTimestamp",
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    pub name: String,
    pub join_keys: Vec<String>,
    pub value_type: ValueType,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(skip)]
    pub file: String,
}

impl Entity {
    /// The single join key (multi-key entities are refused at validation).
    pub fn join_key(&self) -> &str {
        &self.join_keys[0]
    }
}

/// A PostgreSQL query that yields one row per (entity, timestamp).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSource {
    pub name: String,
    pub query: String,
    pub timestamp_field: String,
    #[serde(default)]
    pub created_timestamp_column: Option<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(skip)]
    pub file: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Field {
    pub name: String,
    pub dtype: ValueType,
    #[serde(default)]
    pub description: String,
}

/// Whether a view holds features (served online, used in training sets) or labels
/// (joined point-in-time into training sets only, never served).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViewKind {
    #[default]
    Features,
    Labels,
}

impl ViewKind {
    /// "feature view" or "label view", for messages.
    pub fn noun(self) -> &'static str {
        match self {
            Self::Features => "feature view",
            Self::Labels => "label view",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureView {
    pub name: String,
    #[serde(default)]
    pub kind: ViewKind,
    pub entities: Vec<String>,
    pub source: String,
    /// How far back a row may lie from the requested time; `None` means forever.
    pub ttl_seconds: Option<u64>,
    pub online: bool,
    pub schema: Vec<Field>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(skip)]
    pub file: String,
}

impl FeatureView {
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.schema.iter().find(|f| f.name == name)
    }

    /// The ttl queries apply, offline and online alike: `ttl_seconds`, except that one
    /// over [`MAX_TTL_SECONDS`] (refused by the definitions; only a registry written
    /// before that cap can hold one) limits nothing, rather than fail in PostgreSQL's
    /// date arithmetic.
    pub fn applied_ttl_seconds(&self) -> Option<u64> {
        self.ttl_seconds.filter(|&t| t <= MAX_TTL_SECONDS)
    }
}

/// A reference to one feature of one view: `view:feature`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FeatureRef {
    pub view: String,
    pub feature: String,
}

impl FeatureRef {
    /// Parses `view:feature`.
    pub fn parse(s: &str) -> Option<Self> {
        let (view, feature) = s.split_once(':')?;
        if view.is_empty() || feature.is_empty() || feature.contains(':') {
            return None;
        }
        Some(Self {
            view: view.to_string(),
            feature: feature.to_string(),
        })
    }
}

impl fmt::Display for FeatureRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.view, self.feature)
    }
}

/// A named, ordered list of features: what a model was trained on or is served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureService {
    pub name: String,
    pub features: Vec<FeatureRef>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(skip)]
    pub file: String,
}

/// Which plugin an on-demand view runs: by name, optionally pinned to a version or to
/// the exact bytes (sha256).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The exact plugin `apply` checked this view against (filled by apply, not by the
    /// user): every server runs these bytes, whatever the files on its disk say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_sha256: Option<String>,
}

/// A derived view: features computed by a transformation plugin from the features of
/// other views, at request time (online) and per batch (training sets), by the same
/// code. Its features are requested like any other (`churn_signals_fv:fee_per_watch_hour`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnDemandFeatureView {
    pub name: String,
    pub plugin: PluginRef,
    /// The feature views whose features feed the plugin; each plugin input is found by
    /// name in exactly one of them.
    pub sources: Vec<String>,
    /// The plugin's outputs, as this view exposes them.
    pub schema: Vec<Field>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(skip)]
    pub file: String,
}

impl OnDemandFeatureView {
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.schema.iter().find(|f| f.name == name)
    }
}

/// One column a plugin reads or writes, as its `describe()` declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginField {
    pub name: String,
    pub dtype: ValueType,
}

/// What a plugin says about itself (`describe()`), checked against the views that use it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub inputs: Vec<PluginField>,
    pub outputs: Vec<PluginField>,
}

/// Every definition of a repo, validated.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Definitions {
    pub entities: Vec<Entity>,
    pub data_sources: Vec<DataSource>,
    pub feature_views: Vec<FeatureView>,
    #[serde(default)]
    pub on_demand_feature_views: Vec<OnDemandFeatureView>,
    pub feature_services: Vec<FeatureService>,
}

/// One problem in the definitions, located by file and object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionError {
    pub file: String,
    /// E.g. "feature view `subs_profile_fv`"; empty for whole-file problems.
    pub object: String,
    pub message: String,
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.object.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.object, self.message)
        }
    }
}

/// All the problems found, so a user fixes them in one round rather than one per run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DefinitionErrors(pub Vec<DefinitionError>);

impl fmt::Display for DefinitionErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} problem{} in the feature definitions:",
            if n == 1 { "" } else { "s" }
        )?;
        for (i, e) in self.0.iter().enumerate() {
            if i + 1 < n {
                writeln!(f, "  - {e}")?;
            } else {
                write!(f, "  - {e}")?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The YAML layer: permissive about shape where Feast is (a feature service lists views or
// `view:feature` strings), strict about unknown keys.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileYaml {
    #[serde(default)]
    entities: Vec<EntityYaml>,
    #[serde(default)]
    data_sources: Vec<DataSourceYaml>,
    #[serde(default)]
    feature_views: Vec<FeatureViewYaml>,
    #[serde(default)]
    label_views: Vec<FeatureViewYaml>,
    #[serde(default)]
    on_demand_feature_views: Vec<OnDemandYaml>,
    #[serde(default)]
    feature_services: Vec<FeatureServiceYaml>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDemandYaml {
    name: String,
    #[serde(default)]
    plugin: Option<PluginYaml>,
    #[serde(default)]
    sources: Vec<String>,
    #[serde(default)]
    schema: Vec<FieldYaml>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

/// `plugin: churn_signals` or `plugin: {name: churn_signals, version: 0.1.0}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PluginYaml {
    Name(String),
    Full {
        name: String,
        #[serde(default)]
        version: Option<String>,
        #[serde(default)]
        sha256: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntityYaml {
    name: String,
    #[serde(default)]
    join_keys: Option<Vec<String>>,
    #[serde(default)]
    value_type: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataSourceYaml {
    name: String,
    #[serde(default, rename = "type")]
    source_type: Option<String>,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    table: Option<String>,
    #[serde(default)]
    timestamp_field: Option<String>,
    #[serde(default)]
    created_timestamp_column: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeatureViewYaml {
    name: String,
    #[serde(default)]
    entities: Vec<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    ttl: Option<serde_yaml::Value>,
    #[serde(default)]
    online: Option<bool>,
    #[serde(default)]
    schema: Vec<FieldYaml>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldYaml {
    name: String,
    dtype: String,
    #[serde(default)]
    description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeatureServiceYaml {
    name: String,
    #[serde(default)]
    features: Vec<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

/// One definition file's name (as shown in messages) and text.
pub struct SourceFile<'a> {
    pub name: &'a str,
    pub text: &'a str,
}

impl Definitions {
    /// Parses and validates a repo's definition files. Returns every problem found.
    pub fn parse(files: &[SourceFile<'_>]) -> Result<Self, DefinitionErrors> {
        let mut errors = Vec::new();
        let mut defs = Definitions::default();
        let mut services = Vec::new();
        for file in files {
            let parsed: FileYaml = if file.text.trim().is_empty() {
                FileYaml::default()
            } else {
                match serde_yaml::from_str(file.text) {
                    Ok(parsed) => parsed,
                    Err(e) => {
                        errors.push(DefinitionError {
                            file: file.name.to_string(),
                            object: String::new(),
                            message: yaml_error_message(&e),
                        });
                        continue;
                    }
                }
            };
            let mut err = |object: String, message: String| {
                errors.push(DefinitionError {
                    file: file.name.to_string(),
                    object,
                    message,
                })
            };
            for e in parsed.entities {
                let object = format!("entity `{}`", e.name);
                let join_keys = e.join_keys.unwrap_or_else(|| vec![e.name.clone()]);
                if join_keys.len() != 1 {
                    err(
                        object.clone(),
                        format!(
                            "has {} join keys; skewless supports exactly one join key per entity",
                            join_keys.len()
                        ),
                    );
                }
                let value_type = match e.value_type.as_deref() {
                    None => ValueType::String,
                    Some(s) => ValueType::parse(s).unwrap_or_else(|| {
                        err(
                            object.clone(),
                            format!("unknown value_type `{s}` (expected one of {VALUE_TYPES})"),
                        );
                        ValueType::String
                    }),
                };
                if !matches!(
                    value_type,
                    ValueType::String | ValueType::Int64 | ValueType::Int32
                ) {
                    err(
                        object.clone(),
                        format!(
                            "value_type {value_type} cannot be a join key (expected String, Int64 or Int32)"
                        ),
                    );
                }
                defs.entities.push(Entity {
                    name: e.name,
                    join_keys,
                    value_type,
                    description: e.description,
                    tags: e.tags,
                    file: file.name.to_string(),
                });
            }
            for s in parsed.data_sources {
                let object = format!("data source `{}`", s.name);
                if let Some(t) = s.source_type.as_deref()
                    && t != "postgres"
                {
                    err(
                        object.clone(),
                        format!("type `{t}` is not supported (expected `postgres`)"),
                    );
                }
                let query = match (s.query, s.table) {
                    (Some(q), None) => q.trim().trim_end_matches(';').trim().to_string(),
                    (None, Some(t)) => format!("SELECT * FROM {t}"),
                    (Some(_), Some(_)) => {
                        err(
                            object.clone(),
                            "sets both `query` and `table`; keep one".into(),
                        );
                        String::new()
                    }
                    (None, None) => {
                        err(object.clone(), "needs a `query` (or a `table`)".into());
                        String::new()
                    }
                };
                let timestamp_field = s.timestamp_field.unwrap_or_else(|| {
                    err(
                        object.clone(),
                        "needs a `timestamp_field` (the column holding each row's event time)"
                            .into(),
                    );
                    String::new()
                });
                defs.data_sources.push(DataSource {
                    name: s.name,
                    query,
                    timestamp_field,
                    created_timestamp_column: s.created_timestamp_column,
                    description: s.description,
                    tags: s.tags,
                    file: file.name.to_string(),
                });
            }
            let views = parsed
                .feature_views
                .into_iter()
                .map(|v| (ViewKind::Features, v))
                .chain(
                    parsed
                        .label_views
                        .into_iter()
                        .map(|v| (ViewKind::Labels, v)),
                );
            for (kind, v) in views {
                let object = format!("{} `{}`", kind.noun(), v.name);
                let ttl_seconds = match v.ttl.as_ref().map(parse_ttl).transpose() {
                    Ok(ttl) => ttl.flatten(),
                    Err(msg) => {
                        err(object.clone(), msg);
                        None
                    }
                };
                let source = v.source.unwrap_or_else(|| {
                    err(object.clone(), "needs a `source`".into());
                    String::new()
                });
                let schema = parse_schema(v.schema, |m| err(object.clone(), m));
                let online = match (kind, v.online) {
                    (ViewKind::Labels, Some(true)) => {
                        err(
                            object.clone(),
                            "labels are never served online; remove `online: true`".into(),
                        );
                        false
                    }
                    (ViewKind::Labels, _) => false,
                    (ViewKind::Features, online) => online.unwrap_or(true),
                };
                defs.feature_views.push(FeatureView {
                    name: v.name,
                    kind,
                    entities: v.entities,
                    source,
                    ttl_seconds,
                    online,
                    schema,
                    description: v.description,
                    tags: v.tags,
                    file: file.name.to_string(),
                });
            }
            for v in parsed.on_demand_feature_views {
                let object = format!("on-demand feature view `{}`", v.name);
                let plugin = match v.plugin {
                    Some(PluginYaml::Name(name)) => PluginRef {
                        name,
                        version: None,
                        sha256: None,
                        resolved_sha256: None,
                    },
                    Some(PluginYaml::Full {
                        name,
                        version,
                        sha256,
                    }) => PluginRef {
                        name,
                        version,
                        sha256: sha256.map(|s| s.to_ascii_lowercase()),
                        resolved_sha256: None,
                    },
                    None => {
                        err(
                            object.clone(),
                            "needs a `plugin` (the transformation plugin's name)".into(),
                        );
                        PluginRef {
                            name: String::new(),
                            version: None,
                            sha256: None,
                            resolved_sha256: None,
                        }
                    }
                };
                if v.sources.is_empty() {
                    err(
                        object.clone(),
                        "needs `sources`: the feature views whose features feed the plugin".into(),
                    );
                }
                let schema = parse_schema(v.schema, |m| err(object.clone(), m));
                defs.on_demand_feature_views.push(OnDemandFeatureView {
                    name: v.name,
                    plugin,
                    sources: v.sources,
                    schema,
                    description: v.description,
                    tags: v.tags,
                    file: file.name.to_string(),
                });
            }
            services.extend(parsed.feature_services.into_iter().map(|s| (file.name, s)));
        }
        // Feature services are resolved last: a `view` entry expands to all its features.
        for (file, s) in services {
            let mut features = Vec::new();
            for entry in &s.features {
                match FeatureRef::parse(entry) {
                    Some(r) => features.push(r),
                    None => match defs
                        .feature_views
                        .iter()
                        .map(|v| (&v.name, &v.schema))
                        .chain(
                            defs.on_demand_feature_views
                                .iter()
                                .map(|v| (&v.name, &v.schema)),
                        )
                        .find(|(name, _)| *name == entry)
                    {
                        Some((name, schema)) => features.extend(schema.iter().map(|f| FeatureRef {
                            view: name.clone(),
                            feature: f.name.clone(),
                        })),
                        // Left for `check` to report as an unknown view.
                        None => features.push(FeatureRef {
                            view: entry.clone(),
                            feature: String::new(),
                        }),
                    },
                }
            }
            defs.feature_services.push(FeatureService {
                name: s.name,
                features,
                description: s.description,
                tags: s.tags,
                file: file.to_string(),
            });
        }
        errors.extend(defs.check());
        if errors.is_empty() {
            Ok(defs)
        } else {
            Err(DefinitionErrors(errors))
        }
    }

    /// Cross-object checks: unique names, known references, well-formed identifiers.
    fn check(&self) -> Vec<DefinitionError> {
        let mut errors = Vec::new();
        let mut err = |file: &str, object: String, message: String| {
            errors.push(DefinitionError {
                file: file.to_string(),
                object,
                message,
            })
        };
        // Feature and label views share one namespace.
        let mut seen: HashMap<(&str, &str), &str> = HashMap::new();
        let names = self
            .entities
            .iter()
            .map(|e| ("entity", e.name.as_str(), e.file.as_str()))
            .chain(
                self.data_sources
                    .iter()
                    .map(|s| ("data source", s.name.as_str(), s.file.as_str())),
            )
            .chain(
                self.feature_views
                    .iter()
                    .map(|v| (v.kind.noun(), v.name.as_str(), v.file.as_str())),
            )
            .chain(
                self.on_demand_feature_views
                    .iter()
                    .map(|v| ("on-demand feature view", v.name.as_str(), v.file.as_str())),
            )
            .chain(
                self.feature_services
                    .iter()
                    .map(|s| ("feature service", s.name.as_str(), s.file.as_str())),
            );
        for (kind, name, file) in names {
            if !crate::config::is_identifier(name) {
                err(
                    file,
                    format!("{kind} `{name}`"),
                    "is not a valid name (expected letters, digits and underscores, starting with a letter, at most 63 characters)".into(),
                );
            }
            let namespace = if kind.ends_with("view") { "view" } else { kind };
            if let Some(first) = seen.insert((namespace, name), file) {
                err(
                    file,
                    format!("{kind} `{name}`"),
                    format!("defined twice (first in {first}); names must be unique"),
                );
            }
        }
        for e in &self.entities {
            for key in &e.join_keys {
                if !crate::config::is_identifier(key) {
                    err(
                        &e.file,
                        format!("entity `{}`", e.name),
                        format!("join key `{key}` is not a valid column name"),
                    );
                }
            }
        }
        for s in &self.data_sources {
            for col in std::iter::once(&s.timestamp_field).chain(&s.created_timestamp_column) {
                if !col.is_empty() && !crate::config::is_identifier(col) {
                    err(
                        &s.file,
                        format!("data source `{}`", s.name),
                        format!("`{col}` is not a valid column name"),
                    );
                }
            }
        }
        for v in &self.feature_views {
            let object = format!("{} `{}`", v.kind.noun(), v.name);
            if v.entities.len() != 1 {
                err(
                    &v.file,
                    object.clone(),
                    format!(
                        "has {} entities; skewless views have exactly one entity",
                        v.entities.len()
                    ),
                );
            }
            for e in &v.entities {
                if !self.entities.iter().any(|x| &x.name == e) {
                    err(
                        &v.file,
                        object.clone(),
                        format!(
                            "references unknown entity `{e}` (known: {})",
                            list(self.entities.iter().map(|x| &x.name))
                        ),
                    );
                }
            }
            if !v.source.is_empty() && !self.data_sources.iter().any(|s| s.name == v.source) {
                err(
                    &v.file,
                    object.clone(),
                    format!(
                        "references unknown data source `{}` (known: {})",
                        v.source,
                        list(self.data_sources.iter().map(|s| &s.name))
                    ),
                );
            }
            for problem in field_name_problems(&v.schema) {
                err(&v.file, object.clone(), problem);
            }
            for f in &v.schema {
                let reserved = ["event_ts", "created_ts", "event_timestamp"];
                if reserved.contains(&f.name.as_str())
                    || v.entities.iter().any(|e| {
                        self.entities
                            .iter()
                            .any(|x| &x.name == e && x.join_keys.contains(&f.name))
                    })
                {
                    err(
                        &v.file,
                        object.clone(),
                        format!(
                            "field `{}` collides with a reserved column (join keys, {})",
                            f.name,
                            reserved.join(", ")
                        ),
                    );
                }
            }
        }
        for v in &self.on_demand_feature_views {
            let object = format!("on-demand feature view `{}`", v.name);
            if !v.plugin.name.is_empty() && !crate::config::is_identifier(&v.plugin.name) {
                err(
                    &v.file,
                    object.clone(),
                    format!("plugin name `{}` is not a valid name", v.plugin.name),
                );
            }
            if let Some(sha) = &v.plugin.sha256
                && (sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()))
            {
                err(
                    &v.file,
                    object.clone(),
                    format!("plugin sha256 `{sha}` is not 64 hexadecimal digits"),
                );
            }
            let mut entities = BTreeSet::new();
            for source in &v.sources {
                match self.feature_views.iter().find(|x| &x.name == source) {
                    None => err(
                        &v.file,
                        object.clone(),
                        format!(
                            "source `{source}` is not a feature view (known: {})",
                            list(
                                self.feature_views
                                    .iter()
                                    .filter(|x| x.kind == ViewKind::Features)
                                    .map(|x| &x.name)
                            )
                        ),
                    ),
                    Some(x) if x.kind == ViewKind::Labels => err(
                        &v.file,
                        object.clone(),
                        format!("source `{source}` is a label view; derived features cannot read labels"),
                    ),
                    Some(x) => {
                        entities.extend(x.entities.iter().cloned());
                    }
                }
            }
            if entities.len() > 1 {
                err(
                    &v.file,
                    object.clone(),
                    format!(
                        "sources have different entities ({}); a derived view reads one entity",
                        entities.into_iter().collect::<Vec<_>>().join(", ")
                    ),
                );
            }
            for problem in field_name_problems(&v.schema) {
                err(&v.file, object.clone(), problem);
            }
        }
        for s in &self.feature_services {
            let object = format!("feature service `{}`", s.name);
            let mut seen = BTreeSet::new();
            for r in &s.features {
                if let Some(v) = self.on_demand_feature_views.iter().find(|v| v.name == r.view) {
                    if v.field(&r.feature).is_none() {
                        err(
                            &s.file,
                            object.clone(),
                            format!(
                                "references unknown feature `{r}` (`{}` has: {})",
                                v.name,
                                list(v.schema.iter().map(|f| &f.name))
                            ),
                        );
                    } else if !seen.insert(r) {
                        err(&s.file, object.clone(), format!("lists `{r}` twice"));
                    }
                    continue;
                }
                match self.feature_views.iter().find(|v| v.name == r.view) {
                    None => err(
                        &s.file,
                        object.clone(),
                        format!(
                            "references unknown feature view `{}` (known: {})",
                            r.view,
                            list(
                                self.feature_views
                                    .iter()
                                    .map(|v| &v.name)
                                    .chain(self.on_demand_feature_views.iter().map(|v| &v.name))
                            )
                        ),
                    ),
                    Some(v) if v.kind == ViewKind::Labels => err(
                        &s.file,
                        object.clone(),
                        format!(
                            "lists `{r}` from a label view; labels are requested with --label, not served"
                        ),
                    ),
                    Some(v) if v.field(&r.feature).is_none() => err(
                        &s.file,
                        object.clone(),
                        format!(
                            "references unknown feature `{r}` (`{}` has: {})",
                            v.name,
                            list(v.schema.iter().map(|f| &f.name))
                        ),
                    ),
                    Some(_) => {
                        if !seen.insert(r) {
                            err(&s.file, object.clone(), format!("lists `{r}` twice"));
                        }
                    }
                }
            }
        }
        errors
    }

    pub fn entity(&self, name: &str) -> Option<&Entity> {
        self.entities.iter().find(|e| e.name == name)
    }

    pub fn data_source(&self, name: &str) -> Option<&DataSource> {
        self.data_sources.iter().find(|s| s.name == name)
    }

    pub fn feature_view(&self, name: &str) -> Option<&FeatureView> {
        self.feature_views.iter().find(|v| v.name == name)
    }

    pub fn on_demand_view(&self, name: &str) -> Option<&OnDemandFeatureView> {
        self.on_demand_feature_views.iter().find(|v| v.name == name)
    }

    /// The entity a view's features are keyed by: its own, or (for an on-demand view)
    /// its sources'.
    pub fn entity_of_view(&self, name: &str) -> Option<&Entity> {
        let view = match self.feature_view(name) {
            Some(v) => v,
            None => self.feature_view(self.on_demand_view(name)?.sources.first()?)?,
        };
        self.entity(view.entities.first()?)
    }

    /// For each input of `info`, the (source view, field) that feeds it; or every
    /// mismatch between the plugin's declaration and the view, so `apply` can refuse
    /// with all of them at once.
    pub fn check_plugin(
        &self,
        view: &OnDemandFeatureView,
        info: &PluginInfo,
    ) -> Result<Vec<(String, Field)>, Vec<String>> {
        let mut problems = Vec::new();
        if info.name != view.plugin.name {
            problems.push(format!(
                "the plugin calls itself `{}`, not `{}`",
                info.name, view.plugin.name
            ));
        }
        if let Some(version) = &view.plugin.version
            && *version != info.version
        {
            problems.push(format!(
                "pins version {version}, but the plugin is version {}",
                info.version
            ));
        }
        let mut inputs = Vec::new();
        for input in &info.inputs {
            let found: Vec<(&FeatureView, &Field)> = view
                .sources
                .iter()
                .filter_map(|s| self.feature_view(s))
                .filter_map(|v| v.field(&input.name).map(|f| (v, f)))
                .collect();
            match found.as_slice() {
                [] => problems.push(format!(
                    "plugin input `{}` ({}) is in none of the sources ({})",
                    input.name,
                    input.dtype,
                    view.sources.join(", ")
                )),
                [(v, f)] if f.dtype != input.dtype => problems.push(format!(
                    "plugin input `{}` is {}, but `{}:{}` is {}",
                    input.name, input.dtype, v.name, f.name, f.dtype
                )),
                [(v, f)] => inputs.push((v.name.clone(), (*f).clone())),
                many => problems.push(format!(
                    "plugin input `{}` is in several sources ({}); keep one",
                    input.name,
                    many.iter()
                        .map(|(v, _)| v.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        }
        for field in &view.schema {
            match info.outputs.iter().find(|o| o.name == field.name) {
                None => problems.push(format!(
                    "schema field `{}` is not a plugin output (it has: {})",
                    field.name,
                    info.outputs
                        .iter()
                        .map(|o| format!("{} {}", o.name, o.dtype))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                Some(o) if o.dtype != field.dtype => problems.push(format!(
                    "schema field `{}` is declared {}, but the plugin outputs {}",
                    field.name, field.dtype, o.dtype
                )),
                Some(_) => {}
            }
        }
        if problems.is_empty() {
            Ok(inputs)
        } else {
            Err(problems)
        }
    }

    pub fn feature_service(&self, name: &str) -> Option<&FeatureService> {
        self.feature_services.iter().find(|s| s.name == name)
    }

    /// The entity of a validated view.
    pub fn view_entity(&self, view: &FeatureView) -> &Entity {
        self.entity(&view.entities[0])
            .expect("validated definitions reference known entities")
    }

    /// The source of a validated view.
    pub fn view_source(&self, view: &FeatureView) -> &DataSource {
        self.data_source(&view.source)
            .expect("validated definitions reference known sources")
    }
}

/// A feature picked for a training set or an online request, with the column name it
/// gets in the output.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectedFeature {
    pub view: String,
    pub field: Field,
    /// `feature`, or `view__feature` with full feature names (Feast's convention).
    pub output_name: String,
}

/// Why a feature list cannot be served. Messages list what exists, so a client can fix
/// its request without reading the repo.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("`{0}` is not a feature reference; write it as view:feature")]
    Malformed(String),
    #[error("unknown feature view `{view}` (known: {known})")]
    UnknownView { view: String, known: String },
    #[error("unknown feature `{feature}` in view `{view}` (it has: {known})")]
    UnknownFeature {
        view: String,
        feature: String,
        known: String,
    },
    #[error("unknown feature service `{name}` (known: {known})")]
    UnknownService { name: String, known: String },
    #[error("unknown label `{label}` (label views offer: {known})")]
    UnknownLabel { label: String, known: String },
    #[error("`{0}` is a label; request it with `label`, not as a feature")]
    LabelAsFeature(String),
    #[error(
        "feature name `{name}` comes from both `{first}` and `{second}`; ask for full feature names"
    )]
    Ambiguous {
        name: String,
        first: String,
        second: String,
    },
    #[error("`{0}` is requested twice")]
    Duplicate(String),
    #[error("no features requested")]
    Empty,
}

impl Definitions {
    /// Resolves `view:feature` references, in order, checking each exists.
    pub fn select_features(
        &self,
        refs: &[FeatureRef],
        full_names: bool,
    ) -> Result<Vec<SelectedFeature>, ResolveError> {
        if refs.is_empty() {
            return Err(ResolveError::Empty);
        }
        let mut out: Vec<SelectedFeature> = Vec::with_capacity(refs.len());
        for r in refs {
            let (view_name, schema) = match self.feature_views.iter().find(|v| v.name == r.view) {
                Some(view) if view.kind == ViewKind::Labels => {
                    return Err(ResolveError::LabelAsFeature(r.to_string()));
                }
                Some(view) => (&view.name, &view.schema),
                None => match self.on_demand_view(&r.view) {
                    Some(view) => (&view.name, &view.schema),
                    None => {
                        return Err(ResolveError::UnknownView {
                            view: r.view.clone(),
                            known: list(
                                self.feature_views
                                    .iter()
                                    .filter(|v| v.kind == ViewKind::Features)
                                    .map(|v| &v.name)
                                    .chain(self.on_demand_feature_views.iter().map(|v| &v.name)),
                            ),
                        });
                    }
                },
            };
            let field = schema.iter().find(|f| f.name == r.feature).ok_or_else(|| {
                ResolveError::UnknownFeature {
                    view: view_name.clone(),
                    feature: r.feature.clone(),
                    known: list(schema.iter().map(|f| &f.name)),
                }
            })?;
            let output_name = if full_names {
                format!("{}__{}", view_name, field.name)
            } else {
                field.name.clone()
            };
            if let Some(other) = out.iter().find(|s| s.output_name == output_name) {
                return Err(if &other.view == view_name {
                    ResolveError::Duplicate(r.to_string())
                } else {
                    ResolveError::Ambiguous {
                        name: output_name,
                        first: other.view.clone(),
                        second: view_name.clone(),
                    }
                });
            }
            out.push(SelectedFeature {
                view: view_name.clone(),
                field: field.clone(),
                output_name,
            });
        }
        Ok(out)
    }

    /// Parses `view:feature` strings, then resolves them.
    pub fn select_feature_strings(
        &self,
        refs: &[String],
        full_names: bool,
    ) -> Result<Vec<SelectedFeature>, ResolveError> {
        let parsed = refs
            .iter()
            .map(|s| FeatureRef::parse(s.trim()).ok_or_else(|| ResolveError::Malformed(s.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        self.select_features(&parsed, full_names)
    }

    /// The features of a feature service.
    pub fn select_service(
        &self,
        name: &str,
        full_names: bool,
    ) -> Result<Vec<SelectedFeature>, ResolveError> {
        let service = self
            .feature_service(name)
            .ok_or_else(|| ResolveError::UnknownService {
                name: name.to_string(),
                known: list(self.feature_services.iter().map(|s| &s.name)),
            })?;
        self.select_features(&service.features, full_names)
    }

    /// A label: `field` or `label_view:field` of a label view.
    pub fn select_label(
        &self,
        label: &str,
        full_names: bool,
    ) -> Result<SelectedFeature, ResolveError> {
        let labels = || {
            self.feature_views
                .iter()
                .filter(|v| v.kind == ViewKind::Labels)
        };
        let unknown = || ResolveError::UnknownLabel {
            label: label.to_string(),
            known: {
                let names: Vec<String> = labels()
                    .flat_map(|v| {
                        v.schema
                            .iter()
                            .map(move |f| format!("{}:{}", v.name, f.name))
                    })
                    .collect();
                list(names.iter())
            },
        };
        let (view, field) = match FeatureRef::parse(label) {
            Some(r) => {
                let view = labels().find(|v| v.name == r.view).ok_or_else(unknown)?;
                (view, view.field(&r.feature).ok_or_else(unknown)?)
            }
            None => labels()
                .find_map(|v| v.field(label).map(|f| (v, f)))
                .ok_or_else(unknown)?,
        };
        Ok(SelectedFeature {
            view: view.name.clone(),
            field: field.clone(),
            output_name: if full_names {
                format!("{}__{}", view.name, field.name)
            } else {
                field.name.clone()
            },
        })
    }
}

/// A view's fields with their dtypes parsed; each problem goes to `err`.
fn parse_schema(fields: Vec<FieldYaml>, mut err: impl FnMut(String)) -> Vec<Field> {
    if fields.is_empty() {
        err("has an empty schema".into());
    }
    let mut schema = Vec::with_capacity(fields.len());
    for f in fields {
        match ValueType::parse(&f.dtype) {
            Some(dtype) => schema.push(Field {
                name: f.name,
                dtype,
                description: f.description,
            }),
            None => err(format!(
                "field `{}`: unknown dtype `{}` (expected one of {VALUE_TYPES})",
                f.name, f.dtype
            )),
        }
    }
    schema
}

/// The longest ttl a view may have: 1000 years (`1000y`, 365.25-day years, as humantime
/// reads them). A longer one limits nothing a feature store holds, and would break the
/// arithmetic that applies it — PostgreSQL's timestamps end at 4713 BC (`event_timestamp
/// - ttl` fails), its intervals at ~292,000 years, the online check's microseconds at
/// i64 — so it is refused where it is written, with the way to say "no limit".
pub const MAX_TTL_SECONDS: u64 = 1000 * 31_557_600;

/// `ttl` as Feast writes it: a duration string (`90d`, `36h`, `1w 2d`), a number of
/// seconds, or 0 / null for "no limit"; at most [`MAX_TTL_SECONDS`].
fn parse_ttl(value: &serde_yaml::Value) -> Result<Option<u64>, String> {
    let seconds = match value {
        serde_yaml::Value::Null => return Ok(None),
        serde_yaml::Value::Number(n) => n.as_u64().ok_or_else(|| {
            format!("ttl `{n:?}` must be a whole, non-negative number of seconds")
        })?,
        serde_yaml::Value::String(s) => humantime::parse_duration(s)
            .map_err(|e| {
                format!("ttl `{s}` is not a duration ({e}); write it like `90d`, `36h` or `3600s`")
            })?
            .as_secs(),
        other => {
            return Err(format!(
                "ttl must be a duration like `90d` or a number of seconds, not {other:?}"
            ));
        }
    };
    if seconds > MAX_TTL_SECONDS {
        let written = match value {
            serde_yaml::Value::String(s) => s.clone(),
            _ => seconds.to_string(),
        };
        return Err(format!(
            "ttl `{written}` is longer than 1000 years ({MAX_TTL_SECONDS} seconds); for no limit, leave ttl out or write 0"
        ));
    }
    Ok((seconds > 0).then_some(seconds))
}

/// serde_yaml's messages carry the path and position; we keep them and say "line".
fn yaml_error_message(e: &serde_yaml::Error) -> String {
    let msg = e.to_string();
    match e.location() {
        Some(loc) => {
            let position = format!(" at line {} column {}", loc.line(), loc.column());
            let text = msg.replacen(&position, "", 1);
            format!("line {}, column {}: {text}", loc.line(), loc.column())
        }
        None => msg,
    }
}

fn list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// What is wrong with a schema's field names (each must be a column name, and unique):
/// the same rules for stored and derived views, since both become columns.
fn field_name_problems(schema: &[Field]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut problems = Vec::new();
    for f in schema {
        if !crate::config::is_identifier(&f.name) {
            problems.push(format!("field `{}` is not a valid column name", f.name));
        }
        if !seen.insert(f.name.as_str()) {
            problems.push(format!("field `{}` is declared twice", f.name));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Definitions, DefinitionErrors> {
        Definitions::parse(&[SourceFile {
            name: "defs.yaml",
            text,
        }])
    }

    const BASE: &str = r#"
entities:
  - {name: user, join_keys: [user_id], value_type: String}
data_sources:
  - {name: src, query: "SELECT user_id, as_of, a FROM t", timestamp_field: as_of}
feature_views:
  - name: fv
    entities: [user]
    source: src
    ttl: 90d
    schema: [{name: a, dtype: Int64}, {name: b, dtype: Float32}]
feature_services:
  - {name: svc, features: [fv]}
  - {name: one, features: ["fv:b"]}
"#;

    #[test]
    fn parses_and_expands_services() {
        let defs = parse(BASE).unwrap();
        assert_eq!(defs.feature_views[0].ttl_seconds, Some(90 * 86400));
        assert!(defs.feature_views[0].online);
        let svc = defs.feature_service("svc").unwrap();
        assert_eq!(svc.features.len(), 2);
        assert_eq!(
            defs.feature_service("one").unwrap().features[0].feature,
            "b"
        );
    }

    #[test]
    fn ttl_forms() {
        for (yaml, expected) in [
            ("0", None),
            ("~", None),
            ("3600", Some(3600)),
            ("\"36h\"", Some(36 * 3600)),
            ("\"1w 1d\"", Some(8 * 86400)),
            ("\"1000y\"", Some(MAX_TTL_SECONDS)),
            ("31557600000", Some(MAX_TTL_SECONDS)),
        ] {
            let text = BASE.replace("ttl: 90d", &format!("ttl: {yaml}"));
            assert_eq!(
                parse(&text).unwrap().feature_views[0].ttl_seconds,
                expected,
                "{yaml}"
            );
        }
        let err = parse(&BASE.replace("ttl: 90d", "ttl: soon")).unwrap_err();
        assert!(
            err.to_string().contains("ttl `soon` is not a duration"),
            "{err}"
        );
        // Past 1000 years, refused: PostgreSQL could not subtract it from a timestamp.
        for (yaml, written) in [
            ("\"1001y\"", "1001y"),
            ("31557600001", "31557600001"),
            ("18446744073709551615", "18446744073709551615"),
        ] {
            let err = parse(&BASE.replace("ttl: 90d", &format!("ttl: {yaml}"))).unwrap_err();
            assert!(
                err.to_string().contains(&format!(
                    "ttl `{written}` is longer than 1000 years (31557600000 seconds); for no limit, leave ttl out or write 0"
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn roundtrips_through_json() {
        let defs = parse(BASE).unwrap();
        let json = serde_json::to_string(&defs).unwrap();
        let mut back: Definitions = serde_json::from_str(&json).unwrap();
        for v in &mut back.feature_views {
            v.file = "defs.yaml".into();
        }
        for e in &mut back.entities {
            e.file = "defs.yaml".into();
        }
        for s in &mut back.data_sources {
            s.file = "defs.yaml".into();
        }
        for s in &mut back.feature_services {
            s.file = "defs.yaml".into();
        }
        assert_eq!(back, defs);
    }

    #[test]
    fn feature_ref_parsing() {
        assert_eq!(
            FeatureRef::parse("fv:x"),
            Some(FeatureRef {
                view: "fv".into(),
                feature: "x".into()
            })
        );
        assert_eq!(FeatureRef::parse("fv"), None);
        assert_eq!(FeatureRef::parse(":x"), None);
        assert_eq!(FeatureRef::parse("a:b:c"), None);
    }
}
