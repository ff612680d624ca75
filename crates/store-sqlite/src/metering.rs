//! Metering on SQLite: reserve, commit, release, extend, expire, track, check and usage.
//!
//! Each function runs on one connection inside the caller's transaction (the writer's batch for
//! writes, a read snapshot for check and usage): it loads the counters an event touches, asks
//! `tollgate-core` to decide, and writes what was decided. `reserved` is never stored: it is the
//! sum of the holds of pending reservations that have not expired at `now`, so an expired
//! reservation never holds quota, swept or not.

use crate::{internal, ms, ts};
use jiff::Timestamp;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::BTreeMap;
use tollgate_core::decision::{self, CounterState, DenyReason, LimitCheck, SettleInput};
use tollgate_core::input::{Metadata, StoredText};
use tollgate_core::plan::{
    Enforcement, Limit, LimitKind, PlanDocument, Scope, UnmatchedEvents, WindowSpec,
};
use tollgate_core::subscription::{self, Resolved, Subscription, SubscriptionStatus};
use tollgate_store::*;

/// The counter key of a user's own limits.
pub(crate) fn user_subject(user_id: &str) -> String {
    format!("u:{user_id}")
}

/// Where a counter's usage lives.
#[derive(Debug, Clone)]
enum CounterWindow {
    /// A fixed window keyed by its start (lifetime and concurrency use key 0).
    Fixed {
        key: i64,
        start: Timestamp,
        end: Option<Timestamp>,
        /// A first_use window that this use would open (nothing counted in it yet).
        opening: bool,
    },
    /// The last `seconds` before the instant asked about.
    Rolling { seconds: u32 },
}

impl CounterWindow {
    fn key(&self) -> i64 {
        match self {
            CounterWindow::Fixed { key, .. } => *key,
            CounterWindow::Rolling { .. } => 0,
        }
    }
}

/// One limit's counter for one subject, with what it takes to render it.
#[derive(Debug, Clone)]
struct Counter {
    limit_id: String,
    label: String,
    unit: String,
    kind: LimitKind,
    enforcement: Enforcement,
    scope: Scope,
    multiplier: u64,
    quota: u64,
    subject: String,
    window_type: &'static str,
    window_seconds: u32,
    window: CounterWindow,
}

fn window_type(spec: &WindowSpec) -> (&'static str, u32) {
    match spec {
        WindowSpec::Calendar { .. } => ("calendar", 0),
        WindowSpec::Subscription => ("subscription", 0),
        WindowSpec::Rolling { seconds } => ("rolling", *seconds),
        WindowSpec::FirstUse { seconds } => ("first_use", *seconds),
        WindowSpec::Lifetime => ("lifetime", 0),
    }
}

fn kind_str(k: LimitKind) -> &'static str {
    match k {
        LimitKind::Consumable => "consumable",
        LimitKind::Concurrency => "concurrency",
    }
}
fn enforcement_str(e: Enforcement) -> &'static str {
    match e {
        Enforcement::Hard => "hard",
        Enforcement::Soft => "soft",
    }
}
fn scope_str(s: Scope) -> &'static str {
    match s {
        Scope::User => "user",
        Scope::Account => "account",
    }
}

/// The counter of `limit` for the subject at instant `at`.
fn counter_for(
    conn: &Connection,
    env: EnvId,
    limit: &Limit,
    resolved: Resolved<'_>,
    subject: &str,
    at: Timestamp,
) -> StoreResult<Counter> {
    let (window_type, window_seconds) = window_type(&limit.window);
    let quota = resolved
        .subscription
        .map_or(limit.quota, |s| s.quota(&limit.id, limit.quota));
    let window = if limit.kind == LimitKind::Concurrency {
        CounterWindow::Fixed {
            key: 0,
            start: Timestamp::UNIX_EPOCH,
            end: None,
            opening: false,
        }
    } else if let WindowSpec::Rolling { seconds } = limit.window {
        CounterWindow::Rolling { seconds }
    } else {
        let current = match limit.window {
            WindowSpec::FirstUse { .. } => conn
                .prepare_cached(
                    "SELECT MAX(window_key) FROM counters
                     WHERE env_id = ?1 AND limit_id = ?2 AND subject = ?3",
                )
                .and_then(|mut s| {
                    s.query_row(params![env.0, limit.id, subject], |r| {
                        r.get::<_, Option<i64>>(0)
                    })
                })
                .map_err(internal)?
                .map(ts),
            _ => None,
        };
        let bounds =
            subscription::limit_window(&limit.window, resolved, current, at).map_err(|e| {
                StoreError::Invalid {
                    field: "occurredAt".into(),
                    message: e.to_string(),
                }
            })?;
        let opening =
            matches!(limit.window, WindowSpec::FirstUse { .. }) && current != Some(bounds.start);
        let key = match limit.window {
            WindowSpec::Lifetime => 0,
            _ => ms(bounds.start),
        };
        CounterWindow::Fixed {
            key,
            start: bounds.start,
            end: bounds.end,
            opening,
        }
    };
    Ok(Counter {
        limit_id: limit.id.clone(),
        label: limit.label.clone(),
        unit: limit.unit.clone(),
        kind: limit.kind,
        enforcement: limit.enforcement,
        scope: limit.scope,
        multiplier: limit.multiplier,
        quota,
        subject: subject.to_string(),
        window_type,
        window_seconds,
        window,
    })
}

