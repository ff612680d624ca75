//! The OpenAPI document of the API, generated from the handlers' `#[utoipa::path]` attributes
//! and the wire types' schemas, served at `/openapi.json`.

use crate::routes::{accounts, admin, billers, credits, metering, plans, subscriptions, system};
use std::sync::OnceLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// Declares the bearer scheme every keyed route names: an API key or the admin token.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A secret (`tg_sk_…`) or publishable (`tg_pk_…`) key (keys minted \
                         before the `tg_` prefix, `sk_…` and `pk_…`, keep working); the admin \
                         token (`tg_admin_…`) on /admin routes",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tollgate",
        description = "Metering and limits for AI apps: reserve, commit, track, plans, subscriptions, credits."
    ),
    paths(
        metering::reserve,
        metering::commit,
        metering::release,
        metering::extend,
        metering::get_reservation,
        metering::track,
        metering::check,
        metering::identify,
        metering::events,
        metering::usage,
        credits::grant,
        credits::revoke,
        credits::user_credits,
        credits::account_credits,
        credits::user_ledger,
        credits::account_ledger,
        plans::put_plans,
        plans::get_plans,
        plans::get_plan,
        subscriptions::upsert,
        subscriptions::get,
        subscriptions::history,
        subscriptions::cancel,
        accounts::add_member,
        accounts::remove_member,
        accounts::get_account,
        accounts::get_subscription,
        billers::put_integration,
        billers::get_integration,
        billers::put_customer,
        billers::receive,
        billers::list_events,
        billers::get_event,
        billers::replay_event,
        billers::list_meter_events,
        billers::retry_meter_event,
        billers::get_settings,
        billers::patch_settings,
        admin::create_project,
        admin::list_projects,
        admin::create_key,
        admin::list_keys,
        admin::revoke_key,
        admin::get_clock,
        admin::advance_clock,
        system::healthz,
        system::readyz,
        system::metrics,
        system::openapi,
    ),
    components(schemas(tollgate_api::ErrorBody, tollgate_api::InitOutput)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

/// The document, built once.
pub fn openapi_json() -> &'static serde_json::Value {
    static DOCUMENT: OnceLock<serde_json::Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| serde_json::to_value(ApiDoc::openapi()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented() {
        let doc = openapi_json();
        let paths = doc["paths"].as_object().expect("paths");
        for path in [
            "/v1/reserve",
            "/v1/reservations/{reservationId}/commit",
            "/v1/reservations/{reservationId}/release",
            "/v1/reservations/{reservationId}/extend",
            "/v1/reservations/{reservationId}",
            "/v1/track",
            "/v1/check",
            "/v1/users/{userId}/usage",
            "/v1/credits/grants",
            "/v1/credits/revoke",
            "/v1/users/{userId}/credits",
            "/v1/users/{userId}/credits/ledger",
            "/v1/accounts/{accountId}/credits",
            "/v1/accounts/{accountId}/credits/ledger",
            "/v1/plans",
            "/v1/plans/{planId}",
            "/v1/subscriptions",
            "/v1/subscriptions/{userId}",
            "/v1/subscriptions/{userId}/history",
            "/v1/subscriptions/cancel",
            "/admin/v1/projects",
            "/admin/v1/projects/{projectId}/keys",
            "/admin/v1/keys/{keyId}",
            "/v1/test/clock",
            "/v1/test/clock/advance",
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
        ] {
            assert!(paths.contains_key(path), "{path} is not documented");
        }
        assert!(doc["components"]["schemas"]["ReserveRequest"].is_object());
        assert!(doc["components"]["schemas"]["PlanDocument"].is_object());
        assert!(doc["components"]["schemas"]["GrantRequest"].is_object());
        assert!(doc["components"]["schemas"]["LedgerEntry"].is_object());
    }

    #[test]
    fn seats_are_documented_on_the_upsert_and_every_subscription_answer() {
        let schemas = &openapi_json()["components"]["schemas"];
        let asked = &schemas["SubscriptionUpsertRequest"]["properties"]["seats"];
        assert_eq!(asked["minimum"], 1, "{asked}");
        assert_eq!(asked["maximum"], 4294967295_u64, "{asked}");
        assert_eq!(asked["format"], "int64", "{asked}");
        let answer = &schemas["SubscriptionResponse"];
        let shown = &answer["properties"]["seats"];
        assert_eq!(
            shown["type"],
            serde_json::json!(["integer", "null"]),
            "{shown}"
        );
        assert_eq!(shown["minimum"], 1, "{shown}");
        let required = answer["required"].as_array().expect("required");
        assert!(required.iter().any(|r| r == "seats"), "{answer}");
    }
}
