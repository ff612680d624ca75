//! Analytics (API.md §9): usage summed by any grouping and calendar buckets in a time zone, the
//! users who used most, revenue against cost, product events (`capture`) and funnels.
//!
//! The routes parse and bound the request, compute what is calendar arithmetic (bucket bounds,
//! funnel depth, revenue spread) with `tollgate-core`, and leave filtering and summing to the
//! store. Every figure is an exact integer.

use crate::auth::{Caller, SecretKey, SecretOrUserToken};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery};
use crate::ids::new_id;
use crate::AppState;
use axum::extract::State;
use axum::Json;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use tollgate_api as wire;
use tollgate_core::analytics::{self as calc, BucketError, BucketUnit};
use tollgate_core::input::METADATA_VALUE_BYTES_MAX;
use tollgate_core::plan::EventPattern;
use tollgate_core::window::{BillingInterval, IntervalUnit};
use tollgate_store::{
    AnalyticsQuery, AnalyticsRow, CaptureCommand, Dimension, FunnelQuery, Metric,
    ANALYTICS_BUCKETS_MAX, ANALYTICS_ROWS_MAX, FUNNEL_OCCURRENCES_MAX, REVENUE_SUBSCRIPTIONS_MAX,
};
use utoipa::IntoParams;

/// The range `top-users` and `margin` read when none is given: the last 30 days.
pub const ANALYTICS_RANGE_DEFAULT_DAYS: i64 = 30;
/// The longest range of `margin`, in days: revenue is spread period by period.
pub const MARGIN_RANGE_DAYS_MAX: i64 = 400;
/// The prefix capture ids take.
pub const CAPTURE_PREFIX: &str = "cap_";

/// The statuses analytics count when the filters name none: what was used.
const USED: [&str; 2] = ["committed", "tracked"];

fn metric_name(m: Metric) -> &'static str {
    match m {
        Metric::Events => "events",
        Metric::Quantity => "quantity",
        Metric::CostMicros => "costMicros",
        Metric::Users => "users",
    }
}

fn parse_metric(field: &str, s: &str) -> Result<Metric, ApiError> {
    Ok(match s {
        "events" => Metric::Events,
        "quantity" => Metric::Quantity,
        "costMicros" => Metric::CostMicros,
        "users" => Metric::Users,
        _ => {
            return Err(ApiError::invalid(
                field,
                format!("{s:?} is not a metric: events, quantity, costMicros or users"),
            ))
        }
    })
}

/// A metadata key as filters and groupings name it: 1 to 64 of `A-Z a-z 0-9 _ . : -`.
fn metadata_key(field: &str, key: &str) -> Result<String, ApiError> {
    let ok = !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    if !ok {
        return Err(ApiError::invalid(
            field,
            "a metadata key is 1 to 64 of A-Z a-z 0-9 _ . : -",
        ));
    }
    Ok(key.to_string())
}

fn values_of(field: &str, v: wire::MatchValues) -> Result<Vec<String>, ApiError> {
    let values = match v {
        wire::MatchValues::One(s) => vec![s],
        wire::MatchValues::Any(list) => list,
    };
    if values.is_empty() || values.len() > wire::ANALYTICS_FILTER_VALUES_MAX {
        return Err(ApiError::invalid(
            field,
            format!(
                "one value or a list of 1 to {}",
                wire::ANALYTICS_FILTER_VALUES_MAX
            ),
        ));
    }
    if values.iter().any(|s| s.len() > METADATA_VALUE_BYTES_MAX) {
        return Err(ApiError::invalid(field, "a value is at most 512 bytes"));
    }
    Ok(values)
}

fn event_pattern(field: &str, e: &str) -> Result<EventPattern, ApiError> {
    EventPattern::parse(e).map_err(|_| {
        ApiError::invalid(
            field,
            "an event name or a glob: 1 to 128 of A-Z a-z 0-9 _ . : - and *",
        )
    })
}

/// `[from, to)`, with `to` after `from`.
fn range(from: &str, to: &str) -> Result<(Timestamp, Timestamp), ApiError> {
    let from = wire::parse_timestamp("from", from)?;
    let to = wire::parse_timestamp("to", to)?;
    if to <= from {
        return Err(ApiError::invalid("to", "must be after from"));
    }
    Ok((from, to))
}