/// Loads `used` (at instant `at`) and `reserved` (holds unexpired at `now`), and for rolling
/// windows the time of the oldest usage still counted.
fn load_state(
    conn: &Connection,
    env: EnvId,
    c: &Counter,
    at: Timestamp,
    now: Timestamp,
) -> StoreResult<(CounterState, Option<Timestamp>)> {
    let reserved: i64 = conn
        .prepare_cached(
            "SELECT COALESCE(SUM(held), 0) FROM reservation_limits
             WHERE env_id = ?1 AND limit_id = ?2 AND subject = ?3 AND window_key = ?4
               AND held > 0 AND expires_at_ms > ?5",
        )
        .and_then(|mut s| {
            s.query_row(
                params![env.0, c.limit_id, c.subject, c.window.key(), ms(now)],
                |r| r.get(0),
            )
        })
        .map_err(internal)?;
    let (used, oldest) = match (&c.kind, &c.window) {
        (LimitKind::Concurrency, _) => (0, None),
        (_, CounterWindow::Fixed { opening: true, .. }) => (0, None),
        (_, CounterWindow::Fixed { key, .. }) => {
            let used: Option<i64> = conn
                .prepare_cached(
                    "SELECT used FROM counters
                     WHERE env_id = ?1 AND limit_id = ?2 AND subject = ?3 AND window_key = ?4",
                )
                .and_then(|mut s| {
                    s.query_row(params![env.0, c.limit_id, c.subject, key], |r| r.get(0))
                        .optional()
                })
                .map_err(internal)?;
            (used.unwrap_or(0), None)
        }
        (_, CounterWindow::Rolling { seconds }) => {
            let from = ms(at) - i64::from(*seconds) * 1000;
            let (used, oldest): (i64, Option<i64>) = conn
                .prepare_cached(
                    "SELECT COALESCE(SUM(units), 0), MIN(at_ms) FROM rolling_usage
                     WHERE env_id = ?1 AND limit_id = ?2 AND subject = ?3
                       AND at_ms > ?4 AND at_ms <= ?5",
                )
                .and_then(|mut s| {
                    s.query_row(params![env.0, c.limit_id, c.subject, from, ms(at)], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                })
                .map_err(internal)?;
            (used, oldest.map(ts))
        }
    };
    Ok((
        CounterState {
            used: used.max(0) as u64,
            reserved: reserved.max(0) as u64,
        },
        oldest,
    ))
}

fn render(
    c: &Counter,
    state: CounterState,
    oldest: Option<Timestamp>,
    at: Timestamp,
) -> LimitState {
    let (window_start, resets_at) = match &c.window {
        CounterWindow::Fixed { opening: true, .. } => (None, None),
        CounterWindow::Fixed { start, end, .. } => (Some(*start), *end),
        CounterWindow::Rolling { seconds } => {
            let span = jiff::SignedDuration::from_secs(i64::from(*seconds));
            (
                at.checked_sub(span).ok(),
                oldest.and_then(|o| o.checked_add(span).ok()),
            )
        }
    };
    LimitState {
        limit_id: c.limit_id.clone(),
        label: c.label.clone(),
        unit: c.unit.clone(),
        kind: c.kind,
        scope: c.scope,
        enforcement: c.enforcement,
        quota: c.quota,
        used: state.used,
        reserved: state.reserved,
        remaining: state.remaining(c.quota),
        window_start,
        resets_at,
    }
}

pub(crate) fn load_subscription(
    conn: &Connection,
    env: EnvId,
    subject: &str,
) -> StoreResult<Option<Subscription>> {
    conn.prepare_cached(
        "SELECT subscription_id, plan_id, status, cycle_start_ms, ends_at_ms, custom_limits,
                created_at_ms
         FROM subscriptions WHERE env_id = ?1 AND subject = ?2",
    )
    .and_then(|mut s| {
        s.query_row(params![env.0, subject], |r| {
            let status: String = r.get(2)?;
            let custom: String = r.get(5)?;
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                status,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<i64>>(4)?,
                custom,
                r.get::<_, i64>(6)?,
            ))
        })
        .optional()
    })
    .map_err(internal)?
    .map(|(id, plan_id, status, start, ends, custom, created)| {
        let custom_limits: BTreeMap<String, u64> = serde_json::from_str(&custom)
            .map_err(|e| StoreError::Internal(format!("custom limits: {e}")))?;
        Ok(Subscription {
            id,
            plan_id,
            status: SubscriptionStatus::parse(&status)
                .ok_or_else(|| StoreError::Internal(format!("bad status {status}")))?,
            cycle_start: ts(start),
            ends_at: ends.map(ts),
            custom_limits,
            created_at: ts(created),
        })
    })
    .transpose()
}

/// The effective plan's limits that count this event, as counters at `at`.
fn matching_counters<'a>(
    conn: &Connection,
    env: EnvId,
    resolved: Resolved<'a>,
    subject: &str,
    event: &tollgate_core::input::EventName,
    metadata: &Metadata,
    at: Timestamp,
) -> StoreResult<Vec<(&'a Limit, Counter)>> {
    resolved
        .plan
        .limits
        .iter()
        .filter(|l| l.matches(event, metadata))
        .map(|l| Ok((l, counter_for(conn, env, l, resolved, subject, at)?)))
        .collect()
}

/// The states of counters at `at` with holds unexpired at `now`.
fn states(
    conn: &Connection,
    env: EnvId,
    counters: &[(&Limit, Counter)],
    at: Timestamp,
    now: Timestamp,
) -> StoreResult<Vec<(CounterState, Option<Timestamp>)>> {
    counters
        .iter()
        .map(|(_, c)| load_state(conn, env, c, at, now))
        .collect()
}

struct EventRow<'a> {
    event_id: &'a str,
    occurred_at: Timestamp,
    user_id: &'a str,
    event: &'a str,
    quantity: u64,
    metadata: &'a Metadata,
    cost_micros: Option<u64>,
    status: &'a str,
    plan_id: Option<&'a str>,
    reservation_id: Option<&'a str>,
    reasons: &'a [DenyReason],
    overage: u64,
    prompt: Option<&'a StoredText>,
    response: Option<&'a StoredText>,
}

fn metadata_json(m: &Metadata) -> String {
    serde_json::to_string(&m.to_map()).unwrap_or_else(|_| "{}".into())
}

