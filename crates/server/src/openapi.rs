//! The OpenAPI document of the API, generated from the handlers' `#[utoipa::path]` attributes
//! and the wire types' schemas, served at `/openapi.json`.

use crate::routes::{
    accounts, admin, analytics, billers, browser, credits, events, metering, persons, plans,
    recommend, subscriptions, system,
};
use serde_json::{json, Value};
use std::sync::OnceLock;
use tollgate_api::CUSTOM_LIMITS_MAX;
use tollgate_core::input::{QUANTITY_MAX, SUBJECT_ID_BYTES_MAX};
use tollgate_core::plan::PLAN_ID_BYTES_MAX;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, Ref, RefOr, Response, ResponseBuilder, Schema, SchemaFormat, Type,
};
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

/// Operations that take any key, publishable ones included: they never answer `403`.
const ANY_KEY_OPERATIONS: [&str; 4] = ["get_plans", "get_plan", "me_usage", "me_credits"];

/// Operations that read their body as raw bytes (a biller's signed webhook): any content type
/// is taken, so they never answer `415`.
const RAW_BODY_OPERATIONS: [&str; 1] = ["receive"];

/// One answer of API.md §2 that many routes share, named in `components.responses`.
struct CommonError {
    status: &'static str,
    name: &'static str,
    description: &'static str,
}

const INVALID_REQUEST: CommonError = CommonError {
    status: "400",
    name: "InvalidRequest",
    description: "invalid_request: malformed JSON, a wrong type, an unknown field or a value out \
                  of range (`field` names it)",
};
const INVALID_KEY: CommonError = CommonError {
    status: "401",
    name: "InvalidKey",
    description: "invalid_key: the key is missing, malformed, unknown or revoked",
};
const FORBIDDEN: CommonError = CommonError {
    status: "403",
    name: "Forbidden",
    description: "requires_secret_key: a publishable key on a secret-only route; forbidden: \
                  e.g. a test-only route with a live key",
};
const PAYLOAD_TOO_LARGE: CommonError = CommonError {
    status: "413",
    name: "PayloadTooLarge",
    description: "payload_too_large: the body is over 1 MiB",
};
const UNSUPPORTED_MEDIA_TYPE: CommonError = CommonError {
    status: "415",
    name: "UnsupportedMediaType",
    description: "unsupported_media_type: the body is not `Content-Type: application/json`",
};
const INTERNAL_ERROR: CommonError = CommonError {
    status: "500",
    name: "InternalError",
    description: "internal_error: a bug; the body never leaks internals",
};
const UNAVAILABLE: CommonError = CommonError {
    status: "503",
    name: "Unavailable",
    description: "unavailable: storage unreachable or overloaded, nothing was applied; or \
                  outcome_unknown: the write may have been applied (retry with the same \
                  idempotencyKey). Both carry `Retry-After`",
};
const COMMON_ERRORS: [CommonError; 7] = [
    INVALID_REQUEST,
    INVALID_KEY,
    FORBIDDEN,
    PAYLOAD_TOO_LARGE,
    UNSUPPORTED_MEDIA_TYPE,
    INTERNAL_ERROR,
    UNAVAILABLE,
];

/// Adds the error answers every route shares to every operation, so each handler documents
/// only its own (`404`, `409`, ...) and no route can forget one the layers answer:
/// `500` and `503` everywhere (panics, request deadline); `401` wherever a key is named, `403`
/// where a secret key is; `400` wherever there are parameters or a body; `413` and `415`
/// wherever there is a body (`415` where it must be JSON). A status the handler documents itself
/// keeps its description.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for error in &COMMON_ERRORS {
            components
                .responses
                .insert(error.name.to_string(), RefOr::T(error_response(error)));
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            for operation in operations_mut(item) {
                for error in common_errors_of(path, operation) {
                    operation
                        .responses
                        .responses
                        .entry(error.status.to_string())
                        .or_insert_with(|| RefOr::Ref(Ref::from_response_name(error.name)));
                }
            }
        }
    }
}