/// `[from, to)` of a GET route: `to` defaults to now, `from` to 30 days before `to`.
fn range_or_default(
    caller: &Caller,
    from: Option<String>,
    to: Option<String>,
) -> Result<(Timestamp, Timestamp), ApiError> {
    let to = match to {
        Some(t) => wire::parse_timestamp("to", &t)?,
        None => caller.now,
    };
    let from = match from {
        Some(f) => wire::parse_timestamp("from", &f)?,
        None => to
            .checked_sub(SignedDuration::from_hours(
                24 * ANALYTICS_RANGE_DEFAULT_DAYS,
            ))
            .map_err(|_| ApiError::invalid("to", "too early to count 30 days back from"))?,
    };
    if to <= from {
        return Err(ApiError::invalid("to", "must be after from"));
    }
    Ok((from, to))
}

fn too_many_rows() -> ApiError {
    ApiError::invalid(
        "groupBy",
        format!(
            "the answer would have more than {ANALYTICS_ROWS_MAX} rows: narrow the range, the \
             filters or the grouping"
        ),
    )
}

/// What `groupBy` asks for: dimensions in order, and at most one bucket unit (its position
/// among them kept for the answer's key order).
struct Grouping {
    dimensions: Vec<(String, Dimension)>,
    bucket: Option<BucketUnit>,
}

fn grouping(group_by: Vec<String>) -> Result<Grouping, ApiError> {
    if group_by.len() > wire::ANALYTICS_GROUP_BY_MAX {
        return Err(ApiError::invalid(
            "groupBy",
            format!("at most {} entries", wire::ANALYTICS_GROUP_BY_MAX),
        ));
    }
    let mut out = Grouping {
        dimensions: Vec::new(),
        bucket: None,
    };
    for (i, name) in group_by.into_iter().enumerate() {
        let field = format!("groupBy[{i}]");
        let seen = out.dimensions.iter().any(|(n, _)| *n == name)
            || out.bucket.is_some_and(|b| b.as_str() == name);
        if seen {
            // Grouping twice by one thing groups once.
            continue;
        }
        if let Some(unit) = BucketUnit::parse(&name) {
            if out.bucket.is_some() {
                return Err(ApiError::invalid(
                    field,
                    "one time bucket at most: hour, day, week or month",
                ));
            }
            out.bucket = Some(unit);
            continue;
        }
        let dimension = match name.as_str() {
            "userId" => Dimension::UserId,
            "accountId" => Dimension::AccountId,
            "event" => Dimension::Event,
            "planId" => Dimension::PlanId,
            "status" => Dimension::Status,
            other => match other.strip_prefix("metadata.") {
                Some(key) => Dimension::Metadata(metadata_key(&field, key)?),
                None => {
                    return Err(ApiError::invalid(
                        field,
                        format!(
                            "{name:?} is not a grouping: userId, accountId, event, planId, \
                             status, metadata.KEY, hour, day, week or month"
                        ),
                    ))
                }
            },
        };
        out.dimensions.push((name, dimension));
    }
    Ok(out)
}

/// The filters of an analytics query, checked, onto `q`.
fn apply_filters(q: &mut AnalyticsQuery, f: wire::AnalyticsFilters) -> Result<(), ApiError> {
    if let Some(user) = f.user_id {
        let user = wire::parse_path_user_id(user)
            .map_err(|e| ApiError::invalid("filters.userId", e.message))?;
        q.user_id = Some(user.into_string());
    }
    if let Some(account) = f.account_id {
        let account = wire::parse_path_account_id(account)
            .map_err(|e| ApiError::invalid("filters.accountId", e.message))?;
        q.account_id = Some(account.as_str().to_string());
    }
    if let Some(event) = &f.event {
        q.event = Some(event_pattern("filters.event", event)?);
    }
    if let Some(status) = f.status {
        let statuses = values_of("filters.status", status)?;
        if let Some(bad) = statuses
            .iter()
            .find(|s| !wire::EVENT_STATUSES.contains(&s.as_str()))
        {
            return Err(ApiError::invalid(
                "filters.status",
                format!("{bad:?} is not a status: committed, released, expired, tracked, denied"),
            ));
        }
        q.statuses = statuses;
    }
    if f.metadata.len() > wire::ANALYTICS_METADATA_FILTERS_MAX {
        return Err(ApiError::invalid(
            "filters.metadata",
            format!("at most {} keys", wire::ANALYTICS_METADATA_FILTERS_MAX),
        ));
    }
    for (key, values) in f.metadata {
        let field = format!("filters.metadata.{key}");
        let key = metadata_key(&field, &key)?;
        q.metadata.push((key, values_of(&field, values)?));
    }
    Ok(())
}