fn parse_metadata(s: &str) -> StoreResult<Metadata> {
    let map: BTreeMap<String, String> =
        serde_json::from_str(s).map_err(|e| StoreError::Internal(format!("metadata: {e}")))?;
    Metadata::parse(map).map_err(|e| StoreError::Internal(format!("metadata: {:?}", e.error)))
}

fn insert_event(conn: &Connection, env: EnvId, e: EventRow<'_>) -> StoreResult<()> {
    let reasons: Vec<&str> = e.reasons.iter().map(|r| r.as_str()).collect();
    let truncated =
        e.prompt.is_some_and(|p| p.truncated) || e.response.is_some_and(|p| p.truncated);
    conn.prepare_cached(
        "INSERT INTO events (env_id, event_id, occurred_at_ms, user_id, event, quantity, metadata,
             cost_micros, status, plan_id, reservation_id, reasons, overage, prompt, response,
             truncated)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )
    .and_then(|mut s| {
        s.execute(params![
            env.0,
            e.event_id,
            ms(e.occurred_at),
            e.user_id,
            e.event,
            e.quantity as i64,
            metadata_json(e.metadata),
            e.cost_micros.map(|c| c as i64),
            e.status,
            e.plan_id,
            e.reservation_id,
            serde_json::to_string(&reasons).unwrap_or_else(|_| "[]".into()),
            e.overage as i64,
            e.prompt.map(|p| p.text.as_str()),
            e.response.map(|p| p.text.as_str()),
            truncated,
        ])
    })
    .map(|_| ())
    .map_err(internal)
}

/// Looks up an idempotency key: the first answer if the fingerprint matches, a conflict if not,
/// None if unused (or older than the retention).
fn idempotency_lookup(
    conn: &Connection,
    env: EnvId,
    scope: &str,
    key: &str,
    fingerprint: &str,
    now: Timestamp,
) -> StoreResult<Option<String>> {
    let row: Option<(String, String, i64)> = conn
        .prepare_cached(
            "SELECT fingerprint, response, created_at_ms FROM idempotency
             WHERE env_id = ?1 AND scope = ?2 AND key = ?3",
        )
        .and_then(|mut s| {
            s.query_row(params![env.0, scope, key], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
        })
        .map_err(internal)?;
    match row {
        Some((_, _, created))
            if created <= ms(now) - tollgate_core::input::IDEMPOTENCY_RETENTION_SECONDS * 1000 =>
        {
            Ok(None)
        }
        Some((fp, response, _)) if fp == fingerprint => Ok(Some(response)),
        Some(_) => Err(StoreError::IdempotencyConflict),
        None => Ok(None),
    }
}

fn idempotency_store(
    conn: &Connection,
    env: EnvId,
    scope: &str,
    key: &str,
    fingerprint: &str,
    response: &str,
    now: Timestamp,
) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO idempotency (env_id, scope, key, fingerprint, response, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| s.execute(params![env.0, scope, key, fingerprint, response, ms(now)]))
    .map(|_| ())
    .map_err(internal)
}

pub(crate) fn reserve(
    conn: &Connection,
    cmd: ReserveCommand,
) -> StoreResult<Idempotent<ReserveOutcome>> {
    let (env, now) = (cmd.env, cmd.now);
    if let Some(idem) = &cmd.idempotency {
        if let Some(body) = idempotency_lookup(
            conn,
            env,
            "reserve",
            idem.key.as_str(),
            &idem.fingerprint,
            now,
        )? {
            return Ok(Idempotent::Replayed(body));
        }
    }
    let subject = user_subject(cmd.user_id.as_str());
    let sub = load_subscription(conn, env, &subject)?;
    let outcome = decide_and_hold(conn, &cmd, &subject, sub.as_ref())?;
    if !outcome.allowed && cmd.record_denials {
        insert_event(
            conn,
            env,
            EventRow {
                event_id: &cmd.event_id,
                occurred_at: now,
                user_id: cmd.user_id.as_str(),
                event: cmd.event.as_str(),
                quantity: cmd.quantity.get(),
                metadata: &cmd.metadata,
                cost_micros: None,
                status: "denied",
                plan_id: outcome.plan_id.as_deref(),
                reservation_id: None,
                reasons: &outcome.reasons,
                overage: 0,
                prompt: cmd.prompt.as_ref(),
                response: None,
            },
        )?;
    }
    if let Some(idem) = &cmd.idempotency {
        let body = (idem.render)(&outcome);
        idempotency_store(
            conn,
            env,
            "reserve",
            idem.key.as_str(),
            &idem.fingerprint,
            &body,
            now,
        )?;
    }
    Ok(Idempotent::Fresh(outcome))
}

fn denied(plan_id: Option<String>, reason: DenyReason, limits: Vec<LimitState>) -> ReserveOutcome {
    ReserveOutcome {
        allowed: false,
        reservation_id: None,
        expires_at: None,
        plan_id,
        reasons: vec![reason],
        denied_by: Vec::new(),
        limits,
    }
}

