//! The route table: every path of the API, its handler, and the layers around all of them.

pub mod accounts;
pub mod admin;
pub mod analytics;
pub mod billers;
pub mod browser;
pub mod credits;
pub mod events;
pub mod metering;
pub mod persons;
pub mod plans;
pub mod recommend;
pub mod subscriptions;
pub mod system;

use crate::cors::cors;
use crate::error::ApiError;
use crate::observe::observe;
use crate::{AppState, REQUEST_BODY_BYTES_MAX};
use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;
use std::any::Any;
use tower_http::catch_panic::CatchPanicLayer;

/// A panicking handler answers `500 internal_error`; the panic is logged, not shown.
fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a handler panicked");
    ApiError::Internal(format!("handler panicked: {detail}")).into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("no route here; see /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Every route of the API with its layers: observe (outermost), catch panics, body limit.
pub fn router(state: AppState) -> Router {
    with_layers(routes(), state)
}

/// The layers every route shares, outermost last.
fn with_layers(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        .layer(axum::middleware::from_fn_with_state(state.clone(), cors))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/reserve", post(metering::reserve))
        .route(
            "/v1/reservations/{reservationId}",
            get(metering::get_reservation),
        )
        .route(
            "/v1/reservations/{reservationId}/commit",
            post(metering::commit),
        )
        .route(
            "/v1/reservations/{reservationId}/release",
            post(metering::release),
        )
        .route(
            "/v1/reservations/{reservationId}/extend",
            post(metering::extend),
        )
        .route("/v1/track", post(metering::track))
        .route("/v1/check", post(metering::check))
        .route("/v1/identify", post(metering::identify))
        .route("/v1/events", get(events::events))
        .route("/v1/analytics/usage", post(analytics::usage))
        .route("/v1/analytics/top-users", get(analytics::top_users))
        .route("/v1/analytics/margin", get(analytics::margin))
        .route("/v1/analytics/funnel", post(analytics::funnel))
        .route("/v1/capture", post(analytics::capture))
        .route("/v1/events/export", get(events::export))
        .route("/v1/events/{eventId}", get(events::event))
        .route("/v1/users/{userId}", delete(persons::erase_user))
        .route("/v1/users/{userId}/usage", get(metering::usage))
        .route("/v1/credits/grants", post(credits::grant))
        .route("/v1/credits/revoke", post(credits::revoke))
        .route("/v1/users/{userId}/credits", get(credits::user_credits))
        .route(
            "/v1/users/{userId}/credits/ledger",
            get(credits::user_ledger),
        )
        .route(
            "/v1/accounts/{accountId}/credits",
            get(credits::account_credits),
        )
        .route(
            "/v1/accounts/{accountId}/credits/ledger",
            get(credits::account_ledger),
        )
        .route("/v1/plans", get(plans::get_plans).put(plans::put_plans))
        .route("/v1/plans/diff", get(plans::diff_plans))
        .route("/v1/plans/recommendation", get(recommend::recommendation))
        .route("/v1/plans/promote", post(plans::promote_plans))
        .route("/v1/plans/{planId}", get(plans::get_plan))
        .route("/v1/subscriptions", post(subscriptions::upsert))
        .route(
            "/v1/accounts/{accountId}/members/{userId}",
            put(accounts::add_member).delete(accounts::remove_member),
        )
        .route("/v1/accounts/{accountId}", get(accounts::get_account))
        .route(
            "/v1/accounts/{accountId}/usage",
            get(accounts::account_usage),
        )
        .route(
            "/v1/accounts/{accountId}/subscription",
            get(accounts::get_subscription),
        )
        .route("/v1/subscriptions/cancel", post(subscriptions::cancel))
        .route("/v1/subscriptions/{userId}", get(subscriptions::get))
        .route(
            "/v1/subscriptions/{userId}/history",
            get(subscriptions::history),
        )
        .route(
            "/v1/integrations/{biller}",
            get(billers::get_integration).put(billers::put_integration),
        )
        .route(
            "/v1/integrations/{biller}/customers/{customerId}",
            put(billers::put_customer),
        )
        .route(
            "/v1/integrations/{biller}/events",
            get(billers::list_events),
        )
        .route(
            "/v1/integrations/{biller}/events/{eventId}",
            get(billers::get_event),
        )
        .route(
            "/v1/integrations/{biller}/events/{eventId}/replay",
            post(billers::replay_event),
        )
        .route(
            "/v1/integrations/{biller}/meter-events",
            get(billers::list_meter_events),
        )
        .route(
            "/v1/integrations/{biller}/meter-events/{eventId}/retry",
            post(billers::retry_meter_event),
        )
        .route("/webhooks/{biller}/{endpointId}", post(billers::receive))
        .route(
            "/v1/settings",
            get(billers::get_settings).patch(billers::patch_settings),
        )
        .route("/v1/test/clock", get(admin::get_clock))
        .route("/v1/test/clock/advance", post(admin::advance_clock))
        .route(
            "/admin/v1/projects",
            get(admin::list_projects).post(admin::create_project),
        )
        .route(
            "/admin/v1/projects/{projectId}/keys",
            get(admin::list_keys).post(admin::create_key),
        )
        .route("/admin/v1/keys/{keyId}", delete(admin::revoke_key))
        .route("/admin/v1/token/rotate", post(admin::rotate_admin_token))
        .route("/v1/user-tokens", post(browser::create_user_token))
        .route("/v1/me/usage", get(browser::me_usage))
        .route("/v1/me/credits", get(browser::me_credits))
        .route("/widget.js", get(browser::widget_js))
        .route("/healthz", get(system::healthz))
        .route("/readyz", get(system::readyz))
        .route("/metrics", get(system::metrics))
        .route("/openapi.json", get(system::openapi))
}

#[cfg(test)]
mod tests;
