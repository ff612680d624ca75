//! Install-level routes (API.md §7): projects and keys with the admin token, and the test
//! clock with a test secret key.

use crate::auth::{environment_now, Admin, TestSecretKey};
use crate::bootstrap::{generate_admin_token, generate_key, hash_secret};
use crate::error::{store_error, ApiError};
use crate::extract::{ApiJson, ApiPath};
use crate::ids::{new_id, PROJECT_PREFIX};
use crate::AppState;
use axum::extract::State;
use axum::Json;
use jiff::Timestamp;
use tollgate_api as wire;
use tollgate_api::format_timestamp;
use tollgate_store::{KeyInfo, KeyKind, Mode, Project};

fn project_response(p: Project) -> wire::ProjectResponse {
    wire::ProjectResponse {
        project_id: p.project_id,
        name: p.name,
        created_at: format_timestamp(p.created_at),
    }
}

fn key_response(k: KeyInfo) -> wire::KeyResponse {
    wire::KeyResponse {
        key_id: k.key_id,
        project_id: k.project_id,
        environment: match k.mode {
            Mode::Live => wire::Environment::Live,
            Mode::Test => wire::Environment::Test,
        },
        kind: match k.kind {
            KeyKind::Secret => wire::KeyKind::Secret,
            KeyKind::Publishable => wire::KeyKind::Publishable,
        },
        name: k.name,
        prefix: k.prefix,
        created_at: format_timestamp(k.created_at),
        revoked_at: k.revoked_at.map(format_timestamp),
    }
}

async fn require_project(state: &AppState, project_id: &str) -> Result<(), ApiError> {
    let projects = state.store.list_projects().await?;
    if projects.iter().any(|p| p.project_id == project_id) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "no project has id {project_id:?}"
        )))
    }
}