fn decide_and_hold(
    conn: &Connection,
    cmd: &ReserveCommand,
    subject: &str,
    sub: Option<&Subscription>,
) -> StoreResult<ReserveOutcome> {
    let (env, now) = (cmd.env, cmd.now);
    let Some(resolved) = subscription::resolve(&cmd.plans, sub, cmd.user_id.as_str(), now) else {
        return Ok(denied(None, DenyReason::NoSubscription, Vec::new()));
    };
    let plan_id = Some(resolved.plan.id.clone());
    let counters = matching_counters(conn, env, resolved, subject, &cmd.event, &cmd.metadata, now)?;
    if counters.is_empty() && cmd.plans.unmatched_events == UnmatchedEvents::Deny {
        return Ok(denied(plan_id, DenyReason::UnmatchedEvent, Vec::new()));
    }
    let loaded = states(conn, env, &counters, now, now)?;
    let checks: Vec<LimitCheck<'_>> = counters
        .iter()
        .zip(&loaded)
        .map(|((limit, c), (state, _))| LimitCheck {
            limit,
            quota: c.quota,
            state: *state,
        })
        .collect();
    let d = decision::decide_reserve(&checks, cmd.quantity.get());
    if !d.allowed {
        let limits = counters
            .iter()
            .zip(&loaded)
            .map(|((_, c), (s, oldest))| render(c, *s, *oldest, now))
            .collect();
        return Ok(ReserveOutcome {
            allowed: false,
            reservation_id: None,
            expires_at: None,
            plan_id,
            reasons: d.reasons,
            denied_by: d
                .denied_by
                .iter()
                .map(|&i| counters[i].1.limit_id.clone())
                .collect(),
            limits,
        });
    }
    let expires_at = now
        .checked_add(jiff::SignedDuration::from_secs(i64::from(cmd.ttl.get())))
        .map_err(|e| StoreError::Internal(e.to_string()))?;
    conn.prepare_cached(
        "INSERT INTO reservations (env_id, reservation_id, user_id, event, quantity, metadata,
             plan_id, status, created_at_ms, expires_at_ms, event_id, prompt, prompt_truncated)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?8, ?9, ?10, ?11, ?12)",
    )
    .and_then(|mut s| {
        s.execute(params![
            env.0,
            cmd.reservation_id,
            cmd.user_id.as_str(),
            cmd.event.as_str(),
            cmd.quantity.get() as i64,
            metadata_json(&cmd.metadata),
            plan_id,
            ms(now),
            ms(expires_at),
            cmd.event_id,
            cmd.prompt.as_ref().map(|p| p.text.as_str()),
            cmd.prompt.as_ref().is_some_and(|p| p.truncated),
        ])
    })
    .map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::AlreadyExists
        }
        e => internal(e),
    })?;
    let mut limits = Vec::with_capacity(counters.len());
    for (((_, c), (state, oldest)), &hold) in counters.iter().zip(&loaded).zip(&d.holds) {
        insert_hold(conn, env, &cmd.reservation_id, c, hold, expires_at)?;
        if let CounterWindow::Fixed {
            key,
            end,
            opening: true,
            ..
        } = &c.window
        {
            open_counter(conn, env, c, *key, *end)?;
        }
        let mut after = *state;
        after.reserved += hold;
        let mut shown = c.clone();
        if let CounterWindow::Fixed { opening, .. } = &mut shown.window {
            *opening = false;
        }
        limits.push(render(&shown, after, *oldest, now));
    }
    Ok(ReserveOutcome {
        allowed: true,
        reservation_id: Some(cmd.reservation_id.clone()),
        expires_at: Some(expires_at),
        plan_id,
        reasons: Vec::new(),
        denied_by: Vec::new(),
        limits,
    })
}

fn insert_hold(
    conn: &Connection,
    env: EnvId,
    reservation_id: &str,
    c: &Counter,
    units: u64,
    expires_at: Timestamp,
) -> StoreResult<()> {
    let (start, end) = match &c.window {
        CounterWindow::Fixed { start, end, .. } => (Some(ms(*start)), end.map(ms)),
        CounterWindow::Rolling { .. } => (None, None),
    };
    conn.prepare_cached(
        "INSERT INTO reservation_limits (env_id, reservation_id, limit_id, subject, window_key,
             window_start_ms, window_end_ms, window_type, window_seconds, kind, enforcement,
             scope, multiplier, quota, units, held, expires_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?15, ?16)",
    )
    .and_then(|mut s| {
        s.execute(params![
            env.0,
            reservation_id,
            c.limit_id,
            c.subject,
            c.window.key(),
            start,
            end,
            c.window_type,
            c.window_seconds,
            kind_str(c.kind),
            enforcement_str(c.enforcement),
            scope_str(c.scope),
            c.multiplier as i64,
            c.quota as i64,
            units as i64,
            ms(expires_at),
        ])
    })
    .map(|_| ())
    .map_err(internal)
}

fn open_counter(
    conn: &Connection,
    env: EnvId,
    c: &Counter,
    key: i64,
    end: Option<Timestamp>,
) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO counters (env_id, limit_id, subject, window_key, window_end_ms, used)
         VALUES (?1, ?2, ?3, ?4, ?5, 0)",
    )
    .and_then(|mut s| s.execute(params![env.0, c.limit_id, c.subject, key, end.map(ms)]))
    .map(|_| ())
    .map_err(internal)
}

/// Adds `units` of usage at `at` to a counter.
fn charge(
    conn: &Connection,
    env: EnvId,
    c: &Counter,
    units: u64,
    at: Timestamp,
) -> StoreResult<()> {
    if units == 0 || c.kind == LimitKind::Concurrency {
        return Ok(());
    }
    let result = match &c.window {
        CounterWindow::Fixed { key, end, .. } => conn
            .prepare_cached(
                "INSERT INTO counters (env_id, limit_id, subject, window_key, window_end_ms, used)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (env_id, limit_id, subject, window_key)
                 DO UPDATE SET used = used + excluded.used",
            )
            .and_then(|mut s| {
                s.execute(params![
                    env.0,
                    c.limit_id,
                    c.subject,
                    key,
                    end.map(ms),
                    units as i64
                ])
            }),
        CounterWindow::Rolling { .. } => conn
            .prepare_cached(
                "INSERT INTO rolling_usage (env_id, limit_id, subject, at_ms, units)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![env.0, c.limit_id, c.subject, ms(at), units as i64])
            }),
    };
    result.map(|_| ()).map_err(internal)
}