fn query(caller: &Caller, (from, to): (Timestamp, Timestamp)) -> AnalyticsQuery {
    AnalyticsQuery {
        env: caller.auth.env,
        from,
        to,
        now: caller.now,
        user_id: None,
        account_id: None,
        event: None,
        statuses: USED.iter().map(|s| s.to_string()).collect(),
        metadata: Vec::new(),
        group_by: Vec::new(),
        count_users: false,
        buckets: None,
        order_by: None,
        limit: ANALYTICS_ROWS_MAX + 1,
    }
}

fn metric_value(row: &AnalyticsRow, m: Metric) -> u64 {
    match m {
        Metric::Events => row.events,
        Metric::Quantity => row.quantity,
        Metric::CostMicros => row.cost_micros,
        Metric::Users => row.users,
    }
}

/// Usage events summed by the groups asked for, over a range, in a time zone.
#[utoipa::path(
    post, path = "/v1/analytics/usage", tag = "analytics",
    request_body = wire::AnalyticsUsageRequest,
    responses(
        (status = 200, body = wire::AnalyticsUsageResponse),
        (status = 400, body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn usage(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiJson(request): ApiJson<wire::AnalyticsUsageRequest>,
) -> Result<Json<wire::AnalyticsUsageResponse>, ApiError> {
    let (from, to) = range(&request.from, &request.to)?;
    let zone_name = request.timezone.as_deref().unwrap_or("UTC");
    if zone_name.len() > wire::TIMEZONE_BYTES_MAX {
        return Err(ApiError::invalid("timezone", "at most 64 bytes"));
    }
    let zone = TimeZone::get(zone_name).map_err(|_| {
        ApiError::invalid(
            "timezone",
            format!("{zone_name:?} is not an IANA time zone (e.g. Europe/Paris)"),
        )
    })?;
    let grouping = grouping(request.group_by)?;
    let mut metrics: Vec<Metric> = Vec::new();
    for (i, name) in request.metrics.iter().enumerate() {
        let m = parse_metric(&format!("metrics[{i}]"), name)?;
        if !metrics.contains(&m) {
            metrics.push(m);
        }
    }
    if metrics.is_empty() {
        metrics = vec![Metric::Events, Metric::Quantity, Metric::CostMicros];
    }
    let mut q = query(&caller, (from, to));
    apply_filters(&mut q, request.filters.unwrap_or_default())?;
    q.group_by = grouping.dimensions.iter().map(|(_, d)| d.clone()).collect();
    q.count_users = metrics.contains(&Metric::Users);
    let bounds = match grouping.bucket {
        None => None,
        Some(unit) => {
            let bounds = calc::bucket_bounds(from, to, unit, &zone, ANALYTICS_BUCKETS_MAX)
                .map_err(|e| match e {
                    BucketError::TooMany { max } => ApiError::invalid(
                        "groupBy",
                        format!("more than {max} {}s in the range", unit.as_str()),
                    ),
                    BucketError::OutOfRange => {
                        ApiError::invalid("to", "the range reaches past the calendar")
                    }
                })?;
            Some(bounds)
        }
    };
    q.buckets = bounds
        .as_ref()
        .map(|b| b.iter().map(|t| t.as_millisecond()).collect());
    let mut rows = state.store.analytics(q).await?;
    if rows.len() > ANALYTICS_ROWS_MAX {
        return Err(too_many_rows());
    }
    // Buckets in time order, then the groups by value (no value first), as both stores agree.
    rows.sort_by(|a, b| (a.bucket, &a.keys).cmp(&(b.bucket, &b.keys)));
    let rows = rows
        .into_iter()
        .map(|row| {
            let mut out = Map::new();
            if let (Some(unit), Some(bounds), Some(i)) = (grouping.bucket, &bounds, row.bucket) {
                let start = bounds.get(i).copied().unwrap_or(from);
                out.insert(
                    unit.as_str().to_string(),
                    Value::String(wire::format_timestamp(start)),
                );
            }
            for ((name, _), key) in grouping.dimensions.iter().zip(&row.keys) {
                out.insert(name.clone(), key.clone().map_or(Value::Null, Value::String));
            }
            for &m in &metrics {
                out.insert(
                    metric_name(m).to_string(),
                    Value::from(metric_value(&row, m)),
                );
            }
            out
        })
        .collect();
    Ok(Json(wire::AnalyticsUsageResponse { rows }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TopUsersParams {
    /// Events at or after this instant (RFC 3339; default 30 days before `to`).
    #[param(format = DateTime)]
    from: Option<String>,
    /// Events before this instant (RFC 3339; default now).
    #[param(format = DateTime)]
    to: Option<String>,
    /// What to rank by: costMicros (default), quantity or events.
    #[param(pattern = "^(costMicros|quantity|events)$")]
    by: Option<String>,
    /// Only events of this name, or matching this glob.
    #[param(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_.:*-]+$")]
    event: Option<String>,
    /// Users wanted, 1 to 1000 (default 10).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// The users who used most over a range (committed and tracked usage), largest first.
#[utoipa::path(
    get, path = "/v1/analytics/top-users", tag = "analytics",
    params(TopUsersParams),
    responses(
        (status = 200, body = wire::TopUsersResponse),
        (status = 400, body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn top_users(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiQuery(params): ApiQuery<TopUsersParams>,
) -> Result<Json<wire::TopUsersResponse>, ApiError> {
    let by = match params.by.as_deref().unwrap_or("costMicros") {
        "users" => return Err(ApiError::invalid("by", "costMicros, quantity or events")),
        other => parse_metric("by", other)?,
    };
    let limit = params.limit.unwrap_or(wire::TOP_USERS_DEFAULT);
    if !(1..=wire::TOP_USERS_MAX).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("must be 1 to {}", wire::TOP_USERS_MAX),
        ));
    }
    let mut q = query(&caller, range_or_default(&caller, params.from, params.to)?);
    if let Some(event) = &params.event {
        q.event = Some(event_pattern("event", event)?);
    }
    q.group_by = vec![Dimension::UserId];
    q.order_by = Some(by);
    q.limit = limit;
    let rows = state.store.analytics(q).await?;
    let users = rows
        .into_iter()
        .map(|r| wire::TopUser {
            user_id: r.keys.into_iter().next().flatten().unwrap_or_default(),
            events: r.events,
            quantity: r.quantity,
            cost_micros: r.cost_micros,
        })
        .collect();
    Ok(Json(wire::TopUsersResponse { users }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MarginParams {
    /// From this instant (RFC 3339; default 30 days before `to`).
    #[param(format = DateTime)]
    from: Option<String>,
    /// Before this instant (RFC 3339; default now). At most 400 days after `from`.
    #[param(format = DateTime)]
    to: Option<String>,
    /// `userId` (default) or `planId`.
    #[serde(rename = "groupBy")]
    #[param(rename = "groupBy", pattern = "^(userId|planId)$")]
    group_by: Option<String>,
}

/// What one plan's price brings per billing period, as revenue is spread from it.
struct Priced {
    micros_per_period: u64,
    period: BillingInterval,
}

/// Each plan's price per period in micros, from the stored document (a plan without a price
/// brings nothing).
fn prices(plans: &crate::plan_cache::CachedPlans) -> BTreeMap<String, Priced> {
    let mut out = BTreeMap::new();
    for plan in &plans.document.plans {
        let json = plans.json["plans"]
            .as_array()
            .and_then(|all| all.iter().find(|j| j["id"].as_str() == Some(&plan.id)));
        let Some(price) = json.and_then(|j| j.get("price")) else {
            continue;
        };
        let amount = price["amount"].as_u64().unwrap_or(0);
        let currency = price["currency"].as_str().unwrap_or("usd");
        let period = match price["interval"].as_str().and_then(IntervalUnit::parse) {
            Some(unit) => BillingInterval { unit, count: 1 },
            None => plan.billing,
        };
        let micros = amount.saturating_mul(calc::micros_per_minor_unit(currency));
        out.insert(
            plan.id.clone(),
            Priced {
                micros_per_period: micros,
                period,
            },
        );
    }
    out
}

/// Revenue against cost over a range, per user or per plan. Revenue spreads each
/// subscription's plan price evenly over its billing periods (counted from its `cycleStart`);
/// cost is the `costMicros` of its committed and tracked usage events.
#[utoipa::path(
    get, path = "/v1/analytics/margin", tag = "analytics",
    params(MarginParams),
    responses(
        (status = 200, body = wire::MarginResponse),
        (status = 400, body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn margin(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiQuery(params): ApiQuery<MarginParams>,
) -> Result<Json<wire::MarginResponse>, ApiError> {
    let by_plan = match params.group_by.as_deref().unwrap_or("userId") {
        "userId" => false,
        "planId" => true,
        _ => return Err(ApiError::invalid("groupBy", "userId or planId")),
    };
    let (from, to) = range_or_default(&caller, params.from, params.to)?;
    if to.duration_since(from) > SignedDuration::from_hours(24 * MARGIN_RANGE_DAYS_MAX) {
        return Err(ApiError::invalid(
            "to",
            format!("at most {MARGIN_RANGE_DAYS_MAX} days after from"),
        ));
    }
    let plans = state.plans.get(&*state.store, caller.auth.env).await?;
    let prices = prices(&plans);
    let mut q = query(&caller, (from, to));
    q.group_by = vec![if by_plan {
        Dimension::PlanId
    } else {
        Dimension::UserId
    }];
    let costs = state.store.analytics(q).await?;
    if costs.len() > ANALYTICS_ROWS_MAX {
        return Err(too_many_rows());
    }
    let sources = state
        .store
        .revenue_sources(caller.auth.env, REVENUE_SUBSCRIPTIONS_MAX + 1)
        .await?;
    if sources.len() > REVENUE_SUBSCRIPTIONS_MAX {
        return Err(ApiError::invalid(
            "groupBy",
            format!("more than {REVENUE_SUBSCRIPTIONS_MAX} subscriptions to spread"),
        ));
    }
    // (revenue, cost) by user or plan id.
    let mut totals: BTreeMap<String, (u128, u64)> = BTreeMap::new();
    for s in &sources {
        let user = s.subject.strip_prefix("u:");
        if !by_plan && user.is_none() {
            // An account's subscription is no one user's revenue.
            continue;
        }
        let history: Vec<(&str, Timestamp, Option<&str>)> = (s.history.iter())
            .map(|(k, at, p)| (k.as_str(), *at, p.as_deref()))
            .collect();
        for spell in calc::plan_spells(&s.plan_id, s.created_at, s.ends_at, &history) {
            let lo = spell.start.max(from);
            let hi = spell.end.map_or(to, |e| e.min(to));
            let Some(price) = prices.get(&spell.plan_id) else {
                continue;
            };
            if lo >= hi {
                continue;
            }
            let revenue = calc::spread_revenue(
                price.micros_per_period,
                s.cycle_start,
                price.period,
                (lo, hi),
            )
            .map_err(|_| ApiError::invalid("to", "the range reaches past the calendar"))?;
            let key = if by_plan {
                spell.plan_id.clone()
            } else {
                user.unwrap_or_default().to_string()
            };
            totals.entry(key).or_default().0 += revenue;
        }
    }
    for row in costs {
        // Events on no plan (an environment without one) have no plan id to count under.
        if let Some(key) = row.keys.into_iter().next().flatten() {
            totals.entry(key).or_default().1 += row.cost_micros;
        }
    }
    if totals.len() > wire::MARGIN_ROWS_MAX {
        return Err(too_many_rows());
    }
    let mut rows = Vec::with_capacity(totals.len());
    for (key, (revenue, cost)) in totals {
        let revenue = u64::try_from(revenue).unwrap_or(u64::MAX);
        let margin = i128::from(revenue) - i128::from(cost);
        let margin = i64::try_from(margin).map_err(|_| {
            ApiError::invalid("to", "a margin is beyond 2^63 - 1: narrow the range")
        })?;
        let (user_id, plan_id) = if by_plan {
            (None, Some(key))
        } else {
            (Some(key), None)
        };
        rows.push(wire::MarginRow {
            user_id,
            plan_id,
            revenue_micros: revenue,
            cost_micros: cost,
            margin_micros: margin,
        });
    }
    // Least margin first: the users or plans that cost more than they bring lead.
    rows.sort_by(|a, b| {
        (a.margin_micros, &a.user_id, &a.plan_id).cmp(&(b.margin_micros, &b.user_id, &b.plan_id))
    });
    Ok(Json(wire::MarginResponse { rows }))
}

/// Records a product event (a sign-up, a paywall seen): never metered, never touches a quota.
/// A secret key names any user; a publishable key with a user token records for the token's
/// user only.
#[utoipa::path(
    post, path = "/v1/capture", tag = "analytics",
    request_body = wire::CaptureRequest,
    params(
        ("X-Tollgate-User-Token" = Option<String>, Header,
            description = "With a publishable key: the user token whose user the event is for"),
    ),
    responses(
        (status = 200, body = wire::CaptureResponse),
        (status = 400, body = wire::ErrorBody),
        (status = 403, body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn capture(
    State(state): State<AppState>,
    caller: SecretOrUserToken,
    ApiJson(mut request): ApiJson<wire::CaptureRequest>,
) -> Result<Json<wire::CaptureResponse>, ApiError> {
    let caller = match caller {
        SecretOrUserToken::Secret(caller) => caller,
        SecretOrUserToken::User(token) => {
            let own = token.user_id.as_str();
            if request.anonymous_id.is_some()
                || request.user_id.as_deref().is_some_and(|u| u != own)
            {
                return Err(ApiError::Forbidden(
                    "a user token records events of its own user only".into(),
                ));
            }
            request.user_id = Some(own.to_string());
            token.caller
        }
    };
    let input = request.parse(caller.now)?;
    state
        .store
        .capture(CaptureCommand {
            env: caller.auth.env,
            capture_id: new_id(CAPTURE_PREFIX),
            subject: input.subject.into_string(),
            event: input.event.as_str().to_string(),
            properties: input.properties,
            occurred_at: input.occurred_at,
            received_at: caller.now,
        })
        .await?;
    Ok(Json(wire::CaptureResponse { captured: true }))
}

/// How many users did each step of a funnel, in order, within the window of their first step.
#[utoipa::path(
    post, path = "/v1/analytics/funnel", tag = "analytics",
    request_body = wire::FunnelRequest,
    responses(
        (status = 200, body = wire::FunnelResponse),
        (status = 400, body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn funnel(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiJson(request): ApiJson<wire::FunnelRequest>,
) -> Result<Json<wire::FunnelResponse>, ApiError> {
    let (from, to) = range(&request.from, &request.to)?;
    if request.steps.is_empty() || request.steps.len() > wire::FUNNEL_STEPS_MAX {
        return Err(ApiError::invalid(
            "steps",
            format!("1 to {} event names", wire::FUNNEL_STEPS_MAX),
        ));
    }
    for (i, step) in request.steps.iter().enumerate() {
        wire::parse_event_filter(Some(step.clone()))
            .map_err(|e| ApiError::invalid(format!("steps[{i}]"), e.message))?;
    }
    if !(1..=wire::FUNNEL_WITHIN_SECONDS_MAX).contains(&request.within_seconds) {
        return Err(ApiError::invalid(
            "withinSeconds",
            format!("must be 1 to {}", wire::FUNNEL_WITHIN_SECONDS_MAX),
        ));
    }
    let within = SignedDuration::from_secs(request.within_seconds as i64);
    // Later steps may fall after `to`, up to the window of a first step just before it.
    let reach = to
        .checked_add(within)
        .map_err(|_| ApiError::invalid("to", "too late to add the window to"))?;
    let mut events: Vec<String> = request.steps.clone();
    events.sort();
    events.dedup();
    let occurrences = state
        .store
        .funnel_occurrences(FunnelQuery {
            env: caller.auth.env,
            from,
            to: reach,
            events,
            limit: FUNNEL_OCCURRENCES_MAX + 1,
        })
        .await?;
    if occurrences.len() > FUNNEL_OCCURRENCES_MAX {
        return Err(ApiError::invalid(
            "from",
            format!("more than {FUNNEL_OCCURRENCES_MAX} step events in the range: narrow it"),
        ));
    }
    let counts = calc::funnel(
        &request.steps,
        within.as_millis() as i64,
        to.as_millisecond(),
        occurrences
            .iter()
            .map(|o| (o.user_id.as_str(), o.event.as_str(), o.at_ms)),
    );
    let steps = request
        .steps
        .into_iter()
        .zip(counts)
        .map(|(event, users)| wire::FunnelStep { event, users })
        .collect();
    Ok(Json(wire::FunnelResponse { steps }))
}
