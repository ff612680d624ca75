//! Usage events (API.md §9): a filtered page of them, one of them with its logged prompt and
//! response, and a whole range streamed as NDJSON or CSV for a warehouse.
//!
//! Filters, all optional and all applied together: `userId`, `event` (a name or a glob with
//! `*`), `status`, `from` (inclusive) and `to` (exclusive), and any number (up to 32) of
//! `metadata.KEY=VALUE`, each requiring that key with exactly that value. Events are listed
//! newest first, by time then event id, the order of the cursor.

use crate::auth::{Caller, SecretKey};
use crate::error::ApiError;
use crate::extract::ApiPath;
use crate::ids::{looks_like, EVENT_PREFIX};
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tollgate_api as wire;
use tollgate_core::input::METADATA_VALUE_BYTES_MAX;
use tollgate_core::plan::EventPattern;
use tollgate_store::{EventsQuery, StoredEvent};
use utoipa::IntoParams;

/// Events read per store query while exporting.
pub const EXPORT_PAGE: usize = 1_000;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsParams {
    /// Only this user's events (including those an identify moved to them).
    #[serde(rename = "userId")]
    #[param(rename = "userId", min_length = 1, max_length = 256)]
    user_id: Option<String>,
    /// Only events of this name, or matching this glob (`image.*`).
    #[param(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_.:*-]+$")]
    event: Option<String>,
    /// Only events with this status: committed, released, expired, tracked or denied.
    #[param(pattern = "^(committed|released|expired|tracked|denied)$")]
    status: Option<String>,
    /// Only events at or after this instant (RFC 3339).
    #[param(format = DateTime)]
    from: Option<String>,
    /// Only events before this instant (RFC 3339).
    #[param(format = DateTime)]
    to: Option<String>,
    /// Events per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// `nextCursor` of the previous page.
    #[param(pattern = "^-?[0-9]{1,14}:[A-Za-z0-9_]{1,64}$")]
    cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportParams {
    /// `ndjson` (one JSON event a line, the default) or `csv` (a header line, then one row an
    /// event).
    #[param(pattern = "^(ndjson|csv)$")]
    format: Option<String>,
    /// Only this user's events.
    #[serde(rename = "userId")]
    #[param(rename = "userId", min_length = 1, max_length = 256)]
    user_id: Option<String>,
    /// Only events of this name, or matching this glob (`image.*`).
    #[param(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_.:*-]+$")]
    event: Option<String>,
    /// Only events with this status.
    #[param(pattern = "^(committed|released|expired|tracked|denied)$")]
    status: Option<String>,
    /// Only events at or after this instant (RFC 3339).
    #[param(format = DateTime)]
    from: Option<String>,
    /// Only events before this instant (RFC 3339).
    #[param(format = DateTime)]
    to: Option<String>,
}

/// The query string as (named parameters, `metadata.KEY=VALUE` filters).
fn split_query<T: DeserializeOwned>(
    raw: Option<&str>,
) -> Result<(T, Vec<(String, String)>), ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ApiError::invalid("", format!("the query string does not parse: {e}")))?;
    let mut named = Vec::new();
    let mut metadata: Vec<(String, String)> = Vec::new();
    for (name, value) in pairs {
        let Some(key) = name.strip_prefix("metadata.") else {
            named.push((name, value));
            continue;
        };
        let field = format!("metadata.{key}");
        let key_ok = !key.is_empty()
            && key.len() <= 64
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
        if !key_ok {
            return Err(ApiError::invalid(
                field,
                "a metadata key is 1 to 64 of A-Z a-z 0-9 _ . : -",
            ));
        }
        if value.len() > METADATA_VALUE_BYTES_MAX {
            return Err(ApiError::invalid(
                field,
                "a metadata value is at most 512 bytes",
            ));
        }
        if metadata.iter().any(|(k, _)| k == key) {
            return Err(ApiError::invalid(
                field,
                "given twice; an event has one value a key",
            ));
        }
        metadata.push((key.to_string(), value));
    }
    if metadata.len() > wire::EVENT_METADATA_FILTERS_MAX {
        return Err(ApiError::invalid(
            "metadata",
            format!(
                "at most {} metadata filters",
                wire::EVENT_METADATA_FILTERS_MAX
            ),
        ));
    }
    let rest = serde_urlencoded::to_string(&named)
        .map_err(|e| ApiError::Internal(format!("re-encoding a query: {e}")))?;
    let params = serde_urlencoded::from_str(&rest)
        .map_err(|e| ApiError::invalid("", format!("Failed to deserialize query string: {e}")))?;
    Ok((params, metadata))
}