/// A stored reservation.
struct ReservationRow {
    user_id: String,
    event: String,
    quantity: u64,
    metadata: String,
    plan_id: Option<String>,
    status: ReservationStatus,
    created_at: Timestamp,
    expires_at: Timestamp,
    event_id: String,
    final_quantity: Option<u64>,
    overage: Option<u64>,
}

fn load_reservation(conn: &Connection, env: EnvId, id: &str) -> StoreResult<ReservationRow> {
    conn.prepare_cached(
        "SELECT user_id, event, quantity, metadata, plan_id, status, created_at_ms, expires_at_ms,
                event_id, final_quantity, overage
         FROM reservations WHERE env_id = ?1 AND reservation_id = ?2",
    )
    .and_then(|mut s| {
        s.query_row(params![env.0, id], |r| {
            let status: String = r.get(5)?;
            Ok(ReservationRow {
                user_id: r.get(0)?,
                event: r.get(1)?,
                quantity: r.get::<_, i64>(2)? as u64,
                metadata: r.get(3)?,
                plan_id: r.get(4)?,
                status: ReservationStatus::parse(&status).unwrap_or(ReservationStatus::Expired),
                created_at: ts(r.get(6)?),
                expires_at: ts(r.get(7)?),
                event_id: r.get(8)?,
                final_quantity: r.get::<_, Option<i64>>(9)?.map(|q| q as u64),
                overage: r.get::<_, Option<i64>>(10)?.map(|q| q as u64),
            })
        })
        .optional()
    })
    .map_err(internal)?
    .ok_or(StoreError::NotFound)
}

/// The counters a reservation holds, rebuilt from its rows. Label and unit come from the
/// current plan document when it still has the limit.
fn held_counters(
    conn: &Connection,
    env: EnvId,
    id: &str,
    plans: &PlanDocument,
) -> StoreResult<Vec<(Counter, u64)>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT limit_id, subject, window_key, window_start_ms, window_end_ms, window_type,
                    window_seconds, kind, enforcement, scope, multiplier, quota, held
             FROM reservation_limits WHERE env_id = ?1 AND reservation_id = ?2
             ORDER BY rowid",
        )
        .map_err(internal)?;
    let rows = stmt
        .query_map(params![env.0, id], |r| {
            let limit_id: String = r.get(0)?;
            let window_type: String = r.get(5)?;
            let seconds: u32 = r.get(6)?;
            let kind: String = r.get(7)?;
            let enforcement: String = r.get(8)?;
            let scope: String = r.get(9)?;
            let window = if window_type == "rolling" {
                CounterWindow::Rolling { seconds }
            } else {
                CounterWindow::Fixed {
                    key: r.get(2)?,
                    start: r
                        .get::<_, Option<i64>>(3)?
                        .map(ts)
                        .unwrap_or(Timestamp::UNIX_EPOCH),
                    end: r.get::<_, Option<i64>>(4)?.map(ts),
                    opening: false,
                }
            };
            let def = plans
                .plans
                .iter()
                .flat_map(|p| &p.limits)
                .find(|l| l.id == limit_id);
            let counter = Counter {
                label: def.map_or_else(|| limit_id.clone(), |l| l.label.clone()),
                unit: def.map_or_else(|| "count".to_string(), |l| l.unit.clone()),
                limit_id,
                kind: if kind == "concurrency" {
                    LimitKind::Concurrency
                } else {
                    LimitKind::Consumable
                },
                enforcement: if enforcement == "soft" {
                    Enforcement::Soft
                } else {
                    Enforcement::Hard
                },
                scope: if scope == "account" {
                    Scope::Account
                } else {
                    Scope::User
                },
                multiplier: r.get::<_, i64>(10)? as u64,
                quota: r.get::<_, i64>(11)? as u64,
                subject: r.get(1)?,
                window_type: match window_type.as_str() {
                    "calendar" => "calendar",
                    "subscription" => "subscription",
                    "rolling" => "rolling",
                    "first_use" => "first_use",
                    _ => "lifetime",
                },
                window_seconds: seconds,
                window,
            };
            Ok((counter, r.get::<_, i64>(12)? as u64))
        })
        .map_err(internal)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(internal)
}

fn render_held(
    conn: &Connection,
    env: EnvId,
    counters: &[(Counter, u64)],
    at: Timestamp,
    now: Timestamp,
) -> StoreResult<Vec<LimitState>> {
    counters
        .iter()
        .map(|(c, _)| {
            let (state, oldest) = load_state(conn, env, c, at, now)?;
            Ok(render(c, state, oldest, at.max(now)))
        })
        .collect()
}

/// Ends a pending reservation's holds and sets its terminal status.
fn finish(
    conn: &Connection,
    env: EnvId,
    id: &str,
    status: ReservationStatus,
    final_quantity: Option<u64>,
    overage: Option<u64>,
) -> StoreResult<()> {
    conn.prepare_cached(
        "UPDATE reservation_limits SET held = 0 WHERE env_id = ?1 AND reservation_id = ?2",
    )
    .and_then(|mut s| s.execute(params![env.0, id]))
    .map_err(internal)?;
    conn.prepare_cached(
        "UPDATE reservations SET status = ?3, final_quantity = ?4, overage = ?5
         WHERE env_id = ?1 AND reservation_id = ?2",
    )
    .and_then(|mut s| {
        s.execute(params![
            env.0,
            id,
            status.as_str(),
            final_quantity.map(|q| q as i64),
            overage.map(|q| q as i64)
        ])
    })
    .map(|_| ())
    .map_err(internal)
}

/// Expires one pending reservation: its holds end and an `expired` usage event is written.
fn expire(conn: &Connection, env: EnvId, id: &str, r: &ReservationRow) -> StoreResult<()> {
    finish(conn, env, id, ReservationStatus::Expired, None, None)?;
    let metadata = parse_metadata(&r.metadata)?;
    insert_event(
        conn,
        env,
        EventRow {
            event_id: &r.event_id,
            occurred_at: r.expires_at,
            user_id: &r.user_id,
            event: &r.event,
            quantity: r.quantity,
            metadata: &metadata,
            cost_micros: None,
            status: "expired",
            plan_id: r.plan_id.as_deref(),
            reservation_id: Some(id),
            reasons: &[],
            overage: 0,
            prompt: None,
            response: None,
        },
    )
}