/// The `ErrorBody` answer of one shared error, with `Retry-After` where the server sends it.
fn error_response(error: &CommonError) -> Response {
    let body = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("ErrorBody")))
        .build();
    let mut response = ResponseBuilder::new()
        .description(error.description)
        .content("application/json", body);
    if error.status == UNAVAILABLE.status {
        let seconds = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
            .minimum(Some(0));
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(Schema::Object(seconds.build()))
                .description(Some("seconds to wait before retrying"))
                .build(),
        );
    }
    response.build()
}

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// Which shared errors the layers and extractors of one operation can answer.
fn common_errors_of(path: &str, operation: &Operation) -> Vec<&'static CommonError> {
    let keyed = operation
        .security
        .as_ref()
        .is_some_and(|requirements| !requirements.is_empty());
    let any_key = is_one_of(operation, &ANY_KEY_OPERATIONS);
    let secret_key = keyed && !any_key && !path.starts_with("/admin/");
    let has_params = operation
        .parameters
        .as_ref()
        .is_some_and(|params| !params.is_empty());
    let has_body = operation.request_body.is_some();
    let mut errors = Vec::new();
    if has_params || has_body {
        errors.push(&INVALID_REQUEST);
    }
    if keyed {
        errors.push(&INVALID_KEY);
    }
    if secret_key {
        errors.push(&FORBIDDEN);
    }
    let raw_body = is_one_of(operation, &RAW_BODY_OPERATIONS);
    if has_body {
        errors.push(&PAYLOAD_TOO_LARGE);
    }
    if has_body && !raw_body {
        errors.push(&UNSUPPORTED_MEDIA_TYPE);
    }
    errors.push(&INTERNAL_ERROR);
    errors.push(&UNAVAILABLE);
    errors
}

/// Whether the operation is one of the named handlers (operation ids are handler names).
fn is_one_of(operation: &Operation, names: &[&str]) -> bool {
    operation
        .operation_id
        .as_deref()
        .is_some_and(|id| names.contains(&id))
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
        events::events,
        events::event,
        events::export,
        analytics::usage,
        analytics::top_users,
        analytics::margin,
        analytics::funnel,
        analytics::capture,
        metering::usage,
        persons::erase_user,
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
        accounts::account_usage,
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
        plans::diff_plans,
        plans::promote_plans,
        recommend::recommendation,
        browser::create_user_token,
        browser::me_usage,
        browser::me_credits,
        browser::widget_js,
        admin::create_project,
        admin::list_projects,
        admin::create_key,
        admin::list_keys,
        admin::revoke_key,
        admin::rotate_admin_token,
        admin::get_clock,
        admin::advance_clock,
        system::healthz,
        system::readyz,
        system::metrics,
        system::openapi,
    ),
    components(schemas(tollgate_api::ErrorBody, tollgate_api::InitOutput)),
    modifiers(&BearerAuth, &CommonErrors),
)]
pub struct ApiDoc;

/// The document, built once.
pub fn openapi_json() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        refine(&mut doc);
        doc
    })
}

/// Path parameters that name a user or an account, wherever they appear: the same limits as
/// the body fields (API.md §1, `userId and accountId 1–256 bytes, no control characters`).
const SUBJECT_PARAMETERS: [&str; 2] = ["userId", "accountId"];

/// Request bodies that name exactly one of two fields (`userId` or `accountId`, `grantId` or
/// `externalRef`): both or neither is `400 invalid_request`.
const EITHER_OR: [(&str, &str, &str); 4] = [
    ("GrantRequest", "userId", "accountId"),
    ("SubscriptionUpsertRequest", "userId", "accountId"),
    ("CancelRequest", "userId", "accountId"),
    ("RevokeRequest", "grantId", "externalRef"),
];

/// Answers that are a plan document with more members beside it (`version`, `changed`).
const FLATTENED_PLAN_DOCUMENTS: [&str; 2] = ["VersionedPlanDocument", "AppliedPlanDocument"];

/// An origin of `corsOrigins`, exactly as `tollgate_api::parse_origin` takes it.
const ORIGIN_PATTERN: &str = "^(\\*|[Hh][Tt][Tt][Pp][Ss]?://([A-Za-z0-9.-]+|\\[[0-9A-Fa-f:.]+\\])\
    (:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?)$";

