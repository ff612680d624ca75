//! `GET /v1/plans/recommendation` (API.md §12): the user's usage events of the last calendar
//! months, replayed against every public plan (`tollgate_core::recommend`), and the cheapest
//! plan that would have covered them all, with the figures behind the choice.

use crate::auth::SecretKey;
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::AppState;
use axum::extract::State;
use axum::Json;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use tollgate_api as wire;
use tollgate_core::input::{EventName, UserId};
use tollgate_core::plan::{Plan, WindowSpec};
use tollgate_core::recommend::{judged, peak, Period, Used};
use tollgate_store::EventsQuery;
use utoipa::IntoParams;

/// Months replayed unless `periods` says otherwise, and at most.
pub const RECOMMENDATION_PERIODS_DEFAULT: u32 = 3;
pub const RECOMMENDATION_PERIODS_MAX: u32 = 12;
/// Most usage events one recommendation reads (newest first).
pub const RECOMMENDATION_EVENTS_MAX: usize = 200_000;
/// Events read per store query.
const PAGE: usize = 1_000;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RecommendationParams {
    /// The user whose usage is replayed.
    #[serde(rename = "userId")]
    #[param(rename = "userId", min_length = 1, max_length = 256)]
    user_id: String,
    /// Calendar months (UTC) replayed, the current one included: 1 to 12 (default 3).
    #[param(minimum = 1, maximum = 12)]
    periods: Option<u32>,
}