/// Loads a reservation that must still be pending at `now`; one past its expiry is expired
/// here (a logged event, like the sweeper's) and refused.
fn pending_reservation(
    conn: &Connection,
    env: EnvId,
    id: &str,
    now: Timestamp,
) -> StoreResult<ReservationRow> {
    let r = load_reservation(conn, env, id)?;
    if r.status != ReservationStatus::Pending {
        return Err(StoreError::NotPending { status: r.status });
    }
    if r.expires_at <= now {
        expire(conn, env, id, &r)?;
        return Err(StoreError::NotPending {
            status: ReservationStatus::Expired,
        });
    }
    Ok(r)
}

pub(crate) fn commit(conn: &Connection, cmd: CommitCommand) -> StoreResult<CommitOutcome> {
    let (env, now, id) = (cmd.env, cmd.now, cmd.reservation_id.as_str());
    let existing = load_reservation(conn, env, id)?;
    if existing.status == ReservationStatus::Committed {
        let held = held_counters(conn, env, id, &cmd.plans)?;
        return Ok(CommitOutcome {
            reservation_id: id.to_string(),
            event_id: existing.event_id,
            quantity: existing.final_quantity.unwrap_or(existing.quantity),
            overage: existing.overage.unwrap_or(0),
            limits: render_held(conn, env, &held, existing.created_at, now)?,
        });
    }
    let r = pending_reservation(conn, env, id, now)?;
    let quantity = cmd.quantity.map_or(r.quantity, |q| q.get());
    let mut metadata = parse_metadata(&r.metadata)?;
    if let Some(extra) = &cmd.metadata {
        metadata = metadata.merged(extra).map_err(|e| StoreError::Invalid {
            field: "metadata".into(),
            message: format!("merged metadata {}", e.error),
        })?;
    }
    let held = held_counters(conn, env, id, &cmd.plans)?;
    let mut inputs = Vec::with_capacity(held.len());
    for (c, own) in &held {
        let (state, _) = load_state(conn, env, c, r.created_at, now)?;
        inputs.push(SettleInput {
            kind: c.kind,
            multiplier: c.multiplier,
            quota: c.quota,
            used: state.used,
            reserved_others: state.reserved.saturating_sub(*own),
        });
    }
    let settlement = decision::settle(&inputs, quantity);
    for ((c, _), &units) in held.iter().zip(&settlement.charged) {
        charge(conn, env, c, units, r.created_at)?;
    }
    finish(
        conn,
        env,
        id,
        ReservationStatus::Committed,
        Some(quantity),
        Some(settlement.overage),
    )?;
    insert_event(
        conn,
        env,
        EventRow {
            event_id: &r.event_id,
            occurred_at: r.created_at,
            user_id: &r.user_id,
            event: &r.event,
            quantity,
            metadata: &metadata,
            cost_micros: cmd.cost_micros,
            status: "committed",
            plan_id: r.plan_id.as_deref(),
            reservation_id: Some(id),
            reasons: &[],
            overage: settlement.overage,
            prompt: None,
            response: cmd.response.as_ref(),
        },
    )?;
    Ok(CommitOutcome {
        reservation_id: id.to_string(),
        event_id: r.event_id,
        quantity,
        overage: settlement.overage,
        limits: render_held(conn, env, &held, r.created_at, now)?,
    })
}

pub(crate) fn release(conn: &Connection, cmd: ReleaseCommand) -> StoreResult<ReleaseOutcome> {
    let (env, now, id) = (cmd.env, cmd.now, cmd.reservation_id.as_str());
    let existing = load_reservation(conn, env, id)?;
    let r = if existing.status == ReservationStatus::Released {
        existing
    } else {
        let r = pending_reservation(conn, env, id, now)?;
        finish(conn, env, id, ReservationStatus::Released, None, None)?;
        let metadata = parse_metadata(&r.metadata)?;
        let reasons: Vec<DenyReason> = Vec::new();
        insert_event(
            conn,
            env,
            EventRow {
                event_id: &r.event_id,
                occurred_at: r.created_at,
                user_id: &r.user_id,
                event: &r.event,
                quantity: r.quantity,
                metadata: &metadata,
                cost_micros: None,
                status: "released",
                plan_id: r.plan_id.as_deref(),
                reservation_id: Some(id),
                reasons: &reasons,
                overage: 0,
                prompt: None,
                response: cmd.response.as_ref(),
            },
        )?;
        if cmd.reason.is_some() || cmd.error_code.is_some() {
            conn.prepare_cached(
                "UPDATE events SET reasons = ?3 WHERE env_id = ?1 AND event_id = ?2",
            )
            .and_then(|mut s| {
                let detail = serde_json::json!({
                    "reason": cmd.reason, "errorCode": cmd.error_code
                });
                s.execute(params![env.0, r.event_id, format!("[{detail}]")])
            })
            .map_err(internal)?;
        }
        r
    };
    let held = held_counters(conn, env, id, &cmd.plans)?;
    Ok(ReleaseOutcome {
        reservation_id: id.to_string(),
        limits: render_held(conn, env, &held, r.created_at, now)?,
    })
}