/// What utoipa's attributes cannot say, stated on the JSON of the document.
fn refine(doc: &mut Value) {
    constrain_subject_parameters(doc);
    optional_bodies_are_absent_not_null(doc);
    let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    for (name, first, second) in EITHER_OR {
        if let Some(schema) = schemas.get_mut(name).and_then(Value::as_object_mut) {
            schema.insert("oneOf".into(), json!([present(first), present(second)]));
        }
    }
    for (name, property, schema) in property_overrides() {
        if let Some(slot) = schemas
            .get_mut(name)
            .and_then(|s| s.get_mut("properties"))
            .and_then(|p| p.get_mut(property))
        {
            *slot = schema;
        }
    }
    if let Some(upsert) = schemas
        .get_mut("SubscriptionUpsertRequest")
        .and_then(Value::as_object_mut)
    {
        // `seats` caps the members of an account: with `userId` it is refused, even `null`.
        upsert.insert(
            "not".into(),
            json!({ "required": ["userId", "seats"], "properties": { "userId": { "type": "string" } } }),
        );
    }
    let Some(document) = schemas.get("PlanDocument").cloned() else {
        return;
    };
    for name in FLATTENED_PLAN_DOCUMENTS {
        if let Some(schema) = schemas.get_mut(name) {
            *schema = flattened(&document, schema);
        }
    }
}

/// Properties whose rule is not a single type: (schema, property, its schema).
fn property_overrides() -> [(&'static str, &'static str, Value); 5] {
    [
        (
            "SettingsPatch",
            "corsOrigins",
            json!({
                "description": "Replaces the list of origins a browser may use the \
                                publishable key from: `*` (any), or `http[s]://host[:port]`",
                "type": ["array", "null"],
                "maxItems": tollgate_api::CORS_ORIGINS_MAX,
                "items": {
                    "type": "string",
                    "maxLength": tollgate_api::CORS_ORIGIN_BYTES_MAX,
                    "pattern": ORIGIN_PATTERN,
                },
            }),
        ),
        (
            "GrantRequest",
            "source",
            json!({
                "description": "`purchase` (the default), `grant`, `refund` or `manual`; \
                                `rollover` grants are made by limits only",
                "anyOf": [
                    { "type": "null" },
                    { "type": "string", "enum": ["purchase", "grant", "refund", "manual"] },
                ],
            }),
        ),
        (
            "SubscriptionUpsertRequest",
            "customLimits",
            json!({
                "description": "Per-subscriber quotas by limit id, replacing the plan's",
                "type": ["object", "null"],
                "maxProperties": CUSTOM_LIMITS_MAX,
                "propertyNames": {
                    "type": "string", "minLength": 1, "maxLength": PLAN_ID_BYTES_MAX,
                    "pattern": tollgate_api::schema::NAME_PATTERN,
                },
                "additionalProperties": {
                    "type": "integer", "minimum": 0, "maximum": QUANTITY_MAX,
                },
            }),
        ),
        (
            "CancelRequest",
            "at",
            json!({
                "description": "`now` (the default), `period_end`, or an RFC 3339 timestamp",
                "anyOf": [
                    { "type": "null" },
                    { "type": "string", "enum": ["now", "period_end"] },
                    { "type": "string", "format": "date-time" },
                ],
            }),
        ),
        (
            "IdentifyRequest",
            "traits",
            json!({
                "description": "Merged into the user's stored traits (a key given again takes \
                                its new value); at most 64 keys and 16 KiB as JSON, also once \
                                merged",
                "type": ["object", "null"],
                "maxProperties": tollgate_store::TRAITS_KEYS_MAX,
            }),
        ),
    ]
}

/// A JSON Schema branch that holds when `field` is present as a string (`null` reads as absent).
fn present(field: &str) -> Value {
    json!({ "required": [field], "properties": { field: { "type": "string" } } })
}

/// `#[serde(flatten)]` of a document that refuses unknown members comes out of utoipa as
/// `allOf: [document, extra]`, which refuses the extra members themselves; one object with
/// the members of both says what the server answers.
fn flattened(document: &Value, schema: &Value) -> Value {
    let mut merged = document.clone();
    let extra = schema["allOf"]
        .as_array()
        .and_then(|parts| parts.iter().find(|part| part.get("properties").is_some()));
    let (Some(extra), Some(object)) = (extra, merged.as_object_mut()) else {
        return schema.clone();
    };
    if let (Some(into), Some(from)) = (
        object
            .entry("properties")
            .or_insert_with(|| json!({}))
            .as_object_mut(),
        extra["properties"].as_object(),
    ) {
        into.extend(from.clone());
    }
    if let (Some(into), Some(from)) = (
        object
            .entry("required")
            .or_insert_with(|| json!([]))
            .as_array_mut(),
        extra["required"].as_array(),
    ) {
        into.extend(from.iter().cloned());
    }
    object.insert("description".into(), schema["description"].clone());
    merged
}