/// The cheapest public plan that would have covered the user's last months of usage.
#[utoipa::path(
    get, path = "/v1/plans/recommendation", tag = "plans",
    params(RecommendationParams),
    responses(
        (status = 200, body = wire::RecommendationResponse),
        (status = 400, body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn recommendation(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiQuery(params): ApiQuery<RecommendationParams>,
) -> Result<Json<wire::RecommendationResponse>, ApiError> {
    let user_id = wire::parse_path_user_id(params.user_id)?;
    let count = params.periods.unwrap_or(RECOMMENDATION_PERIODS_DEFAULT);
    if !(1..=RECOMMENDATION_PERIODS_MAX).contains(&count) {
        return Err(ApiError::invalid(
            "periods",
            format!("must be 1 to {RECOMMENDATION_PERIODS_MAX}, got {count}"),
        ));
    }
    let now = caller.now;
    let periods = months(now, count)?;
    let plans = state.plans.get(&*state.store, caller.auth.env).await?;
    let public: Vec<(&Plan, &Value)> = plans
        .document
        .plans
        .iter()
        .filter_map(|p| {
            let json = plans.json["plans"]
                .as_array()?
                .iter()
                .find(|j| j["id"].as_str() == Some(p.id.as_str()))?;
            wire::is_public(json).then_some((p, json))
        })
        .collect();
    // Lifetime limits count everything the user ever used; the others only the periods.
    let lifetime = public.iter().any(|(p, _)| {
        p.limits
            .iter()
            .any(|l| matches!(l.window, WindowSpec::Lifetime))
    });
    let from = (!lifetime).then_some(periods[0].start);
    let (used, truncated) = usage(&state, caller.auth.env, &user_id, from).await?;

    let mut figures: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut candidates = Vec::with_capacity(public.len());
    for (plan, json) in &public {
        let mut exceeded = Vec::new();
        for limit in plan.limits.iter().filter(|l| judged(l)) {
            let peaks = periods
                .iter()
                .map(|p| peak(limit, &used, p))
                .collect::<Result<Vec<u64>, _>>()
                .map_err(|e| ApiError::Internal(format!("replaying usage: {e}")))?;
            if let Some((i, &worst)) = peaks.iter().enumerate().max_by_key(|(_, &n)| n) {
                if worst > limit.quota {
                    exceeded.push(wire::Exceeded {
                        limit_id: limit.id.clone(),
                        quota: limit.quota,
                        peak: worst,
                        period_start: wire::format_timestamp(periods[i].start),
                    });
                }
            }
            figures.entry(limit.id.clone()).or_insert(peaks);
        }
        let price = json.get("price").filter(|p| !p.is_null()).cloned();
        candidates.push(wire::Candidate {
            plan_id: plan.id.clone(),
            fits: exceeded.is_empty(),
            yearly_amount: price.as_ref().map_or(0, yearly),
            price,
            exceeded,
        });
    }
    // Cheapest first; the document's order among equals (a stable sort).
    candidates.sort_by_key(|c| c.yearly_amount);
    let chosen = candidates.iter().find(|c| c.fits);
    let reason = reason(chosen, &candidates);
    Ok(Json(wire::RecommendationResponse {
        user_id: user_id.into_string(),
        plan_id: chosen.map(|c| c.plan_id.clone()),
        reason,
        periods: periods
            .iter()
            .enumerate()
            .map(|(i, p)| wire::RecommendationPeriod {
                start: wire::format_timestamp(p.start),
                end: wire::format_timestamp(p.end),
                usage: figures.iter().map(|(id, v)| (id.clone(), v[i])).collect(),
            })
            .collect(),
        candidates,
        events_read: used.len() as u64,
        truncated,
    }))
}

/// The last `count` calendar months in UTC, oldest first; the last one ends now.
fn months(now: Timestamp, count: u32) -> Result<Vec<Period>, ApiError> {
    let out_of_range = |e: jiff::Error| ApiError::Internal(format!("months before now: {e}"));
    let today = now.to_zoned(TimeZone::UTC).date();
    let this_month = Date::new(today.year(), today.month(), 1).map_err(out_of_range)?;
    let mut periods = Vec::with_capacity(count as usize);
    for back in (0..count).rev() {
        let start = this_month
            .checked_sub((back as i64).months())
            .map_err(out_of_range)?;
        let end = start.checked_add(1.month()).map_err(out_of_range)?;
        let ts = |d: Date| {
            d.to_zoned(TimeZone::UTC)
                .map(|z| z.timestamp())
                .map_err(out_of_range)
        };
        periods.push(Period {
            start: ts(start)?,
            end: if back == 0 { now } else { ts(end)? },
        });
    }
    Ok(periods)
}

/// The user's committed and tracked usage since `from` (all of it for `None`), oldest first,
/// and whether the cap cut the oldest off.
async fn usage(
    state: &AppState,
    env: tollgate_store::EnvId,
    user: &UserId,
    from: Option<Timestamp>,
) -> Result<(Vec<Used>, bool), ApiError> {
    let mut used = Vec::new();
    let mut before = None;
    let mut read = 0usize;
    loop {
        let rows = state
            .store
            .events(EventsQuery {
                user_id: Some(user.clone()),
                before: before.clone(),
                ..EventsQuery::all(env, PAGE)
            })
            .await?;
        let last_page = rows.len() < PAGE;
        for row in rows {
            if from.is_some_and(|f| row.occurred_at < f) {
                used.reverse();
                return Ok((used, false));
            }
            read += 1;
            if read > RECOMMENDATION_EVENTS_MAX {
                used.reverse();
                return Ok((used, true));
            }
            before = Some((row.occurred_at, row.event_id.clone()));
            if row.status != "committed" && row.status != "tracked" {
                continue;
            }
            let Ok(event) = EventName::parse(row.event) else {
                continue;
            };
            used.push(Used {
                at: row.occurred_at,
                event,
                metadata: row.metadata,
                quantity: row.quantity,
            });
        }
        if last_page {
            used.reverse();
            return Ok((used, false));
        }
    }
}

/// A plan price over a year, in minor units: `{"amount", "interval"}` by month, year, week or
/// day (a month without an interval).
fn yearly(price: &Value) -> u64 {
    let amount = price["amount"].as_u64().unwrap_or(0);
    let per_year = match price["interval"].as_str() {
        Some("year") => 1,
        Some("week") => 52,
        Some("day") => 365,
        _ => 12,
    };
    amount.saturating_mul(per_year)
}

fn reason(chosen: Option<&wire::Candidate>, candidates: &[wire::Candidate]) -> String {
    let denial = |c: &wire::Candidate| {
        c.exceeded
            .iter()
            .map(|e| {
                format!(
                    "{} (peak {} against a quota of {}, in the month from {})",
                    e.limit_id,
                    e.peak,
                    e.quota,
                    &e.period_start[..10]
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    match chosen {
        None if candidates.is_empty() => "the plan document has no public plan".into(),
        None => {
            let largest = candidates.last().map(|c| (c.plan_id.as_str(), denial(c)));
            match largest {
                Some((id, why)) => format!(
                    "no public plan would have covered this usage; even {id} would have denied {why}"
                ),
                None => "no public plan would have covered this usage".into(),
            }
        }
        Some(c) => {
            let cheaper: Vec<String> = candidates
                .iter()
                .take_while(|o| o.plan_id != c.plan_id)
                .filter(|o| !o.fits)
                .map(|o| format!("{} would have denied {}", o.plan_id, denial(o)))
                .collect();
            if cheaper.is_empty() {
                format!(
                    "{} is the cheapest public plan, and it would have covered every period",
                    c.plan_id
                )
            } else {
                format!(
                    "{} is the cheapest public plan that would have covered every period: {}",
                    c.plan_id,
                    cheaper.join("; ")
                )
            }
        }
    }
}