pub(crate) fn extend(conn: &Connection, cmd: ExtendCommand) -> StoreResult<ExtendOutcome> {
    let (env, now, id) = (cmd.env, cmd.now, cmd.reservation_id.as_str());
    pending_reservation(conn, env, id, now)?;
    let expires_at = now
        .checked_add(jiff::SignedDuration::from_secs(i64::from(cmd.ttl.get())))
        .map_err(|e| StoreError::Internal(e.to_string()))?;
    for sql in [
        "UPDATE reservations SET expires_at_ms = ?3 WHERE env_id = ?1 AND reservation_id = ?2",
        "UPDATE reservation_limits SET expires_at_ms = ?3 WHERE env_id = ?1 AND reservation_id = ?2",
    ] {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute(params![env.0, id, ms(expires_at)]))
            .map_err(internal)?;
    }
    Ok(ExtendOutcome {
        reservation_id: id.to_string(),
        expires_at,
    })
}

pub(crate) fn get_reservation(
    conn: &Connection,
    env: EnvId,
    id: &str,
    now: Timestamp,
) -> StoreResult<ReservationView> {
    let r = load_reservation(conn, env, id)?;
    let status = match r.status {
        ReservationStatus::Pending if r.expires_at <= now => ReservationStatus::Expired,
        s => s,
    };
    Ok(ReservationView {
        reservation_id: id.to_string(),
        status,
        event_id: (status == ReservationStatus::Committed).then(|| r.event_id.clone()),
        quantity: r.final_quantity.unwrap_or(r.quantity),
        metadata: parse_metadata(&r.metadata)?,
        user_id: r.user_id,
        event: r.event,
        created_at: r.created_at,
        expires_at: r.expires_at,
    })
}