/// The filters every events route shares, checked.
struct Filters {
    user_id: Option<String>,
    event: Option<String>,
    status: Option<String>,
    from: Option<String>,
    to: Option<String>,
    metadata: Vec<(String, String)>,
}

impl Filters {
    fn query(self, caller: &Caller, limit: usize) -> Result<EventsQuery, ApiError> {
        let mut q = EventsQuery::all(caller.auth.env, limit);
        q.user_id = self.user_id.map(wire::parse_path_user_id).transpose()?;
        if let Some(status) = &self.status {
            if !wire::EVENT_STATUSES.contains(&status.as_str()) {
                return Err(ApiError::invalid(
                    "status",
                    "must be one of committed, released, expired, tracked, denied",
                ));
            }
        }
        q.status = self.status;
        q.event = self
            .event
            .map(|e| {
                EventPattern::parse(&e).map_err(|_| {
                    ApiError::invalid(
                        "event",
                        "an event name or a glob: 1 to 128 of A-Z a-z 0-9 _ . : - and *",
                    )
                })
            })
            .transpose()?;
        let instant = |field: &str, v: Option<String>| {
            v.map(|s| wire::parse_timestamp(field, &s)).transpose()
        };
        q.from = instant("from", self.from)?;
        q.to = instant("to", self.to)?;
        q.metadata = self.metadata;
        Ok(q)
    }
}

fn usage_event(e: StoredEvent) -> wire::UsageEvent {
    wire::UsageEvent {
        event_id: e.event_id,
        occurred_at: wire::format_timestamp(e.occurred_at),
        user_id: e.user_id,
        account_id: e.account_id,
        anonymous_id: e.anonymous_id,
        event: e.event,
        quantity: e.quantity,
        metadata: e.metadata.to_map(),
        cost_micros: e.cost_micros,
        status: e.status,
        plan_id: e.plan_id,
        reservation_id: e.reservation_id,
        reasons: e.reasons,
        overage: e.overage,
        credits_used: e.credits_used,
    }
}

