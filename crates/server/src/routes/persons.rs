//! Persons (API.md §9): erasing what Tollgate keeps about a user beside their usage. (Their
//! traits are stored by `POST /v1/identify`, in `metering`.)

use crate::auth::SecretKey;
use crate::error::ApiError;
use crate::extract::ApiPath;
use crate::AppState;
use axum::extract::State;
use axum::Json;
use tollgate_api as wire;
use tollgate_store::{EraseCommand, Erased, LOGGED_TEXT_BATCH_MAX};

/// Erases a user's logged prompts and responses and their traits. Their usage events stay,
/// with every count and field but the text, so usage and limits do not change. Runs in steps
/// of `LOGGED_TEXT_BATCH_MAX` rows; an answer lost on the way (`503 outcome_unknown`) is
/// settled by calling again, which erases what is left. A user with nothing stored answers 0s.
#[utoipa::path(
    delete, path = "/v1/users/{userId}", tag = "persons",
    params(("userId" = String, Path)),
    responses(
        (status = 200, body = wire::EraseResponse),
        (status = 400, body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn erase_user(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiPath(user_id): ApiPath<String>,
) -> Result<Json<wire::EraseResponse>, ApiError> {
    let user_id = wire::parse_path_user_id(user_id)?;
    let mut erased = Erased::default();
    loop {
        let step = state
            .store
            .erase_user(EraseCommand {
                env: caller.auth.env,
                user_id: user_id.clone(),
                limit: LOGGED_TEXT_BATCH_MAX,
            })
            .await?;
        erased.add(step);
        if step.rows < LOGGED_TEXT_BATCH_MAX {
            break;
        }
    }
    tracing::info!(
        prompts = erased.prompts,
        responses = erased.responses,
        traits = erased.traits,
        "user erased"
    );
    Ok(Json(wire::EraseResponse {
        erased: wire::ErasedCounts {
            prompts: erased.prompts,
            responses: erased.responses,
            traits: erased.traits,
        },
    }))
}