/// Expires due reservations in every environment, each by its own clock.
pub(crate) fn expire_due(conn: &Connection, real_now: Timestamp) -> StoreResult<usize> {
    let due: Vec<(i64, String)> = {
        let mut stmt = conn
            .prepare_cached(
                "SELECT r.env_id, r.reservation_id FROM reservations r
                 JOIN environments e ON e.env_id = r.env_id
                 WHERE r.status = 'pending' AND r.expires_at_ms <= ?1 + e.clock_offset_s * 1000
                 LIMIT ?2",
            )
            .map_err(internal)?;
        let rows = stmt
            .query_map(params![ms(real_now), SWEEP_BATCH_MAX as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(internal)?;
        rows.collect::<Result<_, _>>().map_err(internal)?
    };
    for (env, id) in &due {
        let r = load_reservation(conn, EnvId(*env), id)?;
        expire(conn, EnvId(*env), id, &r)?;
    }
    // Idempotency keys are kept 24 h; older ones are dead weight.
    conn.prepare_cached("DELETE FROM idempotency WHERE created_at_ms < ?1")
        .and_then(|mut s| {
            s.execute(params![
                ms(real_now) - tollgate_core::input::IDEMPOTENCY_RETENTION_SECONDS * 1000 * 2
            ])
        })
        .map_err(internal)?;
    Ok(due.len())
}

pub(crate) fn track(conn: &Connection, cmd: TrackCommand) -> StoreResult<Idempotent<TrackOutcome>> {
    let (env, now) = (cmd.env, cmd.now);
    if let Some(idem) = &cmd.idempotency {
        if let Some(body) = idempotency_lookup(
            conn,
            env,
            "track",
            idem.key.as_str(),
            &idem.fingerprint,
            now,
        )? {
            return Ok(Idempotent::Replayed(body));
        }
    }
    let subject = user_subject(cmd.user_id.as_str());
    let sub = load_subscription(conn, env, &subject)?;
    let outcome = track_decide(conn, &cmd, &subject, sub.as_ref())?;
    if let Some(idem) = &cmd.idempotency {
        let body = (idem.render)(&outcome);
        idempotency_store(
            conn,
            env,
            "track",
            idem.key.as_str(),
            &idem.fingerprint,
            &body,
            now,
        )?;
    }
    Ok(Idempotent::Fresh(outcome))
}

fn track_decide(
    conn: &Connection,
    cmd: &TrackCommand,
    subject: &str,
    sub: Option<&Subscription>,
) -> StoreResult<TrackOutcome> {
    let (env, now, at) = (cmd.env, cmd.now, cmd.occurred_at);
    let resolved = subscription::resolve(&cmd.plans, sub, cmd.user_id.as_str(), now);
    let plan_id = resolved.map(|r| r.plan.id.clone());
    let counters = match resolved {
        Some(r) => matching_counters(conn, env, r, subject, &cmd.event, &cmd.metadata, at)?,
        None => Vec::new(),
    };
    let match_status = match (resolved, counters.is_empty()) {
        (None, _) => MatchStatus::NoSubscription,
        (Some(_), true) => MatchStatus::Unmatched,
        (Some(_), false) => MatchStatus::Matched,
    };
    let loaded = states(conn, env, &counters, at, now)?;
    let mut reasons = Vec::new();
    let mut denied = false;
    if cmd.enforce {
        match match_status {
            MatchStatus::NoSubscription => {
                denied = true;
                reasons.push(DenyReason::NoSubscription);
            }
            MatchStatus::Unmatched if cmd.plans.unmatched_events == UnmatchedEvents::Deny => {
                denied = true;
                reasons.push(DenyReason::UnmatchedEvent);
            }
            _ => {
                let checks: Vec<LimitCheck<'_>> = counters
                    .iter()
                    .zip(&loaded)
                    .map(|((limit, c), (state, _))| LimitCheck {
                        limit,
                        quota: c.quota,
                        state: *state,
                    })
                    .collect();
                let d = decision::decide_reserve(&checks, cmd.quantity.get());
                denied = !d.allowed;
                reasons = d.reasons;
            }
        }
    }
    if denied {
        if cmd.record_denials {
            insert_event(
                conn,
                env,
                EventRow {
                    event_id: &cmd.event_id,
                    occurred_at: at,
                    user_id: cmd.user_id.as_str(),
                    event: cmd.event.as_str(),
                    quantity: cmd.quantity.get(),
                    metadata: &cmd.metadata,
                    cost_micros: cmd.cost_micros,
                    status: "denied",
                    plan_id: plan_id.as_deref(),
                    reservation_id: None,
                    reasons: &reasons,
                    overage: 0,
                    prompt: cmd.prompt.as_ref(),
                    response: cmd.response.as_ref(),
                },
            )?;
        }
        let limits = counters
            .iter()
            .zip(&loaded)
            .map(|((_, c), (s, oldest))| render(c, *s, *oldest, at))
            .collect();
        return Ok(TrackOutcome {
            event_id: None,
            recorded: false,
            allowed: false,
            reasons,
            match_status,
            overage: 0,
            plan_id,
            limits,
        });
    }
    let inputs: Vec<SettleInput> = counters
        .iter()
        .zip(&loaded)
        .map(|((_, c), (state, _))| SettleInput {
            kind: c.kind,
            multiplier: c.multiplier,
            quota: c.quota,
            used: state.used,
            reserved_others: state.reserved,
        })
        .collect();
    let settlement = decision::settle(&inputs, cmd.quantity.get());
    let mut limits = Vec::with_capacity(counters.len());
    for (((_, c), (state, oldest)), &units) in counters.iter().zip(&loaded).zip(&settlement.charged)
    {
        if let CounterWindow::Fixed {
            key,
            end,
            opening: true,
            ..
        } = &c.window
        {
            open_counter(conn, env, c, *key, *end)?;
        }
        charge(conn, env, c, units, at)?;
        let mut shown = c.clone();
        if let CounterWindow::Fixed { opening, .. } = &mut shown.window {
            *opening = false;
        }
        let after = CounterState {
            used: state.used + units,
            reserved: state.reserved,
        };
        let oldest = match (&c.window, oldest) {
            (CounterWindow::Rolling { .. }, Some(o)) => Some((*o).min(at)),
            (CounterWindow::Rolling { .. }, None) if units > 0 => Some(at),
            (_, o) => *o,
        };
        limits.push(render(&shown, after, oldest, at));
    }
    insert_event(
        conn,
        env,
        EventRow {
            event_id: &cmd.event_id,
            occurred_at: at,
            user_id: cmd.user_id.as_str(),
            event: cmd.event.as_str(),
            quantity: cmd.quantity.get(),
            metadata: &cmd.metadata,
            cost_micros: cmd.cost_micros,
            status: "tracked",
            plan_id: plan_id.as_deref(),
            reservation_id: None,
            reasons: &[],
            overage: settlement.overage,
            prompt: cmd.prompt.as_ref(),
            response: cmd.response.as_ref(),
        },
    )?;
    Ok(TrackOutcome {
        event_id: Some(cmd.event_id.clone()),
        recorded: true,
        allowed: true,
        reasons: Vec::new(),
        match_status,
        overage: settlement.overage,
        plan_id,
        limits,
    })
}

pub(crate) fn check(conn: &Connection, cmd: CheckCommand) -> StoreResult<CheckOutcome> {
    let (env, now) = (cmd.env, cmd.now);
    let subject = user_subject(cmd.user_id.as_str());
    let sub = load_subscription(conn, env, &subject)?;
    let Some(resolved) = subscription::resolve(&cmd.plans, sub.as_ref(), cmd.user_id.as_str(), now)
    else {
        return Ok(CheckOutcome {
            allowed: false,
            plan_id: None,
            reasons: vec![DenyReason::NoSubscription],
            denied_by: Vec::new(),
            limits: Vec::new(),
        });
    };
    let plan_id = Some(resolved.plan.id.clone());
    let counters = matching_counters(
        conn,
        env,
        resolved,
        &subject,
        &cmd.event,
        &cmd.metadata,
        now,
    )?;
    if counters.is_empty() && cmd.plans.unmatched_events == UnmatchedEvents::Deny {
        return Ok(CheckOutcome {
            allowed: false,
            plan_id,
            reasons: vec![DenyReason::UnmatchedEvent],
            denied_by: Vec::new(),
            limits: Vec::new(),
        });
    }
    let loaded = states(conn, env, &counters, now, now)?;
    let checks: Vec<LimitCheck<'_>> = counters
        .iter()
        .zip(&loaded)
        .map(|((limit, c), (state, _))| LimitCheck {
            limit,
            quota: c.quota,
            state: *state,
        })
        .collect();
    let d = decision::decide_reserve(&checks, cmd.quantity.get());
    Ok(CheckOutcome {
        allowed: d.allowed,
        plan_id,
        reasons: d.reasons,
        denied_by: d
            .denied_by
            .iter()
            .map(|&i| counters[i].1.limit_id.clone())
            .collect(),
        limits: counters
            .iter()
            .zip(&loaded)
            .map(|((_, c), (s, oldest))| render(c, *s, *oldest, now))
            .collect(),
    })
}

pub(crate) fn usage(conn: &Connection, q: UsageQuery) -> StoreResult<UsageOutcome> {
    let (env, now) = (q.env, q.now);
    let subject = user_subject(q.user_id.as_str());
    let sub = load_subscription(conn, env, &subject)?;
    let Some(resolved) = subscription::resolve(&q.plans, sub.as_ref(), q.user_id.as_str(), now)
    else {
        return Ok(UsageOutcome {
            plan_id: None,
            subscription: sub,
            limits: Vec::new(),
        });
    };
    let mut limits = Vec::new();
    for limit in &resolved.plan.limits {
        if let Some(event) = &q.event {
            if !limit.rules.iter().any(|r| r.event.matches(event.as_str())) {
                continue;
            }
        }
        let c = counter_for(conn, env, limit, resolved, &subject, now)?;
        let (state, oldest) = load_state(conn, env, &c, now, now)?;
        limits.push(render(&c, state, oldest, now));
    }
    Ok(UsageOutcome {
        plan_id: Some(resolved.plan.id.clone()),
        subscription: sub,
        limits,
    })
}