/// `request_body(content = Option<T>)` comes out as "`T` or `null`, required"; the server
/// means "`T`, or no body at all" (`OptionalJson`), and refuses a `null` body.
fn optional_bodies_are_absent_not_null(doc: &mut Value) {
    for operation in operations_json(doc) {
        let Some(body) = operation.get_mut("requestBody") else {
            continue;
        };
        let Some(schema) = body.pointer_mut("/content/application~1json/schema") else {
            continue;
        };
        let not_null = schema["oneOf"].as_array().and_then(|branches| {
            let (nulls, others): (Vec<&Value>, Vec<&Value>) =
                branches.iter().partition(|branch| branch["type"] == "null");
            (nulls.len() == 1 && others.len() == 1).then(|| others[0].clone())
        });
        if let Some(inner) = not_null {
            *schema = inner;
            body["required"] = Value::Bool(false);
        }
    }
}

/// Every operation object of the document.
fn operations_json(doc: &mut Value) -> impl Iterator<Item = &mut Value> {
    doc.get_mut("paths")
        .and_then(Value::as_object_mut)
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
}

fn constrain_subject_parameters(doc: &mut Value) {
    for operation in operations_json(doc) {
        let Some(parameters) = operation
            .get_mut("parameters")
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for parameter in parameters {
            let named = parameter["name"].as_str().unwrap_or_default();
            let located = parameter["in"] == "path" || parameter["in"] == "query";
            if located && SUBJECT_PARAMETERS.contains(&named) {
                parameter["schema"] = subject_id_schema();
            }
        }
    }
}