/// Usage events, newest first, a page at a time. Besides the parameters below, any number of
/// `metadata.KEY=VALUE` (up to 32) keeps the events whose metadata has KEY with exactly VALUE.
#[utoipa::path(
    get, path = "/v1/events", tag = "events",
    params(EventsParams),
    responses(
        (status = 200, body = wire::EventsResponse),
        (status = 400, body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn events(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    RawQuery(raw): RawQuery,
) -> Result<Json<wire::EventsResponse>, ApiError> {
    let (params, metadata): (EventsParams, _) = split_query(raw.as_deref())?;
    let limit = params.limit.unwrap_or(wire::EVENTS_PAGE_DEFAULT);
    if !(1..=wire::EVENTS_PAGE_MAX).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be 1 to 1000"));
    }
    let filters = Filters {
        user_id: params.user_id,
        event: params.event,
        status: params.status,
        from: params.from,
        to: params.to,
        metadata,
    };
    let mut query = filters.query(&caller, limit + 1)?;
    query.before = match &params.cursor {
        Some(c) => {
            let (ms, id) = wire::parse_events_cursor(c)?;
            let at = jiff::Timestamp::from_millisecond(ms)
                .map_err(|_| ApiError::invalid("cursor", "not a cursor this API gave"))?;
            Some((at, id))
        }
        None => None,
    };
    let mut rows = state.store.events(query).await?;
    let next_cursor = (rows.len() > limit).then(|| {
        rows.truncate(limit);
        let last = &rows[limit - 1];
        wire::events_cursor(last.occurred_at.as_millisecond(), &last.event_id)
    });
    Ok(Json(wire::EventsResponse {
        events: rows.into_iter().map(usage_event).collect(),
        next_cursor,
    }))
}

/// One usage event, with its prompt and response when they were logged.
#[utoipa::path(
    get, path = "/v1/events/{eventId}", tag = "events",
    params(("eventId" = String, Path)),
    responses(
        (status = 200, body = wire::UsageEventDetail),
        (status = 404, body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn event(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiPath(event_id): ApiPath<String>,
) -> Result<Json<wire::UsageEventDetail>, ApiError> {
    let unknown = || ApiError::not_found(format!("no usage event has id {event_id:?}"));
    if !looks_like(EVENT_PREFIX, &event_id) {
        return Err(unknown());
    }
    let found = state
        .store
        .event(caller.auth.env, event_id.clone())
        .await?
        .ok_or_else(unknown)?;
    Ok(Json(wire::UsageEventDetail {
        event: usage_event(found.event),
        prompt: found.prompt,
        response: found.response,
        truncated: found.truncated,
    }))
}

/// Every usage event of a range, streamed newest first: NDJSON (one event a line, as
/// `GET /v1/events` shows it) or CSV (a header line, then a row an event). Takes the filters of
/// `GET /v1/events` (`metadata.KEY=VALUE` too), without `limit` and `cursor`.
#[utoipa::path(
    get, path = "/v1/events/export", tag = "events",
    params(ExportParams),
    responses(
        (status = 200, description = "NDJSON (`format=ndjson`, the default) or CSV (`format=csv`)",
            content((String = "application/x-ndjson"), (String = "text/csv"))),
        (status = 400, body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn export(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let (params, metadata): (ExportParams, _) = split_query(raw.as_deref())?;
    let csv = match params.format.as_deref() {
        None | Some("ndjson") => false,
        Some("csv") => true,
        Some(_) => return Err(ApiError::invalid("format", "ndjson or csv")),
    };
    let filters = Filters {
        user_id: params.user_id,
        event: params.event,
        status: params.status,
        from: params.from,
        to: params.to,
        metadata,
    };
    let query = filters.query(&caller, EXPORT_PAGE)?;
    // The first page is read before answering, so a store that is down answers 503, not a
    // 200 with an empty body.
    let first = state.store.events(query.clone()).await?;
    let header_line = csv.then(|| format!("{}\r\n", wire::EVENT_CSV_COLUMNS.join(",")));
    let store = state.store.clone();
    let pages = futures::stream::try_unfold(
        (Some(first), query, header_line),
        move |(page, mut query, header)| {
            let store = store.clone();
            async move {
                let rows = match page {
                    Some(rows) => rows,
                    None if query.before.is_none() => return Ok(None),
                    None => store.events(query.clone()).await?,
                };
                let mut out = header.unwrap_or_default();
                let done = rows.len() < EXPORT_PAGE;
                query.before = rows.last().map(|e| (e.occurred_at, e.event_id.clone()));
                for row in rows {
                    let event = usage_event(row);
                    if csv {
                        out.push_str(&event.csv_record());
                        out.push_str("\r\n");
                    } else {
                        out.push_str(&serde_json::to_string(&event).unwrap_or_default());
                        out.push('\n');
                    }
                }
                if done {
                    query.before = None;
                }
                if out.is_empty() {
                    return Ok(None);
                }
                Ok::<_, tollgate_store::StoreError>(Some((Bytes::from(out), (None, query, None))))
            }
        },
    );
    let content_type = if csv {
        "text/csv; charset=utf-8"
    } else {
        "application/x-ndjson"
    };
    Ok((
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(pages),
    )
        .into_response())
}