/// Creates a project with its live and test environments (and no keys yet).
#[utoipa::path(
    post, path = "/admin/v1/projects", tag = "admin",
    request_body = wire::CreateProjectRequest,
    responses((status = 200, body = wire::ProjectResponse), (status = 401, body = wire::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn create_project(
    State(state): State<AppState>,
    _admin: Admin,
    ApiJson(body): ApiJson<wire::CreateProjectRequest>,
) -> Result<Json<wire::ProjectResponse>, ApiError> {
    let name = body.parse()?;
    let project = Project {
        project_id: new_id(PROJECT_PREFIX),
        name,
        created_at: environment_now(0),
    };
    state.store.create_project(project.clone()).await?;
    tracing::info!(project = %project.project_id, "project created");
    Ok(Json(project_response(project)))
}

#[utoipa::path(
    get, path = "/admin/v1/projects", tag = "admin",
    responses((status = 200, body = wire::ProjectList), (status = 401, body = wire::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list_projects(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<wire::ProjectList>, ApiError> {
    let projects = state.store.list_projects().await?;
    Ok(Json(wire::ProjectList {
        projects: projects.into_iter().map(project_response).collect(),
    }))
}

/// Creates a key; the key itself is in this answer only.
#[utoipa::path(
    post, path = "/admin/v1/projects/{projectId}/keys", tag = "admin",
    params(("projectId" = String, Path)),
    request_body = wire::CreateKeyRequest,
    responses((status = 200, body = wire::CreatedKey), (status = 404, body = wire::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn create_key(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(project_id): ApiPath<String>,
    ApiJson(body): ApiJson<wire::CreateKeyRequest>,
) -> Result<Json<wire::CreatedKey>, ApiError> {
    let name = body.parse_name()?;
    let mode = match body.environment {
        wire::Environment::Live => Mode::Live,
        wire::Environment::Test => Mode::Test,
    };
    let kind = match body.kind {
        wire::KeyKind::Secret => KeyKind::Secret,
        wire::KeyKind::Publishable => KeyKind::Publishable,
    };
    let (key, stored) = generate_key(&project_id, mode, kind, &name, Timestamp::now());
    let created = wire::CreatedKey {
        key_id: stored.key_id.clone(),
        key,
        prefix: stored.prefix.clone(),
    };
    state
        .store
        .create_key(stored)
        .await
        .map_err(store_error("project"))?;
    tracing::info!(project = %project_id, key_id = %created.key_id, "key created");
    Ok(Json(created))
}

#[utoipa::path(
    get, path = "/admin/v1/projects/{projectId}/keys", tag = "admin",
    params(("projectId" = String, Path)),
    responses((status = 200, body = wire::KeyList), (status = 404, body = wire::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list_keys(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(project_id): ApiPath<String>,
) -> Result<Json<wire::KeyList>, ApiError> {
    require_project(&state, &project_id).await?;
    let keys = state.store.list_keys(&project_id).await?;
    Ok(Json(wire::KeyList {
        keys: keys.into_iter().map(key_response).collect(),
    }))
}

/// Revokes a key at once; revoking twice is fine.
#[utoipa::path(
    delete, path = "/admin/v1/keys/{keyId}", tag = "admin",
    params(("keyId" = String, Path)),
    responses((status = 200, body = wire::RevokedKey), (status = 404, body = wire::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn revoke_key(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(key_id): ApiPath<String>,
) -> Result<Json<wire::RevokedKey>, ApiError> {
    state
        .store
        .revoke_key(&key_id, environment_now(0))
        .await
        .map_err(store_error("key"))?;
    state.keys.clear();
    tracing::info!(key_id = %key_id, "key revoked");
    Ok(Json(wire::RevokedKey {
        key_id,
        revoked: true,
    }))
}

/// Replaces the admin token: the new one is in this answer only, and the one that called
/// stops working at once, on every node.
#[utoipa::path(
    post, path = "/admin/v1/token/rotate", tag = "admin",
    responses(
        (status = 200, body = wire::RotatedAdminToken),
        (status = 401, body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn rotate_admin_token(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<wire::RotatedAdminToken>, ApiError> {
    let admin_token = generate_admin_token();
    state
        .store
        .rotate_admin_token(hash_secret(&admin_token))
        .await
        .map_err(store_error("install"))?;
    tracing::info!("admin token rotated");
    Ok(Json(wire::RotatedAdminToken { admin_token }))
}

/// The test environment's clock.
#[utoipa::path(
    get, path = "/v1/test/clock", tag = "test clock",
    responses(
        (status = 200, body = wire::ClockResponse),
        (status = 403, description = "a live key", body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_clock(TestSecretKey(caller): TestSecretKey) -> Json<wire::ClockResponse> {
    Json(wire::ClockResponse {
        now: format_timestamp(caller.now),
        offset_seconds: caller.auth.clock_offset_seconds,
    })
}

/// Moves the test environment's clock forward, then clears the logged prompts and responses
/// the move took past the environment's `promptRetentionDays`.
#[utoipa::path(
    post, path = "/v1/test/clock/advance", tag = "test clock",
    request_body = wire::AdvanceClockRequest,
    responses(
        (status = 200, body = wire::ClockResponse),
        (status = 403, description = "a live key", body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn advance_clock(
    State(state): State<AppState>,
    TestSecretKey(caller): TestSecretKey,
    ApiJson(body): ApiJson<wire::AdvanceClockRequest>,
) -> Result<Json<wire::ClockResponse>, ApiError> {
    let seconds = body.parse()?;
    let offset = state.store.advance_clock(caller.auth.env, seconds).await?;
    state.keys.clear();
    tracing::info!(seconds, offset, "test clock advanced");
    // Logged text the move took past its retention goes now, not at the next purge run, so
    // a test sees the purge as soon as its clock passes the retention. The advance stands
    // whatever becomes of the purge (the sweeper's next run tries again).
    let purged = crate::retention::purge_environment(
        state.store.as_ref(),
        &state.settings,
        caller.auth.env,
        jiff::Timestamp::now(),
    )
    .await;
    if let Err(e) = purged {
        tracing::warn!(error = %e, "prompt purge after the clock advance failed");
    }
    Ok(Json(wire::ClockResponse {
        now: format_timestamp(environment_now(offset)),
        offset_seconds: offset,
    }))
}