fn subject_id_schema() -> Value {
    json!({
        "type": "string",
        "minLength": 1,
        "maxLength": SUBJECT_ID_BYTES_MAX,
        "pattern": tollgate_api::schema::SUBJECT_ID_PATTERN,
        "description": "1–256 bytes, no control characters",
    })
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

    /// The statuses documented on one operation.
    fn statuses(path: &str, method: &str) -> Vec<String> {
        let responses = &openapi_json()["paths"][path][method]["responses"];
        responses
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} has no responses"))
            .keys()
            .cloned()
            .collect()
    }

    #[test]
    fn every_operation_lists_the_errors_its_layers_answer() {
        let doc = openapi_json();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("path item") {
                let listed = statuses(path, method);
                for status in ["500", "503"] {
                    assert!(
                        listed.iter().any(|s| s == status),
                        "{method} {path}: {status}"
                    );
                }
                if operation.get("requestBody").is_some() {
                    for status in ["400", "413"] {
                        assert!(
                            listed.iter().any(|s| s == status),
                            "{method} {path}: {status}"
                        );
                    }
                }
                if operation.get("security").is_some() {
                    assert!(listed.iter().any(|s| s == "401"), "{method} {path}: 401");
                }
            }
        }
        // A secret-key route refuses publishable keys; the admin token and any-key routes
        // never answer 403, and the webhook takes no key at all.
        assert!(statuses("/v1/reserve", "post").contains(&"403".to_string()));
        assert!(!statuses("/v1/plans", "get").contains(&"403".to_string()));
        assert!(!statuses("/admin/v1/projects", "get").contains(&"403".to_string()));
        let webhook = statuses("/webhooks/{biller}/{endpointId}", "post");
        assert!(!webhook.contains(&"401".to_string()), "{webhook:?}");
        assert!(!webhook.contains(&"415".to_string()), "{webhook:?}");
        assert!(statuses("/v1/track", "post").contains(&"415".to_string()));
        for status in ["200", "400", "404"] {
            assert!(webhook.contains(&status.to_string()), "{webhook:?}");
        }
        let unavailable = &doc["components"]["responses"]["Unavailable"];
        assert_eq!(
            unavailable["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody"
        );
        assert!(
            unavailable["headers"]["Retry-After"].is_object(),
            "{unavailable}"
        );
    }

    #[test]
    fn input_limits_of_api_md_are_in_the_schemas() {
        use tollgate_core::input::{
            EVENT_NAME_BYTES_MAX, IDEMPOTENCY_KEY_BYTES_MAX, METADATA_ENTRIES_MAX,
            METADATA_KEY_BYTES_MAX, METADATA_VALUE_BYTES_MAX, TTL_SECONDS_MAX, TTL_SECONDS_MIN,
        };
        use tollgate_core::plan::{LIMITS_PER_PLAN_MAX, PLANS_MAX};
        let schemas = &openapi_json()["components"]["schemas"];
        let reserve = &schemas["ReserveRequest"]["properties"];
        assert_eq!(reserve["userId"]["maxLength"], SUBJECT_ID_BYTES_MAX);
        assert_eq!(reserve["userId"]["minLength"], 1);
        assert_eq!(
            reserve["userId"]["pattern"],
            tollgate_api::schema::SUBJECT_ID_PATTERN
        );
        assert_eq!(reserve["event"]["maxLength"], EVENT_NAME_BYTES_MAX);
        assert_eq!(
            reserve["event"]["pattern"],
            tollgate_api::schema::NAME_PATTERN
        );
        assert_eq!(reserve["quantity"]["minimum"], 1);
        assert_eq!(reserve["quantity"]["maximum"], QUANTITY_MAX);
        assert_eq!(reserve["ttlSeconds"]["minimum"], TTL_SECONDS_MIN);
        assert_eq!(reserve["ttlSeconds"]["maximum"], TTL_SECONDS_MAX);
        assert_eq!(
            reserve["idempotencyKey"]["maxLength"],
            IDEMPOTENCY_KEY_BYTES_MAX
        );
        let metadata = &reserve["metadata"];
        assert_eq!(metadata["maxProperties"], METADATA_ENTRIES_MAX);
        assert_eq!(
            metadata["propertyNames"]["maxLength"],
            METADATA_KEY_BYTES_MAX
        );
        assert_eq!(
            metadata["additionalProperties"]["maxLength"],
            METADATA_VALUE_BYTES_MAX
        );
        // Track and commit take 0; reserve and check do not.
        for name in ["TrackRequest", "CommitRequest"] {
            let quantity = &schemas[name]["properties"]["quantity"];
            assert_eq!(quantity["minimum"], 0, "{name}: {quantity}");
            assert_eq!(quantity["maximum"], QUANTITY_MAX, "{name}: {quantity}");
        }
        assert_eq!(
            schemas["CheckRequest"]["properties"]["quantity"]["minimum"],
            1
        );
        let document = &schemas["PlanDocument"]["properties"];
        assert_eq!(document["plans"]["maxItems"], PLANS_MAX);
        assert_eq!(
            schemas["Plan"]["properties"]["limits"]["maxItems"],
            LIMITS_PER_PLAN_MAX
        );
        assert_eq!(
            schemas["Plan"]["properties"]["id"]["maxLength"],
            PLAN_ID_BYTES_MAX
        );
    }

    #[test]
    fn the_patterns_say_what_the_parsers_take() {
        let subject = regex_lite(tollgate_api::schema::SUBJECT_ID_PATTERN);
        for ok in ["u_42", "a b", "é"] {
            assert!(subject(ok), "{ok:?}");
            assert!(tollgate_core::input::UserId::parse(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", "a\u{0}b", "tab\there", "c1\u{85}"] {
            assert!(!subject(bad), "{bad:?}");
            assert!(tollgate_core::input::UserId::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// The subject pattern, `^[^<controls>]+$`, applied by hand: the server has no regex
    /// engine, and the pattern is one character class.
    fn regex_lite(pattern: &str) -> impl Fn(&str) -> bool {
        assert_eq!(pattern, "^[^\\u0000-\\u001F\\u007F-\\u009F]+$");
        |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| !matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}'))
        }
    }

    #[test]
    fn answers_carry_what_the_server_sends() {
        let schemas = &openapi_json()["components"]["schemas"];
        for name in FLATTENED_PLAN_DOCUMENTS {
            let schema = &schemas[name];
            assert_eq!(schema["additionalProperties"], false, "{name}");
            assert!(schema["properties"]["version"].is_object(), "{name}");
            assert!(schema["properties"]["plans"].is_object(), "{name}");
            let required = schema["required"].as_array().expect("required");
            assert!(required.iter().any(|r| r == "version"), "{name}");
        }
        assert!(schemas["AppliedPlanDocument"]["properties"]["changed"].is_object());
        // A body that may be left out is not a body that may be `null`.
        let commit = &openapi_json()["paths"]["/v1/reservations/{reservationId}/commit"]["post"]
            ["requestBody"];
        assert_eq!(commit["required"], false, "{commit}");
        assert_eq!(
            commit["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/CommitRequest"
        );
        let grant = &schemas["GrantRequest"];
        assert_eq!(grant["oneOf"].as_array().map(Vec::len), Some(2), "{grant}");
        let path_user =
            &openapi_json()["paths"]["/v1/users/{userId}/usage"]["get"]["parameters"][0]["schema"];
        assert_eq!(path_user["maxLength"], SUBJECT_ID_BYTES_MAX, "{path_user}");
    }
}
