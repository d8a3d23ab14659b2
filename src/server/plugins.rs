//! Plugin lifecycle over HTTP: upload, list, activate (roll forward or back), delete.
//! Validation runs in the sandbox (the same loader as `apply`); storage and activation
//! are the registry's (one transaction, NOTIFY to every server).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::features::parse_json;
use super::{ApiError, SharedState};
use crate::definitions::PluginField;
use crate::registry::{PluginEntry, PluginRegistryError, StoredPlugin, Upload, VersionSelector};

/// What an upload or an activation answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PluginAnswer {
    name: String,
    version: String,
    sha256: String,
    size: usize,
    #[schema(value_type = Vec<Object>)]
    inputs: Vec<PluginField>,
    #[schema(value_type = Vec<Object>)]
    outputs: Vec<PluginField>,
    /// The on-demand views now running this version.
    views_switched: Vec<String>,
}

impl From<PluginRegistryError> for ApiError {
    fn from(e: PluginRegistryError) -> Self {
        let (status, code) = match &e {
            PluginRegistryError::Incompatible { .. } => (StatusCode::CONFLICT, "PLUGIN_MISMATCH"),
            PluginRegistryError::InUse { .. } => (StatusCode::CONFLICT, "PLUGIN_IN_USE"),
            PluginRegistryError::UnknownPlugin { .. } => (StatusCode::NOT_FOUND, "UNKNOWN_PLUGIN"),
            PluginRegistryError::UnknownVersion { .. } => {
                (StatusCode::NOT_FOUND, "UNKNOWN_PLUGIN_VERSION")
            }
            PluginRegistryError::Registry(crate::registry::RegistryError::Database(e)) => {
                if crate::offline::is_unavailable(e) {
                    (StatusCode::SERVICE_UNAVAILABLE, "DATABASE_UNAVAILABLE")
                } else {
                    (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL")
                }
            }
            PluginRegistryError::Registry(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        };
        Self::new(status, code, e.to_string())
    }
}

/// Uploads a plugin (the component's bytes as the body). It is validated in the sandbox,
/// stored with its sha256, and made the active version of its name: every on-demand view
/// using it without a pin switches to it, on every server, within a second.
#[utoipa::path(post, path = "/plugins", request_body(content = Vec<u8>, content_type = "application/wasm"),
    responses(
        (status = 201, body = PluginAnswer, description = "Stored and activated"),
        (status = 200, body = PluginAnswer, description = "The same bytes were already stored: nothing changed"),
        (status = 400, body = super::ErrorBody, description = "Not a valid plugin (the reason is in the message)"),
        (status = 401, body = super::ErrorBody),
        (status = 409, body = super::ErrorBody, description = "describe() does not match a view using the plugin")))]
pub async fn upload(
    State(state): State<SharedState>,
    body: Bytes,
) -> Result<(StatusCode, Json<PluginAnswer>), ApiError> {
    let plugin = state
        .registry
        .plugin_store()
        .load_bytes("uploaded plugin", &body)
        .await
        .map_err(|e| ApiError::bad_request("INVALID_PLUGIN", e.to_string()))?;
    let stored = StoredPlugin {
        sha256: plugin.sha256().to_string(),
        info: plugin.info().clone(),
        bytes: body.to_vec(),
    };
    let (outcome, views_switched) = state.registry.registry().upload_plugin(&stored).await?;
    tracing::info!(name = %stored.info.name, version = %stored.info.version, sha256 = %stored.sha256, ?outcome, "plugin uploaded");
    // NOTIFY tells every server; this one need not wait for it.
    let _ = state.registry.reload().await;
    let status = match outcome {
        Upload::Created => StatusCode::CREATED,
        Upload::Unchanged => StatusCode::OK,
    };
    Ok((
        status,
        Json(PluginAnswer {
            name: stored.info.name.clone(),
            version: stored.info.version.clone(),
            sha256: stored.sha256.clone(),
            size: stored.bytes.len(),
            inputs: stored.info.inputs.clone(),
            outputs: stored.info.outputs.clone(),
            views_switched,
        }),
    ))
}

/// Every plugin: versions (newest first), the active one, the views using it.
#[utoipa::path(get, path = "/plugins", responses((status = 200, description = "The plugins")))]
pub async fn list(State(state): State<SharedState>) -> Result<Json<serde_json::Value>, ApiError> {
    let plugins = state.registry.registry().list_plugins().await?;
    Ok(Json(serde_json::json!({
        "plugins": plugins,
        "last_error": state.registry.last_error().or_else(|| state.registry.change_error()),
    })))
}

/// One plugin: its versions, the active one, the views using it.
#[utoipa::path(get, path = "/plugins/{name}",
    params(("name" = String, Path, description = "The plugin's name")),
    responses((status = 200, description = "The plugin"), (status = 404, body = super::ErrorBody)))]
pub async fn get(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> Result<Json<PluginEntry>, ApiError> {
    let plugins = state.registry.registry().list_plugins().await?;
    let known = plugins
        .iter()
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    plugins
        .into_iter()
        .find(|p| p.name == name)
        .map(Json)
        .ok_or_else(|| {
            PluginRegistryError::UnknownPlugin {
                name,
                known: if known.is_empty() { "none".into() } else { known },
            }
            .into()
        })
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivateBody {
    version: Option<String>,
    sha256: Option<String>,
}

/// Makes a stored version active (roll back or forward): the views using the plugin
/// without a pin switch to it, atomically, on every server.
#[utoipa::path(post, path = "/plugins/{name}/activate", request_body = ActivateBody,
    params(("name" = String, Path, description = "The plugin's name")),
    responses((status = 200, body = PluginAnswer), (status = 404, body = super::ErrorBody),
        (status = 409, body = super::ErrorBody)))]
pub async fn activate(
    State(state): State<SharedState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<PluginAnswer>, ApiError> {
    let body: ActivateBody = parse_json(&body)?;
    let selector = match (body.version, body.sha256) {
        (Some(v), None) => VersionSelector::Version(v),
        (None, Some(s)) => VersionSelector::Sha256(s.to_ascii_lowercase()),
        _ => {
            return Err(ApiError::bad_request(
                "INVALID_REQUEST",
                "give exactly one of version or sha256",
            ));
        }
    };
    let (version, views_switched) = state
        .registry
        .registry()
        .activate_plugin(&name, &selector)
        .await?;
    let _ = state.registry.reload().await;
    Ok(Json(PluginAnswer {
        name: version.name,
        version: version.version,
        sha256: version.sha256,
        size: version.size as usize,
        inputs: version.info.inputs,
        outputs: version.info.outputs,
        views_switched,
    }))
}

/// Deletes a stored version; refused (409) while a view runs it.
#[utoipa::path(delete, path = "/plugins/{name}/{version}",
    params(("name" = String, Path, description = "The plugin's name"),
        ("version" = String, Path, description = "A version or a sha256")),
    responses((status = 204), (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
pub async fn delete(
    State(state): State<SharedState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state
        .registry
        .registry()
        .delete_plugin(&name, &VersionSelector::parse(&version))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
