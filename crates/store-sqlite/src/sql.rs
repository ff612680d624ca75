//! [`MeteringTx`] on SQLite: each method one statement on the connection of the current
//! transaction (the writer's batch, or a reader's snapshot).
//!
//! There is one writer, so `lock_subjects` has nothing to do: the writer already applies one
//! command at a time.

use crate::{internal, ms, ts};
use jiff::Timestamp;
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::collections::BTreeMap;
use tollgate_core::biller::Biller;
use tollgate_core::input::{Metadata, StoredText};
use tollgate_core::plan::{Enforcement, LimitKind, Scope};
use tollgate_core::subscription::{HistoryEntry, Subscription, SubscriptionStatus};
use tollgate_store::procedure::*;
use tollgate_store::{
    codec, Balance, BillerEventStatus, BillerEventsQuery, EndpointTarget, EnvId, EventsQuery,
    Grant, GrantRow, GrantSource, Integration, LedgerEntry, LedgerKind, LoggedTextCleared, Member,
    MeterAttempt, MeterEventRow, MeterEventsQuery, MeterStatus, ReservationStatus, StoreError,
    StoreResult, StoredBillerEvent, StoredEvent, StoredEventDetail, StoredSettings,
};

pub(crate) struct SqliteTx<'c>(pub(crate) &'c Connection);

/// Adds one usage event (or a user's day, when identify moves it) to the daily rollup. Sums
/// stop at 2^63 - 1 rather than fail the call that records the usage.
pub(crate) const ROLLUP_ADD: &str =
    "INSERT INTO usage_daily (env_id, day_ms, user_id, plan_id, events,
        quantity, cost_micros)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
    ON CONFLICT (env_id, day_ms, user_id, plan_id) DO UPDATE SET
        events = events + excluded.events,
        quantity = CASE WHEN quantity > 9223372036854775807 - excluded.quantity
            THEN 9223372036854775807 ELSE quantity + excluded.quantity END,
        cost_micros = CASE WHEN cost_micros > 9223372036854775807 - excluded.cost_micros
            THEN 9223372036854775807 ELSE cost_micros + excluded.cost_micros END";
/// Moves an anonymous id's rollup rows onto its user (identify), merging days both have.
const ROLLUP_MOVE: &str = "INSERT INTO usage_daily (env_id, day_ms, user_id, plan_id, events,
        quantity, cost_micros)
    SELECT env_id, day_ms, ?3, plan_id, events, quantity, cost_micros FROM usage_daily
     WHERE env_id = ?1 AND user_id = ?2
    ON CONFLICT (env_id, day_ms, user_id, plan_id) DO UPDATE SET
        events = events + excluded.events,
        quantity = CASE WHEN quantity > 9223372036854775807 - excluded.quantity
            THEN 9223372036854775807 ELSE quantity + excluded.quantity END,
        cost_micros = CASE WHEN cost_micros > 9223372036854775807 - excluded.cost_micros
            THEN 9223372036854775807 ELSE cost_micros + excluded.cost_micros END";

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Internal(format!("stored {what} {value:?} is not valid"))
}

/// A stored seat cap: NULL, or a value `1 ..= u32::MAX` (anything else is corruption).
fn stored_seats(n: Option<i64>) -> StoreResult<Option<u32>> {
    n.map(|n| {
        u32::try_from(n)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| corrupt("seats", &n.to_string()))
    })
    .transpose()
}

pub(crate) fn metadata_json(m: &Metadata) -> String {
    serde_json::to_string(&m.to_map()).unwrap_or_else(|_| "{}".into())
}

fn parse_metadata(s: &str) -> StoreResult<Metadata> {
    let map: BTreeMap<String, String> =
        serde_json::from_str(s).map_err(|_| corrupt("metadata", s))?;
    Metadata::parse(map).map_err(|_| corrupt("metadata", s))
}

fn reservation_row(r: &Row<'_>) -> rusqlite::Result<(ReservationRow, String, String)> {
    let status: String = r.get(5)?;
    let metadata: String = r.get(3)?;
    let prompt: Option<String> = r.get(12)?;
    let truncated: bool = r.get(13)?;
    Ok((
        ReservationRow {
            reservation_id: r.get(14)?,
            user_id: r.get(0)?,
            event: r.get(1)?,
            quantity: r.get::<_, i64>(2)? as u64,
            metadata: Metadata::default(),
            plan_id: r.get(4)?,
            status: ReservationStatus::Pending,
            created_at: ts(r.get(6)?),
            expires_at: ts(r.get(7)?),
            event_id: r.get(8)?,
            final_quantity: r.get::<_, Option<i64>>(9)?.map(|q| q as u64),
            overage: r.get::<_, Option<i64>>(10)?.map(|q| q as u64),
            prompt: prompt.map(|text| StoredText { text, truncated }),
            late: r.get(15)?,
        },
        status,
        metadata,
    ))
}

/// The pending reservations due by their environment's clock. CROSS JOIN keeps environments
/// the outer loop, so each environment reads only its due range of `reservations_due`, never
/// every pending reservation (the sweep runs this once a second).
const DUE_RESERVATIONS: &str = "SELECT e.env_id, r.reservation_id, r.user_id FROM environments e
     CROSS JOIN reservations r ON r.env_id = e.env_id
     WHERE r.status = 'pending' AND r.expires_at_ms <= ?1 + e.clock_offset_s * 1000
     LIMIT ?2";

/// The projection's own writes (`engine::project`): a reservation or hold inserted as it stands
/// after later ops of the same batch, in one statement instead of an insert and updates.
impl SqliteTx<'_> {
    /// What [`MeteringTx::insert_reservation`] then `finish_reservation`, `commit_late` and
    /// `set_expiry` write: the row with its `(status, expiry, event id)` and its
    /// `(final quantity, overage, late)`.
    pub(crate) fn insert_reservation_as(
        &mut self,
        env: EnvId,
        r: &ReservationRow,
        (status, expires_at, event_id): (ReservationStatus, Timestamp, &str),
        (final_quantity, overage, late): (Option<u64>, Option<u64>, bool),
    ) -> StoreResult<()> {
        self.0
            .prepare_cached(
                "INSERT INTO reservations (env_id, reservation_id, user_id, event, quantity,
                     metadata, plan_id, status, created_at_ms, expires_at_ms, event_id, prompt,
                     prompt_truncated, final_quantity, overage, late)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    env.0,
                    r.reservation_id,
                    r.user_id,
                    r.event,
                    r.quantity as i64,
                    metadata_json(&r.metadata),
                    r.plan_id,
                    status.as_str(),
                    ms(r.created_at),
                    ms(expires_at),
                    event_id,
                    r.prompt.as_ref().map(|p| p.text.as_str()),
                    r.prompt.as_ref().is_some_and(|p| p.truncated),
                    final_quantity.map(|q| q as i64),
                    overage.map(|q| q as i64),
                    late,
                ])
            })
            .map(drop)
            .map_err(internal)
    }

    /// What [`MeteringTx::insert_hold`] then `finish_reservation` and `set_expiry` write: the
    /// hold made (`units`) with what is still `held` and its expiry.
    pub(crate) fn insert_hold_as(
        &mut self,
        env: EnvId,
        reservation_id: &str,
        h: &HoldRow,
        held: u64,
        expires_at: Timestamp,
    ) -> StoreResult<()> {
        self.0
            .prepare_cached(
                "INSERT INTO reservation_limits (env_id, reservation_id, limit_id, subject,
                     window_key, window_start_ms, window_end_ms, window_type, window_seconds,
                     kind, enforcement, scope, multiplier, quota, units, held, expires_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                     ?17)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    env.0,
                    reservation_id,
                    h.key.limit_id,
                    h.key.subject,
                    h.key.window_key,
                    h.window_start.map(ms),
                    h.window_end.map(ms),
                    h.window_kind.as_str(),
                    h.window_seconds,
                    h.kind.as_str(),
                    h.enforcement.as_str(),
                    h.scope.as_str(),
                    h.multiplier as i64,
                    h.quota as i64,
                    h.held as i64,
                    held as i64,
                    ms(expires_at),
                ])
            })
            .map(drop)
            .map_err(internal)
    }
}

impl MeteringTx for SqliteTx<'_> {
    fn lock_subjects(&mut self, _env: EnvId, _subjects: &[&str]) -> StoreResult<()> {
        Ok(())
    }

    fn single_writer(&self) -> bool {
        true
    }

    fn subscription(&mut self, env: EnvId, subject: &str) -> StoreResult<Option<Subscription>> {
        let row = self
            .0
            .prepare_cached(
                "SELECT subscription_id, plan_id, status, cycle_start_ms, ends_at_ms,
                        custom_limits, created_at_ms, timezone, seats
                 FROM subscriptions WHERE env_id = ?1 AND subject = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![env.0, subject], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, i64>(6)?,
                        r.get::<_, Option<String>>(7)?,
                        r.get::<_, Option<i64>>(8)?,
                    ))
                })
                .optional()
            })
            .map_err(internal)?;
        let Some((id, plan_id, status, start, ends, custom, created, zone, seats)) = row else {
            return Ok(None);
        };
        let custom_limits: BTreeMap<String, u64> =
            serde_json::from_str(&custom).map_err(|_| corrupt("custom limits", &custom))?;
        Ok(Some(Subscription {
            id,
            plan_id,
            status: SubscriptionStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
            cycle_start: ts(start),
            ends_at: ends.map(ts),
            custom_limits,
            timezone: stored_zone(zone.as_deref()),
            seats: stored_seats(seats)?,
            created_at: ts(created),
        }))
    }

    fn write_subscription(
        &mut self,
        env: EnvId,
        subject: &str,
        s: &Subscription,
    ) -> StoreResult<()> {
        let custom = serde_json::to_string(&s.custom_limits)
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        self.0
            .prepare_cached(
                "INSERT INTO subscriptions (env_id, subject, subscription_id, plan_id, status,
                     cycle_start_ms, ends_at_ms, custom_limits, created_at_ms, timezone, seats)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (env_id, subject) DO UPDATE SET
                     subscription_id = excluded.subscription_id, plan_id = excluded.plan_id,
                     status = excluded.status, cycle_start_ms = excluded.cycle_start_ms,
                     ends_at_ms = excluded.ends_at_ms, custom_limits = excluded.custom_limits,
                     created_at_ms = excluded.created_at_ms, timezone = excluded.timezone,
                     seats = excluded.seats",
            )
            .and_then(|mut st| {
                st.execute(params![
                    env.0,
                    subject,
                    s.id,
                    s.plan_id,
                    s.status.as_str(),
                    ms(s.cycle_start),
                    s.ends_at.map(ms),
                    custom,
                    ms(s.created_at),
                    zone_name(s.timezone.as_ref()),
                    s.seats.map(i64::from),
                ])
            })
            .map(|_| ())
            .map_err(internal)
    }

    fn append_history(&mut self, env: EnvId, subject: &str, h: &HistoryEntry) -> StoreResult<()> {
        self.0
            .prepare_cached(
                "INSERT INTO subscription_history (env_id, subject, kind, at_ms, from_plan_id,
                     to_plan_id, source, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    env.0,
                    subject,
                    h.kind.as_str(),
                    ms(h.at),
                    h.from_plan_id,
                    h.to_plan_id,
                    h.source,
                    h.reason
                ])
            })
            .map(|_| ())
            .map_err(internal)
    }

    fn latest_window(
        &mut self,
        env: EnvId,
        limit_id: &str,
        subject: &str,
    ) -> StoreResult<Option<i64>> {
        self.0
            .prepare_cached(
                "SELECT MAX(window_key) FROM counters
                 WHERE env_id = ?1 AND limit_id = ?2 AND subject = ?3",
            )
            .and_then(|mut s| s.query_row(params![env.0, limit_id, subject], |r| r.get(0)))
            .map_err(internal)
    }

    fn reserved(&mut self, env: EnvId, key: &CounterKey, now: Timestamp) -> StoreResult<u64> {
        self.0
            .prepare_cached(
                "SELECT COALESCE(SUM(held), 0) FROM reservation_limits
                 WHERE env_id = ?1 AND limit_id = ?2 AND subject = ?3 AND window_key = ?4
                   AND held > 0 AND expires_at_ms > ?5",
            )
            .and_then(|mut s| {
                s.query_row(
                    params![env.0, key.limit_id, key.subject, key.window_key, ms(now)],
                    |r| r.get::<_, i64>(0),
                )
            })
            .map(|n| n.max(0) as u64)
            .map_err(internal)
    }

    fn used(&mut self, env: EnvId, key: &CounterKey) -> StoreResult<u64> {
        self.0
            .prepare_cached(
                "SELECT used FROM counters
                 WHERE env_id = ?1 AND limit_id = ?2 AND subject = ?3 AND window_key = ?4",
            )
            .and_then(|mut s| {
                s.query_row(
                    params![env.0, key.limit_id, key.subject, key.window_key],
                    |r| r.get::<_, i64>(0),
                )
                .optional()
            })
            .map(|n| n.unwrap_or(0).max(0) as u64)
            .map_err(internal)
    }

    fn used_and_reserved(
        &mut self,
        env: EnvId,
        key: &CounterKey,
        now: Timestamp,
    ) -> StoreResult<(u64, u64)> {
        self.0
            .prepare_cached(
                "SELECT
                     (SELECT used FROM counters
                      WHERE env_id = ?1 AND limit_id = ?2 AND subject = ?3 AND window_key = ?4),
                     (SELECT COALESCE(SUM(held), 0) FROM reservation_limits
                      WHERE env_id = ?1 AND limit_id = ?2 AND subject = ?3 AND window_key = ?4
                        AND held > 0 AND expires_at_ms > ?5)",
            )
            .and_then(|mut s| {
                s.query_row(
                    params![env.0, key.limit_id, key.subject, key.window_key, ms(now)],
                    |r| Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, i64>(1)?)),
                )
            })
            .map(|(used, reserved)| (used.unwrap_or(0).max(0) as u64, reserved.max(0) as u64))
            .map_err(internal)
    }

    fn rolling_used(
        &mut self,
        env: EnvId,
        limit_id: &str,
        subject: &str,
        after: Timestamp,
        until: Timestamp,
    ) -> StoreResult<(u64, Option<Timestamp>)> {
        self.0
            .prepare_cached(
                "SELECT COALESCE(SUM(units), 0), MIN(at_ms) FROM rolling_usage
                 WHERE env_id = ?1 AND limit_id = ?2 AND subject = ?3
                   AND at_ms > ?4 AND at_ms <= ?5",
            )
            .and_then(|mut s| {
                s.query_row(
                    params![env.0, limit_id, subject, ms(after), ms(until)],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?)),
                )
            })
            .map(|(n, oldest)| (n.max(0) as u64, oldest.map(ts)))
            .map_err(internal)
    }

    fn open_counter(
        &mut self,
        env: EnvId,
        key: &CounterKey,
        end: Option<Timestamp>,
    ) -> StoreResult<()> {
        self.0
            .prepare_cached(
                "INSERT OR IGNORE INTO counters
                     (env_id, limit_id, subject, window_key, window_end_ms, used)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    env.0,
                    key.limit_id,
                    key.subject,
                    key.window_key,
                    end.map(ms)
                ])
            })
            .map(|_| ())
            .map_err(internal)
    }

    fn add_used(
        &mut self,
        env: EnvId,
        key: &CounterKey,
        end: Option<Timestamp>,
        units: u64,
    ) -> StoreResult<()> {
        self.0
            .prepare_cached(
                "INSERT INTO counters (env_id, limit_id, subject, window_key, window_end_ms, used)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (env_id, limit_id, subject, window_key)
                 DO UPDATE SET used = used + excluded.used",
            )
            .and_then(|mut s| {
                s.execute(params![
                    env.0,
                    key.limit_id,
                    key.subject,
                    key.window_key,
                    end.map(ms),
                    units as i64
                ])
            })
            .map(|_| ())
            .map_err(internal)
    }

    fn add_rolling(
        &mut self,
        env: EnvId,
        limit_id: &str,
        subject: &str,
        at: Timestamp,
        units: u64,
    ) -> StoreResult<()> {
        self.0
            .prepare_cached(
                "INSERT INTO rolling_usage (env_id, limit_id, subject, at_ms, units)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| s.execute(params![env.0, limit_id, subject, ms(at), units as i64]))
            .map(|_| ())
            .map_err(internal)
    }

    fn insert_reservation(&mut self, env: EnvId, r: &ReservationRow) -> StoreResult<()> {
        let settled = (r.status, r.expires_at, r.event_id.as_str());
        self.insert_reservation_as(env, r, settled, (None, None, false))
    }

    fn insert_hold(
        &mut self,
        env: EnvId,
        reservation_id: &str,
        h: &HoldRow,
        expires_at: Timestamp,
    ) -> StoreResult<()> {
        self.insert_hold_as(env, reservation_id, h, h.held, expires_at)
    }

    fn reservation(&mut self, env: EnvId, id: &str) -> StoreResult<Option<ReservationRow>> {
        let row = self
            .0
            .prepare_cached(
                "SELECT user_id, event, quantity, metadata, plan_id, status, created_at_ms,
                        expires_at_ms, event_id, final_quantity, overage, NULL, prompt,
                        prompt_truncated, reservation_id, late
                 FROM reservations WHERE env_id = ?1 AND reservation_id = ?2",
            )
            .and_then(|mut s| s.query_row(params![env.0, id], reservation_row).optional())
            .map_err(internal)?;
        let Some((mut r, status, metadata)) = row else {
            return Ok(None);
        };
        r.status = ReservationStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?;
        r.metadata = parse_metadata(&metadata)?;
        Ok(Some(r))
    }

    fn holds(&mut self, env: EnvId, reservation_id: &str) -> StoreResult<Vec<HoldRow>> {
        let mut stmt = self
            .0
            .prepare_cached(
                "SELECT limit_id, subject, window_key, window_start_ms, window_end_ms,
                        window_type, window_seconds, kind, enforcement, scope, multiplier, quota,
                        held
                 FROM reservation_limits WHERE env_id = ?1 AND reservation_id = ?2
                 ORDER BY rowid",
            )
            .map_err(internal)?;
        let rows = stmt
            .query_map(params![env.0, reservation_id], |r| {
                Ok((
                    CounterKey {
                        limit_id: r.get(0)?,
                        subject: r.get(1)?,
                        window_key: r.get(2)?,
                    },
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, u32>(6)?,
                    r.get::<_, String>(7)?,
                    r.get::<_, String>(8)?,
                    r.get::<_, String>(9)?,
                    (
                        r.get::<_, i64>(10)?,
                        r.get::<_, i64>(11)?,
                        r.get::<_, i64>(12)?,
                    ),
                ))
            })
            .map_err(internal)?;
        let mut out = Vec::new();
        for row in rows {
            let (key, start, end, wtype, seconds, kind, enforcement, scope, (mult, quota, held)) =
                row.map_err(internal)?;
            out.push(HoldRow {
                key,
                window_start: start.map(ts),
                window_end: end.map(ts),
                window_kind: WindowKind::parse(&wtype).ok_or_else(|| corrupt("window", &wtype))?,
                window_seconds: seconds,
                kind: LimitKind::parse(&kind).ok_or_else(|| corrupt("kind", &kind))?,
                enforcement: Enforcement::parse(&enforcement)
                    .ok_or_else(|| corrupt("enforcement", &enforcement))?,
                scope: Scope::parse(&scope).ok_or_else(|| corrupt("scope", &scope))?,
                multiplier: mult as u64,
                quota: quota as u64,
                held: held as u64,
            });
        }
        Ok(out)
    }

    fn finish_reservation(
        &mut self,
        env: EnvId,
        id: &str,
        status: ReservationStatus,
        final_quantity: Option<u64>,
        overage: Option<u64>,
    ) -> StoreResult<()> {
        self.0
            .prepare_cached(
                "UPDATE reservation_limits SET held = 0 WHERE env_id = ?1 AND reservation_id = ?2",
            )
            .and_then(|mut s| s.execute(params![env.0, id]))
            .map_err(internal)?;
        self.0
            .prepare_cached(
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

    fn commit_late(
        &mut self,
        env: EnvId,
        id: &str,
        event_id: &str,
        final_quantity: u64,
        overage: u64,
    ) -> StoreResult<()> {
        self.0
            .prepare_cached(
                "UPDATE reservations SET status = 'committed', late = 1, event_id = ?3,
                     final_quantity = ?4, overage = ?5
                 WHERE env_id = ?1 AND reservation_id = ?2",
            )
            .and_then(|mut s| {
                s.execute(params![
                    env.0,
                    id,
                    event_id,
                    final_quantity as i64,
                    overage as i64
                ])
            })
            .map(drop)
            .map_err(internal)
    }

    fn move_holds(
        &mut self,
        env: EnvId,
        from: &CounterKey,
        to: &CounterKey,
        (start, end): (Option<Timestamp>, Option<Timestamp>),
    ) -> StoreResult<()> {
        self.0
            .prepare_cached(
                "UPDATE reservation_limits
                 SET window_key = ?5, window_start_ms = ?6, window_end_ms = ?7
                 WHERE env_id = ?1 AND limit_id = ?2 AND subject = ?3 AND window_key = ?4
                   AND held > 0",
            )
            .and_then(|mut s| {
                s.execute(params![
                    env.0,
                    from.limit_id,
                    from.subject,
                    from.window_key,
                    to.window_key,
                    start.map(ms),
                    end.map(ms),
                ])
            })
            .map(drop)
            .map_err(internal)
    }

    fn set_expiry(&mut self, env: EnvId, id: &str, expires_at: Timestamp) -> StoreResult<()> {
        for sql in [
            "UPDATE reservations SET expires_at_ms = ?3 WHERE env_id = ?1 AND reservation_id = ?2",
            "UPDATE reservation_limits SET expires_at_ms = ?3
             WHERE env_id = ?1 AND reservation_id = ?2",
        ] {
            self.0
                .prepare_cached(sql)
                .and_then(|mut s| s.execute(params![env.0, id, ms(expires_at)]))
                .map_err(internal)?;
        }
        Ok(())
    }

    fn insert_event(&mut self, env: EnvId, e: &EventRow<'_>) -> StoreResult<()> {
        if tollgate_store::analytics::counted(e.status) {
            self.0
                .prepare_cached(ROLLUP_ADD)
                .and_then(|mut s| {
                    s.execute(params![
                        env.0,
                        tollgate_store::analytics::day_of(ms(e.occurred_at)),
                        e.user_id,
                        e.plan_id.unwrap_or(""),
                        1,
                        e.quantity as i64,
                        e.cost_micros.unwrap_or(0) as i64,
                    ])
                })
                .map_err(internal)?;
        }
        let reasons: Vec<&str> = e.reasons.iter().map(|r| r.as_str()).collect();
        let truncated =
            e.prompt.is_some_and(|p| p.truncated) || e.response.is_some_and(|p| p.truncated);
        self.0
            .prepare_cached(
                "INSERT INTO events (env_id, event_id, occurred_at_ms, user_id, event, quantity,
                     metadata, cost_micros, status, plan_id, reservation_id, reasons, overage,
                     prompt, response, truncated, release_reason, release_error_code,
                     credits_used)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                     ?17, ?18, ?19)",
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
                    e.release_reason,
                    e.release_error_code,
                    e.credits_used as i64,
                ])
            })
            .map(|_| ())
            .map_err(internal)
    }

    fn idempotency(
        &mut self,
        env: EnvId,
        scope: &str,
        key: &str,
    ) -> StoreResult<Option<IdempotencyRow>> {
        self.0
            .prepare_cached(
                "SELECT fingerprint, response, created_at_ms FROM idempotency
                 WHERE env_id = ?1 AND scope = ?2 AND key = ?3",
            )
            .and_then(|mut s| {
                s.query_row(params![env.0, scope, key], |r| {
                    Ok(IdempotencyRow {
                        fingerprint: r.get(0)?,
                        response: r.get(1)?,
                        created_at: ts(r.get(2)?),
                    })
                })
                .optional()
            })
            .map_err(internal)
    }

    fn store_idempotency(
        &mut self,
        env: EnvId,
        scope: &str,
        key: &str,
        row: &IdempotencyRow,
    ) -> StoreResult<()> {
        self.0
            .prepare_cached(
                "INSERT OR REPLACE INTO idempotency
                     (env_id, scope, key, fingerprint, response, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    env.0,
                    scope,
                    key,
                    row.fingerprint,
                    row.response,
                    ms(row.created_at)
                ])
            })
            .map(|_| ())
            .map_err(internal)
    }

    fn membership(
        &mut self,
        env: EnvId,
        user_id: &str,
    ) -> StoreResult<Option<(String, Timestamp)>> {
        self.0
            .prepare_cached(
                "SELECT account_id, added_at_ms FROM account_members
                 WHERE env_id = ?1 AND user_id = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![env.0, user_id], |r| {
                    Ok((r.get::<_, String>(0)?, ts(r.get(1)?)))
                })
                .optional()
            })
            .map_err(internal)
    }

    fn members(&mut self, env: EnvId, account_id: &str) -> StoreResult<Vec<Member>> {
        let mut st = self
            .0
            .prepare_cached(
                "SELECT user_id, added_at_ms FROM account_members
                 WHERE env_id = ?1 AND account_id = ?2 ORDER BY user_id",
            )
            .map_err(internal)?;
        let rows = st
            .query_map(params![env.0, account_id], |r| {
                Ok(Member {
                    user_id: r.get(0)?,
                    added_at: ts(r.get(1)?),
                })
            })
            .map_err(internal)?;
        rows.collect::<Result<_, _>>().map_err(internal)
    }

    fn put_member(
        &mut self,
        env: EnvId,
        account_id: &str,
        user_id: &str,
        at: Timestamp,
    ) -> StoreResult<()> {
        self.0
            .prepare_cached(
                "INSERT INTO account_members (env_id, user_id, account_id, added_at_ms)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (env_id, user_id) DO UPDATE SET
                     account_id = excluded.account_id, added_at_ms = excluded.added_at_ms",
            )
            .and_then(|mut s| s.execute(params![env.0, user_id, account_id, ms(at)]))
            .map(drop)
            .map_err(internal)
    }

    fn delete_member(&mut self, env: EnvId, account_id: &str, user_id: &str) -> StoreResult<bool> {
        self.0
            .prepare_cached(
                "DELETE FROM account_members
                 WHERE env_id = ?1 AND user_id = ?2 AND account_id = ?3",
            )
            .and_then(|mut s| s.execute(params![env.0, user_id, account_id]))
            .map(|n| n > 0)
            .map_err(internal)
    }

    fn alias(&mut self, env: EnvId, anonymous_id: &str) -> StoreResult<Option<String>> {
        self.0
            .prepare_cached("SELECT user_id FROM aliases WHERE env_id = ?1 AND anonymous_id = ?2")
            .and_then(|mut s| {
                s.query_row(params![env.0, anonymous_id], |r| r.get(0))
                    .optional()
            })
            .map_err(internal)
    }

    fn insert_alias(
        &mut self,
        env: EnvId,
        anonymous_id: &str,
        user_id: &str,
        at: Timestamp,
    ) -> StoreResult<()> {
        self.0
            .prepare_cached("UPDATE aliases SET user_id = ?3 WHERE env_id = ?1 AND user_id = ?2")
            .and_then(|mut s| s.execute(params![env.0, anonymous_id, user_id]))
            .map_err(internal)?;
        self.0
            .prepare_cached(
                "INSERT INTO aliases (env_id, anonymous_id, user_id, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| s.execute(params![env.0, anonymous_id, user_id, ms(at)]))
            .map(drop)
            .map_err(internal)
    }

    fn merge_limit(&mut self, env: EnvId, limit_id: &str, from: &str, to: &str) -> StoreResult<()> {
        for sql in [
            // `WHERE true` lets SQLite read ON CONFLICT as the upsert clause, not a join's.
            "INSERT INTO counters (env_id, limit_id, subject, window_key, window_end_ms, used)
             SELECT env_id, limit_id, ?4, window_key, window_end_ms, used FROM counters
             WHERE env_id = ?1 AND limit_id = ?2 AND subject = ?3 AND true
             ON CONFLICT (env_id, limit_id, subject, window_key)
             DO UPDATE SET used = used + excluded.used",
            // ?4 (the subject moved to) is named so that every statement takes the same four.
            "DELETE FROM counters WHERE env_id = ?1 AND limit_id = ?2 AND subject = ?3
             AND subject <> ?4",
            "UPDATE rolling_usage SET subject = ?4
             WHERE env_id = ?1 AND limit_id = ?2 AND subject = ?3",
            "UPDATE reservation_limits SET subject = ?4
             WHERE env_id = ?1 AND limit_id = ?2 AND subject = ?3 AND held > 0",
        ] {
            self.0
                .prepare_cached(sql)
                .and_then(|mut s| s.execute(params![env.0, limit_id, from, to]))
                .map_err(internal)?;
        }
        Ok(())
    }

    fn merged_peak(
        &mut self,
        env: EnvId,
        limit_id: &str,
        (from, to): (&str, &str),
        now: Timestamp,
    ) -> StoreResult<u64> {
        self.0
            .prepare_cached(
                "SELECT COALESCE(MAX(total), 0) FROM (
                     SELECT SUM(n) AS total FROM (
                         SELECT window_key, used AS n FROM counters
                         WHERE env_id = ?1 AND limit_id = ?2 AND subject IN (?3, ?4)
                         UNION ALL
                         SELECT window_key, held FROM reservation_limits
                         WHERE env_id = ?1 AND limit_id = ?2 AND subject IN (?3, ?4)
                           AND held > 0 AND expires_at_ms > ?5
                     ) GROUP BY window_key
                 )",
            )
            .and_then(|mut s| {
                s.query_row(params![env.0, limit_id, from, to, ms(now)], |r| {
                    r.get::<_, i64>(0)
                })
            })
            .map(|n| n.max(0) as u64)
            .map_err(internal)
    }

    fn reattribute(&mut self, env: EnvId, from: &str, to: &str) -> StoreResult<u64> {
        self.0
            .prepare_cached(ROLLUP_MOVE)
            .and_then(|mut s| s.execute(params![env.0, from, to]))
            .and_then(|_| {
                let mut drop = self
                    .0
                    .prepare_cached("DELETE FROM usage_daily WHERE env_id = ?1 AND user_id = ?2")?;
                drop.execute(params![env.0, from])
            })
            .map_err(internal)?;
        let moved = self
            .0
            .prepare_cached(
                "UPDATE events SET user_id = ?3, anonymous_id = ?2
                 WHERE env_id = ?1 AND user_id = ?2",
            )
            .and_then(|mut s| s.execute(params![env.0, from, to]))
            .map_err(internal)?;
        self.0
            .prepare_cached(
                "UPDATE reservations SET user_id = ?3
                 WHERE env_id = ?1 AND user_id = ?2 AND status = 'pending'",
            )
            .and_then(|mut s| s.execute(params![env.0, from, to]))
            .map_err(internal)?;
        Ok(moved as u64)
    }

    fn purge_idempotency(&mut self, before: Timestamp) -> StoreResult<()> {
        self.0
            .prepare_cached("DELETE FROM idempotency WHERE created_at_ms < ?1")
            .and_then(|mut s| s.execute(params![ms(before)]))
            .map(|_| ())
            .map_err(internal)
    }

    fn due_reservations(
        &mut self,
        real_now: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<(EnvId, String, String)>> {
        let mut stmt = self.0.prepare_cached(DUE_RESERVATIONS).map_err(internal)?;
        let rows = stmt
            .query_map(params![ms(real_now), limit as i64], |r| {
                Ok((EnvId(r.get(0)?), r.get(1)?, r.get(2)?))
            })
            .map_err(internal)?;
        rows.collect::<Result<_, _>>().map_err(internal)
    }

    fn insert_grant(&mut self, env: EnvId, g: &GrantRow) -> StoreResult<()> {
        self.0
            .prepare_cached(
                "INSERT INTO credit_grants (env_id, grant_id, subject, pack_id, item_id, unit,
                     quantity, priority, rules, expires_at_ms, source, external_ref, note,
                     created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    env.0,
                    g.grant_id,
                    g.subject,
                    g.pack_id,
                    g.item_id,
                    g.unit,
                    g.quantity as i64,
                    g.priority,
                    codec::rules_json(&g.rules),
                    g.expires_at.map(ms),
                    g.source.as_str(),
                    g.external_ref,
                    g.note,
                    ms(g.created_at),
                ])
            })
            .map(|_| ())
            .map_err(internal)
    }

    fn grant(&mut self, env: EnvId, grant_id: &str) -> StoreResult<Option<GrantRow>> {
        let sql = format!(
            "SELECT {GRANT_COLUMNS} FROM credit_grants g WHERE env_id = ?1 AND grant_id = ?2"
        );
        let row = self
            .0
            .prepare_cached(&sql)
            .and_then(|mut st| {
                st.query_row(params![env.0, grant_id], grant_text)
                    .optional()
            })
            .map_err(internal)?;
        row.map(grant_row).transpose()
    }

    fn grants_by_ref(&mut self, env: EnvId, external_ref: &str) -> StoreResult<Vec<GrantRow>> {
        let sql = format!(
            "SELECT {GRANT_COLUMNS} FROM credit_grants g WHERE env_id = ?1 AND external_ref = ?2
             ORDER BY created_at_ms, grant_id"
        );
        let mut st = self.0.prepare_cached(&sql).map_err(internal)?;
        let rows = st
            .query_map(params![env.0, external_ref], grant_text)
            .map_err(internal)?;
        rows.map(|r| grant_row(r.map_err(internal)?)).collect()
    }

    fn live_grants(&mut self, env: EnvId, subjects: &[&str]) -> StoreResult<Vec<Grant>> {
        let sql = format!(
            "SELECT {GRANT_COLUMNS}, l.remaining_after, l.held_after FROM credit_grants g
             JOIN credit_ledger l ON l.seq = (SELECT max(seq) FROM credit_ledger m
                 WHERE m.env_id = g.env_id AND m.grant_id = g.grant_id)
             WHERE g.env_id = ?1 AND g.subject = ?2 AND l.remaining_after > 0"
        );
        let mut st = self.0.prepare_cached(&sql).map_err(internal)?;
        let mut out = Vec::new();
        for subject in subjects {
            let rows = st
                .query_map(params![env.0, subject], |r| {
                    Ok((
                        grant_text(r)?,
                        r.get::<_, i64>(13)? as u64,
                        r.get::<_, i64>(14)? as u64,
                    ))
                })
                .map_err(internal)?;
            for row in rows {
                let (text, remaining, held) = row.map_err(internal)?;
                out.push(Grant {
                    row: grant_row(text)?,
                    balance: Balance { remaining, held },
                });
            }
        }
        Ok(out)
    }

    fn balance(&mut self, env: EnvId, grant_id: &str) -> StoreResult<Balance> {
        let row = self
            .0
            .prepare_cached(
                "SELECT remaining_after, held_after FROM credit_ledger
                 WHERE env_id = ?1 AND grant_id = ?2 ORDER BY seq DESC LIMIT 1",
            )
            .and_then(|mut st| {
                st.query_row(params![env.0, grant_id], |r| {
                    Ok(Balance {
                        remaining: r.get::<_, i64>(0)? as u64,
                        held: r.get::<_, i64>(1)? as u64,
                    })
                })
                .optional()
            })
            .map_err(internal)?;
        Ok(row.unwrap_or_default())
    }

    fn append_ledger(&mut self, env: EnvId, e: &LedgerEntry) -> StoreResult<()> {
        self.0
            .prepare_cached(
                "INSERT INTO credit_ledger (env_id, entry_id, at_ms, kind, grant_id, subject,
                     user_id, quantity, remaining_after, held_after, reservation_id, event_id,
                     external_ref, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    env.0,
                    e.entry_id,
                    ms(e.at),
                    e.kind.as_str(),
                    e.grant_id,
                    e.subject,
                    e.user_id,
                    e.quantity as i64,
                    e.after.remaining as i64,
                    e.after.held as i64,
                    e.reservation_id,
                    e.event_id,
                    e.external_ref,
                    e.reason,
                ])
            })
            .map(|_| ())
            .map_err(internal)
    }

    fn insert_credit_hold(
        &mut self,
        env: EnvId,
        (reservation_id, user_id): (&str, &str),
        h: &CreditHold,
    ) -> StoreResult<()> {
        self.0
            .prepare_cached(
                "INSERT INTO credit_holds (env_id, reservation_id, grant_id, subject, user_id,
                     held, active)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    env.0,
                    reservation_id,
                    h.grant_id,
                    h.subject,
                    user_id,
                    h.units as i64,
                    h.active,
                ])
            })
            .map(|_| ())
            .map_err(internal)
    }

    fn credit_holds(&mut self, env: EnvId, reservation_id: &str) -> StoreResult<Vec<CreditHold>> {
        let mut st = self
            .0
            .prepare_cached(
                "SELECT grant_id, subject, held, active FROM credit_holds
                 WHERE env_id = ?1 AND reservation_id = ?2 ORDER BY rowid",
            )
            .map_err(internal)?;
        let rows = st
            .query_map(params![env.0, reservation_id], |r| {
                Ok(CreditHold {
                    grant_id: r.get(0)?,
                    subject: r.get(1)?,
                    units: r.get::<_, i64>(2)? as u64,
                    active: r.get(3)?,
                })
            })
            .map_err(internal)?;
        rows.collect::<Result<_, _>>().map_err(internal)
    }

    fn end_credit_holds(&mut self, env: EnvId, reservation_id: &str) -> StoreResult<()> {
        self.0
            .prepare_cached(
                "UPDATE credit_holds SET active = 0 WHERE env_id = ?1 AND reservation_id = ?2",
            )
            .and_then(|mut st| st.execute(params![env.0, reservation_id]))
            .map(|_| ())
            .map_err(internal)
    }

    fn overdue_held(&mut self, env: EnvId, grant_id: &str, now: Timestamp) -> StoreResult<u64> {
        self.0
            .prepare_cached(
                "SELECT COALESCE(SUM(h.held), 0) FROM credit_holds h
                 JOIN reservations r ON r.env_id = h.env_id AND r.reservation_id = h.reservation_id
                 WHERE h.env_id = ?1 AND h.grant_id = ?2 AND h.active = 1
                   AND r.status = 'pending' AND r.expires_at_ms <= ?3",
            )
            .and_then(|mut st| {
                st.query_row(params![env.0, grant_id, ms(now)], |r| r.get::<_, i64>(0))
            })
            .map(|n| n as u64)
            .map_err(internal)
    }

    fn overdue_credit_reservations(
        &mut self,
        env: EnvId,
        user_id: &str,
        now: Timestamp,
    ) -> StoreResult<Vec<String>> {
        let mut st = self
            .0
            .prepare_cached(
                // No DISTINCT: it would steer SQLite off the (env_id, user_id) index onto a
                // scan of every hold of the environment; the procedure drops repeats.
                "SELECT h.reservation_id FROM credit_holds h
                 JOIN reservations r ON r.env_id = h.env_id AND r.reservation_id = h.reservation_id
                 WHERE h.env_id = ?1 AND h.user_id = ?2 AND h.active = 1
                   AND r.status = 'pending' AND r.expires_at_ms <= ?3",
            )
            .map_err(internal)?;
        let rows = st
            .query_map(params![env.0, user_id, ms(now)], |r| r.get(0))
            .map_err(internal)?;
        rows.collect::<Result<_, _>>().map_err(internal)
    }

    fn credits_used_by(&mut self, env: EnvId, reservation_id: &str) -> StoreResult<u64> {
        self.0
            .prepare_cached(
                "SELECT COALESCE(SUM(CASE kind WHEN 'burn' THEN quantity
                     WHEN 'refund' THEN -quantity ELSE 0 END), 0)
                 FROM credit_ledger WHERE env_id = ?1 AND reservation_id = ?2",
            )
            .and_then(|mut st| st.query_row(params![env.0, reservation_id], |r| r.get::<_, i64>(0)))
            .map(|n| n.max(0) as u64)
            .map_err(internal)
    }

    fn revoke_mark(&mut self, env: EnvId, grant_id: &str, at: Timestamp) -> StoreResult<()> {
        self.0
            .prepare_cached(
                "INSERT INTO credit_revocations (env_id, grant_id, at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT DO NOTHING",
            )
            .and_then(|mut st| st.execute(params![env.0, grant_id, ms(at)]))
            .map(|_| ())
            .map_err(internal)
    }

    fn is_revoked(&mut self, env: EnvId, grant_id: &str) -> StoreResult<bool> {
        self.0
            .prepare_cached("SELECT 1 FROM credit_revocations WHERE env_id = ?1 AND grant_id = ?2")
            .and_then(|mut st| st.exists(params![env.0, grant_id]))
            .map_err(internal)
    }

    fn ledger_page(
        &mut self,
        env: EnvId,
        (subject, user): (&str, Option<&str>),
        limit: usize,
        before: Option<i64>,
    ) -> StoreResult<Vec<LedgerEntry>> {
        // One indexed walk per side (the owner's grants, the user's requests), merged.
        let sql = format!(
            "SELECT {LEDGER_COLUMNS} FROM credit_ledger
             WHERE env_id = ?1 AND subject = ?2 AND seq < ?4
             UNION
             SELECT {LEDGER_COLUMNS} FROM credit_ledger
             WHERE env_id = ?1 AND user_id = ?3 AND seq < ?4
             ORDER BY seq DESC LIMIT ?5"
        );
        let mut st = self.0.prepare_cached(&sql).map_err(internal)?;
        let rows = st
            .query_map(
                params![
                    env.0,
                    subject,
                    user,
                    before.unwrap_or(i64::MAX),
                    limit as i64
                ],
                ledger_text,
            )
            .map_err(internal)?;
        rows.map(|r| ledger_entry(r.map_err(internal)?)).collect()
    }

    fn queue_expiry(&mut self, env: EnvId, g: &GrantRow, expires_at: Timestamp) -> StoreResult<()> {
        self.0
            .prepare_cached(
                "INSERT INTO credit_expiry_queue (env_id, grant_id, subject, expires_at_ms)
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut st| st.execute(params![env.0, g.grant_id, g.subject, ms(expires_at)]))
            .map(|_| ())
            .map_err(internal)
    }

    fn expired_grants(
        &mut self,
        real_now: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<(EnvId, String, String)>> {
        // The bound with the largest clock offset keeps the scan to the queue's due end.
        let mut st = self
            .0
            .prepare_cached(
                "SELECT q.env_id, q.grant_id, q.subject FROM credit_expiry_queue q
                 JOIN environments e ON e.env_id = q.env_id
                 WHERE q.expires_at_ms <= ?1 + (SELECT max(clock_offset_s) FROM environments) * 1000
                   AND q.expires_at_ms <= ?1 + e.clock_offset_s * 1000
                 LIMIT ?2",
            )
            .map_err(internal)?;
        let rows = st
            .query_map(params![ms(real_now), limit as i64], |r| {
                Ok((EnvId(r.get(0)?), r.get(1)?, r.get(2)?))
            })
            .map_err(internal)?;
        rows.collect::<Result<_, _>>().map_err(internal)
    }

    fn dequeue_expiry(&mut self, env: EnvId, grant_id: &str) -> StoreResult<()> {
        self.0
            .prepare_cached("DELETE FROM credit_expiry_queue WHERE env_id = ?1 AND grant_id = ?2")
            .and_then(|mut st| st.execute(params![env.0, grant_id]))
            .map(|_| ())
            .map_err(internal)
    }

    fn rolled_over(&mut self, env: EnvId, key: &CounterKey) -> StoreResult<bool> {
        self.0
            .prepare_cached(
                "SELECT 1 FROM rollovers
                 WHERE env_id = ?1 AND limit_id = ?2 AND subject = ?3 AND window_key = ?4",
            )
            .and_then(|mut st| st.exists(params![env.0, key.limit_id, key.subject, key.window_key]))
            .map_err(internal)
    }

    fn mark_rollover(
        &mut self,
        env: EnvId,
        key: &CounterKey,
        grant_id: Option<&str>,
    ) -> StoreResult<()> {
        self.0
            .prepare_cached(
                "INSERT INTO rollovers (env_id, limit_id, subject, window_key, grant_id)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    env.0,
                    key.limit_id,
                    key.subject,
                    key.window_key,
                    grant_id
                ])
            })
            .map(|_| ())
            .map_err(internal)
    }

    // ---- billers
    fn put_integration(&mut self, i: &Integration) -> StoreResult<Integration> {
        let text = self
            .0
            .prepare_cached(
                "INSERT INTO biller_integrations (env_id, biller, endpoint_id, config,
                     updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (env_id, biller) DO UPDATE SET
                     config = excluded.config, updated_at_ms = excluded.updated_at_ms
                 RETURNING env_id, biller, endpoint_id, config, updated_at_ms",
            )
            .and_then(|mut st| {
                st.query_row(
                    params![
                        i.env.0,
                        i.biller.as_str(),
                        i.endpoint_id,
                        i.config,
                        ms(i.updated_at)
                    ],
                    integration_text,
                )
            })
            .map_err(internal)?;
        integration_row(text)
    }

    fn integration(&mut self, env: EnvId, biller: Biller) -> StoreResult<Option<Integration>> {
        let row = self
            .0
            .prepare_cached(
                "SELECT env_id, biller, endpoint_id, config, updated_at_ms
                 FROM biller_integrations WHERE env_id = ?1 AND biller = ?2",
            )
            .and_then(|mut st| {
                st.query_row(params![env.0, biller.as_str()], integration_text)
                    .optional()
            })
            .map_err(internal)?;
        row.map(integration_row).transpose()
    }

    fn endpoint(
        &mut self,
        biller: Biller,
        endpoint_id: &str,
    ) -> StoreResult<Option<EndpointTarget>> {
        let row = self
            .0
            .prepare_cached(
                "SELECT i.env_id, i.biller, i.endpoint_id, i.config, i.updated_at_ms,
                     e.clock_offset_s
                 FROM biller_integrations i JOIN environments e ON e.env_id = i.env_id
                 WHERE i.endpoint_id = ?1 AND i.biller = ?2",
            )
            .and_then(|mut st| {
                st.query_row(params![endpoint_id, biller.as_str()], |r| {
                    Ok((integration_text(r)?, r.get::<_, i64>(5)?))
                })
                .optional()
            })
            .map_err(internal)?;
        row.map(|(text, offset)| {
            Ok(EndpointTarget {
                clock_offset_seconds: offset,
                integration: integration_row(text)?,
            })
        })
        .transpose()
    }

    fn set_meter_names(&mut self, env: EnvId, names: &[(String, String)]) -> StoreResult<()> {
        self.0
            .prepare_cached("DELETE FROM meter_names WHERE env_id = ?1")
            .and_then(|mut st| st.execute(params![env.0]))
            .map_err(internal)?;
        // A name given twice keeps its last meter rather than failing the whole write.
        let mut st = self
            .0
            .prepare_cached(
                "INSERT INTO meter_names (env_id, event, meter_event_name) VALUES (?1, ?2, ?3)
                 ON CONFLICT (env_id, event) DO UPDATE SET
                     meter_event_name = excluded.meter_event_name",
            )
            .map_err(internal)?;
        for (event, meter) in names {
            st.execute(params![env.0, event, meter]).map_err(internal)?;
        }
        Ok(())
    }

    fn meter_name(&mut self, env: EnvId, event: &str) -> StoreResult<Option<String>> {
        self.0
            .prepare_cached(
                "SELECT meter_event_name FROM meter_names WHERE env_id = ?1 AND event = ?2",
            )
            .and_then(|mut st| st.query_row(params![env.0, event], |r| r.get(0)).optional())
            .map_err(internal)
    }

    fn biller_customer(
        &mut self,
        env: EnvId,
        biller: Biller,
        customer_id: &str,
    ) -> StoreResult<Option<String>> {
        self.0
            .prepare_cached(
                "SELECT subject FROM biller_customers
                 WHERE env_id = ?1 AND biller = ?2 AND customer_id = ?3",
            )
            .and_then(|mut st| {
                st.query_row(params![env.0, biller.as_str(), customer_id], |r| r.get(0))
                    .optional()
            })
            .map_err(internal)
    }

    fn put_biller_customer(
        &mut self,
        env: EnvId,
        biller: Biller,
        customer_id: &str,
        subject: &str,
        at: Timestamp,
    ) -> StoreResult<()> {
        self.0
            .prepare_cached(
                "INSERT INTO biller_customers (env_id, biller, customer_id, subject, mapped_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (env_id, biller, customer_id) DO UPDATE SET
                     subject = excluded.subject, mapped_at_ms = excluded.mapped_at_ms",
            )
            .and_then(|mut st| {
                st.execute(params![
                    env.0,
                    biller.as_str(),
                    customer_id,
                    subject,
                    ms(at)
                ])
            })
            .map(|_| ())
            .map_err(internal)
    }

    fn biller_customer_of(
        &mut self,
        env: EnvId,
        biller: Biller,
        subject: &str,
    ) -> StoreResult<Option<String>> {
        self.0
            .prepare_cached(
                "SELECT customer_id FROM biller_customers
                 WHERE env_id = ?1 AND biller = ?2 AND subject = ?3
                 ORDER BY mapped_at_ms DESC, customer_id DESC LIMIT 1",
            )
            .and_then(|mut st| {
                st.query_row(params![env.0, biller.as_str(), subject], |r| r.get(0))
                    .optional()
            })
            .map_err(internal)
    }

    fn biller_event(
        &mut self,
        env: EnvId,
        biller: Biller,
        event_id: &str,
    ) -> StoreResult<Option<StoredBillerEvent>> {
        let sql = format!(
            "SELECT {BILLER_EVENT_COLUMNS} FROM biller_events
             WHERE env_id = ?1 AND biller = ?2 AND event_id = ?3"
        );
        let row = self
            .0
            .prepare_cached(&sql)
            .and_then(|mut st| {
                st.query_row(params![env.0, biller.as_str(), event_id], biller_event_text)
                    .optional()
            })
            .map_err(internal)?;
        row.map(biller_event_row).transpose()
    }

    fn put_biller_event(&mut self, env: EnvId, e: &StoredBillerEvent) -> StoreResult<()> {
        self.0
            .prepare_cached(
                "INSERT INTO biller_events (env_id, biller, event_id, event_type, received_at_ms,
                     customer_id, status, note, body, deliveries)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (env_id, biller, event_id) DO UPDATE SET
                     event_type = excluded.event_type, received_at_ms = excluded.received_at_ms,
                     customer_id = excluded.customer_id, status = excluded.status,
                     note = excluded.note, body = excluded.body,
                     deliveries = excluded.deliveries",
            )
            .and_then(|mut st| {
                st.execute(params![
                    env.0,
                    e.biller.as_str(),
                    e.event_id,
                    e.event_type,
                    ms(e.received_at),
                    e.customer_id,
                    e.status.as_str(),
                    e.note,
                    e.body,
                    e.deliveries,
                ])
            })
            .map(|_| ())
            .map_err(internal)
    }

    fn biller_events(&mut self, q: &BillerEventsQuery) -> StoreResult<Vec<StoredBillerEvent>> {
        let sql = format!(
            "SELECT {BILLER_EVENT_COLUMNS} FROM biller_events
             WHERE env_id = ?1 AND biller = ?2 AND (?3 IS NULL OR status = ?3)
               AND (?4 IS NULL OR customer_id = ?4)
               AND (?5 IS NULL OR received_at_ms < ?5
                    OR (received_at_ms = ?5 AND event_id < ?6))
             ORDER BY received_at_ms DESC, event_id DESC LIMIT ?7"
        );
        let (before_ms, before_id) = match &q.before {
            Some((t, id)) => (Some(ms(*t)), Some(id.as_str())),
            None => (None, None),
        };
        let mut st = self.0.prepare_cached(&sql).map_err(internal)?;
        let rows = st
            .query_map(
                params![
                    q.env.0,
                    q.biller.as_str(),
                    q.status.map(BillerEventStatus::as_str),
                    q.customer_id,
                    before_ms,
                    before_id,
                    q.limit as i64
                ],
                biller_event_text,
            )
            .map_err(internal)?;
        rows.map(|r| biller_event_row(r.map_err(internal)?))
            .collect()
    }

    fn purge_biller_events(&mut self, before: Timestamp) -> StoreResult<usize> {
        self.0
            .prepare_cached("DELETE FROM biller_events WHERE received_at_ms < ?1")
            .and_then(|mut st| st.execute(params![ms(before)]))
            .map_err(internal)
    }

    fn biller_snapshot(
        &mut self,
        env: EnvId,
        biller: Biller,
        subscription_id: &str,
    ) -> StoreResult<Option<BillerSnapshotRow>> {
        self.0
            .prepare_cached(
                "SELECT subscription_id, subject, created_ms, period_start_ms, ended
                 FROM biller_snapshots
                 WHERE env_id = ?1 AND biller = ?2 AND subscription_id = ?3",
            )
            .and_then(|mut st| {
                st.query_row(params![env.0, biller.as_str(), subscription_id], |r| {
                    Ok(BillerSnapshotRow {
                        subscription_id: r.get(0)?,
                        subject: r.get(1)?,
                        created: ts(r.get(2)?),
                        period_start: r.get::<_, Option<i64>>(3)?.map(ts),
                        ended: r.get(4)?,
                    })
                })
                .optional()
            })
            .map_err(internal)
    }

    fn put_biller_snapshot(
        &mut self,
        env: EnvId,
        biller: Biller,
        row: &BillerSnapshotRow,
    ) -> StoreResult<()> {
        self.0
            .prepare_cached(
                "INSERT INTO biller_snapshots (env_id, biller, subscription_id, subject,
                     created_ms, period_start_ms, ended)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (env_id, biller, subscription_id) DO UPDATE SET
                     subject = excluded.subject, created_ms = excluded.created_ms,
                     period_start_ms = excluded.period_start_ms, ended = excluded.ended",
            )
            .and_then(|mut st| {
                st.execute(params![
                    env.0,
                    biller.as_str(),
                    row.subscription_id,
                    row.subject,
                    ms(row.created),
                    row.period_start.map(ms),
                    row.ended,
                ])
            })
            .map(|_| ())
            .map_err(internal)
    }

    fn live_biller_subscriptions(
        &mut self,
        env: EnvId,
        biller: Biller,
        subject: &str,
    ) -> StoreResult<Vec<String>> {
        let mut st = self
            .0
            .prepare_cached(
                "SELECT subscription_id FROM biller_snapshots
                 WHERE env_id = ?1 AND biller = ?2 AND subject = ?3 AND ended = 0
                 ORDER BY subscription_id",
            )
            .map_err(internal)?;
        let rows = st
            .query_map(params![env.0, biller.as_str(), subject], |r| r.get(0))
            .map_err(internal)?;
        rows.collect::<Result<_, _>>().map_err(internal)
    }

    fn enqueue_meter_event(&mut self, row: &MeterEventRow) -> StoreResult<()> {
        self.0
            .prepare_cached(
                "INSERT INTO meter_outbox (env_id, event_id, meter_event_name, user_id, value,
                     occurred_at_ms, status, attempts, next_attempt_at_ms, last_status,
                     last_error, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT (env_id, event_id) DO NOTHING",
            )
            .and_then(|mut st| {
                st.execute(params![
                    row.env.0,
                    row.event_id,
                    row.meter_event_name,
                    row.user_id,
                    row.value as i64,
                    ms(row.occurred_at),
                    row.status.as_str(),
                    row.attempts,
                    ms(row.next_attempt_at),
                    row.last_status,
                    row.last_error,
                    ms(row.created_at),
                ])
            })
            .map(|_| ())
            .map_err(internal)
    }

    fn claim_meter_events(
        &mut self,
        real_now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<(MeterEventRow, i64)>> {
        // One writer: no other transaction can take a row between the pick and the lease.
        // The bound with the largest clock offset keeps the scan to the queue's due end.
        let sql = format!(
            "UPDATE meter_outbox SET lease_until_ms = ?2
             WHERE rowid IN (
                 SELECT o.rowid FROM meter_outbox o
                 JOIN environments e ON e.env_id = o.env_id
                 WHERE o.status = 'pending'
                   AND o.next_attempt_at_ms
                       <= ?1 + (SELECT max(clock_offset_s) FROM environments) * 1000
                   AND o.next_attempt_at_ms <= ?1 + e.clock_offset_s * 1000
                   AND (o.lease_until_ms IS NULL OR o.lease_until_ms <= ?1)
                 ORDER BY o.next_attempt_at_ms LIMIT ?3)
             RETURNING {METER_COLUMNS}, (SELECT e.clock_offset_s FROM environments e
                 WHERE e.env_id = meter_outbox.env_id)"
        );
        let mut st = self.0.prepare_cached(&sql).map_err(internal)?;
        let rows = st
            .query_map(params![ms(real_now), ms(lease_until), limit as i64], |r| {
                Ok((meter_text(r)?, r.get::<_, i64>(12)?))
            })
            .map_err(internal)?;
        rows.map(|r| {
            let (text, offset) = r.map_err(internal)?;
            Ok((meter_row(text)?, offset))
        })
        .collect()
    }

    fn finish_meter_event(
        &mut self,
        env: EnvId,
        event_id: &str,
        attempt: &MeterAttempt,
        now: Timestamp,
    ) -> StoreResult<()> {
        // A retry keeps the row pending (status NULL keeps it) and moves its due time.
        let (status, last_status, last_error, next) = match attempt {
            MeterAttempt::Delivered { status } => {
                (Some(MeterStatus::Delivered), Some(*status), None, None)
            }
            MeterAttempt::Retry {
                status,
                error,
                next_attempt_at,
            } => (
                None,
                *status,
                Some(error.as_str()),
                Some(ms(*next_attempt_at)),
            ),
            MeterAttempt::Failed { status, error } => (
                Some(MeterStatus::Failed),
                *status,
                Some(error.as_str()),
                None,
            ),
        };
        self.0
            .prepare_cached(
                "UPDATE meter_outbox SET attempts = attempts + 1, last_attempt_at_ms = ?3,
                     lease_until_ms = NULL, status = COALESCE(?4, status), last_status = ?5,
                     last_error = ?6, next_attempt_at_ms = COALESCE(?7, next_attempt_at_ms)
                 WHERE env_id = ?1 AND event_id = ?2",
            )
            .and_then(|mut st| {
                st.execute(params![
                    env.0,
                    event_id,
                    ms(now),
                    status.map(MeterStatus::as_str),
                    last_status,
                    last_error,
                    next,
                ])
            })
            .map(|_| ())
            .map_err(internal)
    }

    fn meter_events(&mut self, q: &MeterEventsQuery) -> StoreResult<Vec<MeterEventRow>> {
        let sql = format!(
            "SELECT {METER_COLUMNS} FROM meter_outbox
             WHERE env_id = ?1 AND (?2 IS NULL OR status = ?2)
               AND (?3 IS NULL OR created_at_ms < ?3 OR (created_at_ms = ?3 AND event_id < ?4))
             ORDER BY created_at_ms DESC, event_id DESC LIMIT ?5"
        );
        let (before_ms, before_id) = match &q.before {
            Some((t, id)) => (Some(ms(*t)), Some(id.as_str())),
            None => (None, None),
        };
        let mut st = self.0.prepare_cached(&sql).map_err(internal)?;
        let rows = st
            .query_map(
                params![
                    q.env.0,
                    q.status.map(MeterStatus::as_str),
                    before_ms,
                    before_id,
                    q.limit as i64
                ],
                meter_text,
            )
            .map_err(internal)?;
        rows.map(|r| meter_row(r.map_err(internal)?)).collect()
    }

    fn retry_meter_event(
        &mut self,
        env: EnvId,
        event_id: &str,
        now: Timestamp,
    ) -> StoreResult<bool> {
        self.0
            .prepare_cached(
                "UPDATE meter_outbox SET status = 'pending', next_attempt_at_ms = ?3,
                     lease_until_ms = NULL
                 WHERE env_id = ?1 AND event_id = ?2",
            )
            .and_then(|mut st| st.execute(params![env.0, event_id, ms(now)]))
            .map(|n| n > 0)
            .map_err(internal)
    }

    fn traits(&mut self, env: EnvId, user_id: &str) -> StoreResult<Option<String>> {
        crate::persons::traits(self.0, env, user_id)
    }

    fn put_traits(
        &mut self,
        env: EnvId,
        user_id: &str,
        traits: &str,
        now: Timestamp,
    ) -> StoreResult<()> {
        crate::persons::put_traits(self.0, env, user_id, traits, now)
    }

    fn delete_traits(&mut self, env: EnvId, user_id: &str) -> StoreResult<Option<String>> {
        crate::persons::delete_traits(self.0, env, user_id)
    }

    fn erase_logged_text(
        &mut self,
        env: EnvId,
        user_id: &str,
        limit: usize,
    ) -> StoreResult<LoggedTextCleared> {
        crate::persons::erase_logged_text(self.0, env, user_id, limit)
    }

    fn settings(&mut self, env: EnvId) -> StoreResult<Option<StoredSettings>> {
        self.0
            .prepare_cached("SELECT document, updated_at_ms FROM settings WHERE env_id = ?1")
            .and_then(|mut st| {
                st.query_row(params![env.0], |r| {
                    Ok(StoredSettings {
                        document: r.get(0)?,
                        updated_at: ts(r.get(1)?),
                    })
                })
                .optional()
            })
            .map_err(internal)
    }

    fn put_settings(&mut self, env: EnvId, document: &str, now: Timestamp) -> StoreResult<()> {
        self.0
            .prepare_cached(
                "INSERT INTO settings (env_id, document, updated_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (env_id) DO UPDATE SET
                     document = excluded.document, updated_at_ms = excluded.updated_at_ms",
            )
            .and_then(|mut st| st.execute(params![env.0, document, ms(now)]))
            .map(|_| ())
            .map_err(internal)
    }

    fn token_secret(&mut self, env: EnvId, candidate: &str, now: Timestamp) -> StoreResult<String> {
        self.0
            .prepare_cached(
                "INSERT INTO environment_secrets (env_id, token_secret, created_at_ms)
                 VALUES (?1, ?2, ?3) ON CONFLICT (env_id) DO NOTHING",
            )
            .and_then(|mut st| st.execute(params![env.0, candidate, ms(now)]))
            .and_then(|_| {
                self.0
                    .prepare_cached(
                        "SELECT token_secret FROM environment_secrets WHERE env_id = ?1",
                    )?
                    .query_row(params![env.0], |r| r.get(0))
            })
            .map_err(internal)
    }
}

/// The columns of a grant row, in the order [`grant_text`] reads them.
const GRANT_COLUMNS: &str = "g.grant_id, g.subject, g.pack_id, g.item_id, g.unit, g.quantity,
    g.priority, g.rules, g.expires_at_ms, g.source, g.external_ref, g.note, g.created_at_ms";

/// A grant row as stored, before its text columns are parsed.
type GrantText = (
    (String, String, Option<String>, String, String, i64, i32),
    (
        String,
        Option<i64>,
        String,
        Option<String>,
        Option<String>,
        i64,
    ),
);

fn grant_text(r: &Row<'_>) -> rusqlite::Result<GrantText> {
    Ok((
        (
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
        ),
        (
            r.get(7)?,
            r.get(8)?,
            r.get(9)?,
            r.get(10)?,
            r.get(11)?,
            r.get(12)?,
        ),
    ))
}

fn grant_row(text: GrantText) -> StoreResult<GrantRow> {
    let ((grant_id, subject, pack_id, item_id, unit, quantity, priority), rest) = text;
    let (rules, expires_at, source, external_ref, note, created_at) = rest;
    Ok(GrantRow {
        rules: codec::parse_rules(&rules).ok_or_else(|| corrupt("grant rules", &rules))?,
        source: GrantSource::parse(&source).ok_or_else(|| corrupt("grant source", &source))?,
        grant_id,
        subject,
        pack_id,
        item_id,
        unit,
        quantity: quantity as u64,
        priority,
        expires_at: expires_at.map(ts),
        external_ref,
        note,
        created_at: ts(created_at),
    })
}

const LEDGER_COLUMNS: &str = "seq, entry_id, at_ms, kind, grant_id, subject, user_id, quantity,
    remaining_after, held_after, reservation_id, event_id, external_ref, reason";

type LedgerText = (
    (i64, String, i64, String, String, String, Option<String>),
    (
        i64,
        i64,
        i64,
        Option<String>,
        Option<String>,
        Option<String>,
        String,
    ),
);

fn ledger_text(r: &Row<'_>) -> rusqlite::Result<LedgerText> {
    Ok((
        (
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
        ),
        (
            r.get(7)?,
            r.get(8)?,
            r.get(9)?,
            r.get(10)?,
            r.get(11)?,
            r.get(12)?,
            r.get(13)?,
        ),
    ))
}

fn ledger_entry(text: LedgerText) -> StoreResult<LedgerEntry> {
    let ((seq, entry_id, at, kind, grant_id, subject, user_id), rest) = text;
    let (quantity, remaining, held, reservation_id, event_id, external_ref, reason) = rest;
    Ok(LedgerEntry {
        kind: LedgerKind::parse(&kind).ok_or_else(|| corrupt("ledger kind", &kind))?,
        seq,
        entry_id,
        at: ts(at),
        grant_id,
        subject,
        user_id,
        quantity: quantity as u64,
        after: Balance {
            remaining: remaining as u64,
            held: held as u64,
        },
        reservation_id,
        event_id,
        external_ref,
        reason,
    })
}

/// An integration row as stored: env, biller, endpoint id, config, updated at.
type IntegrationText = (i64, String, String, String, i64);

fn integration_text(r: &Row<'_>) -> rusqlite::Result<IntegrationText> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn integration_row(text: IntegrationText) -> StoreResult<Integration> {
    let (env, biller, endpoint_id, config, updated_at) = text;
    Ok(Integration {
        env: EnvId(env),
        biller: Biller::parse(&biller).ok_or_else(|| corrupt("biller", &biller))?,
        endpoint_id,
        config,
        updated_at: ts(updated_at),
    })
}

/// The columns of a received biller event, in the order [`biller_event_text`] reads them.
const BILLER_EVENT_COLUMNS: &str = "biller, event_id, event_type, received_at_ms, customer_id,
    status, note, body, deliveries";

type BillerEventText = (
    (String, String, String, i64, Option<String>),
    (String, String, String, i64),
);

fn biller_event_text(r: &Row<'_>) -> rusqlite::Result<BillerEventText> {
    Ok((
        (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?),
        (r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?),
    ))
}

fn biller_event_row(text: BillerEventText) -> StoreResult<StoredBillerEvent> {
    let ((biller, event_id, event_type, received_at, customer_id), rest) = text;
    let (status, note, body, deliveries) = rest;
    Ok(StoredBillerEvent {
        biller: Biller::parse(&biller).ok_or_else(|| corrupt("biller", &biller))?,
        status: BillerEventStatus::parse(&status)
            .ok_or_else(|| corrupt("biller event status", &status))?,
        event_id,
        event_type,
        received_at: ts(received_at),
        customer_id,
        note,
        body,
        deliveries: u32::try_from(deliveries).unwrap_or(u32::MAX),
    })
}

/// The columns of a meter outbox row, in the order [`meter_text`] reads them.
const METER_COLUMNS: &str = "env_id, event_id, meter_event_name, user_id, value, occurred_at_ms,
    status, attempts, next_attempt_at_ms, last_status, last_error, created_at_ms";

type MeterText = (
    (i64, String, String, String, i64, i64),
    (String, i64, i64, Option<i64>, Option<String>, i64),
);

fn meter_text(r: &Row<'_>) -> rusqlite::Result<MeterText> {
    Ok((
        (
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        ),
        (
            r.get(6)?,
            r.get(7)?,
            r.get(8)?,
            r.get(9)?,
            r.get(10)?,
            r.get(11)?,
        ),
    ))
}

fn meter_row(text: MeterText) -> StoreResult<MeterEventRow> {
    let ((env, event_id, meter_event_name, user_id, value, occurred_at), rest) = text;
    let (status, attempts, next_attempt_at, last_status, last_error, created_at) = rest;
    Ok(MeterEventRow {
        env: EnvId(env),
        status: MeterStatus::parse(&status).ok_or_else(|| corrupt("meter status", &status))?,
        event_id,
        meter_event_name,
        user_id,
        value: value as u64,
        occurred_at: ts(occurred_at),
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        next_attempt_at: ts(next_attempt_at),
        last_status: last_status.and_then(|s| u16::try_from(s).ok()),
        last_error,
        created_at: ts(created_at),
    })
}

/// The columns of a listed usage event, in the order [`event_row`] reads them.
const EVENT_COLUMNS: &str = "event_id, occurred_at_ms, user_id, anonymous_id, event, quantity,
    metadata, cost_micros, status, plan_id, reservation_id, reasons, overage, credits_used,
    account_id";

/// The filters every shape of `GET /v1/events` shares, parameters ?3 to ?9.
const EVENT_FILTERS: &str = "(?3 IS NULL OR status = ?3)
    AND (?4 IS NULL OR occurred_at_ms < ?4 OR (occurred_at_ms = ?4 AND event_id < ?5))
    AND (?6 IS NULL OR event GLOB ?6)
    AND (?7 IS NULL OR occurred_at_ms >= ?7)
    AND (?8 IS NULL OR occurred_at_ms < ?8)
    AND (?9 IS NULL OR NOT EXISTS (
        SELECT 1 FROM json_each(?9) AS f
        WHERE json_extract(events.metadata, '$.\"' || f.key || '\"') IS NOT f.value))";

/// `GET /v1/events`: newest first, by time then event id (the cursor's order). One statement
/// per shape, so that each uses its index: (env_id, user_id, occurred_at_ms) with a user,
/// (env_id, occurred_at_ms) without. Metadata keys are `[A-Za-z0-9_.:-]`, so quoting one in a
/// JSON path needs no escape.
pub(crate) fn list_events(conn: &Connection, q: &EventsQuery) -> StoreResult<Vec<StoredEvent>> {
    let who = match q.user_id {
        Some(_) => "user_id = ?2",
        None => "?2 IS NULL",
    };
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events
         WHERE env_id = ?1 AND {who} AND {EVENT_FILTERS}
         ORDER BY occurred_at_ms DESC, event_id DESC LIMIT ?10"
    );
    let (before_ms, before_id) = match &q.before {
        Some((t, id)) => (Some(ms(*t)), Some(id.as_str())),
        None => (None, None),
    };
    let mut st = conn.prepare_cached(&sql).map_err(internal)?;
    let rows = st
        .query_map(
            params![
                q.env.0,
                q.user_id.as_ref().map(|u| u.as_str()),
                q.status,
                before_ms,
                before_id,
                q.event.as_ref().map(|e| e.as_str()),
                q.from.map(ms),
                q.to.map(ms),
                q.metadata_json(),
                q.limit as i64,
            ],
            event_row,
        )
        .map_err(internal)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(stored_event(row.map_err(internal)?)?);
    }
    Ok(out)
}

/// `GET /v1/events/{id}`: one event, with its logged prompt and response.
pub(crate) fn get_event(
    conn: &Connection,
    env: EnvId,
    event_id: &str,
) -> StoreResult<Option<StoredEventDetail>> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS}, prompt, response, truncated FROM events
         WHERE env_id = ?1 AND event_id = ?2"
    );
    let mut st = conn.prepare_cached(&sql).map_err(internal)?;
    let found = st
        .query_row(params![env.0, event_id], |r| {
            Ok((
                event_row(r)?,
                r.get::<_, Option<String>>(15)?,
                r.get::<_, Option<String>>(16)?,
                r.get::<_, i64>(17)?,
            ))
        })
        .optional()
        .map_err(internal)?;
    let Some((row, prompt, response, truncated)) = found else {
        return Ok(None);
    };
    Ok(Some(StoredEventDetail {
        event: stored_event(row)?,
        prompt,
        response,
        truncated: truncated != 0,
    }))
}

/// One listed event row as stored, before its text columns are parsed.
type ListedEvent = (
    (String, i64, String, Option<String>, String, i64),
    (
        String,
        Option<i64>,
        String,
        Option<String>,
        Option<String>,
        String,
        i64,
        i64,
    ),
    Option<String>,
);

fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ListedEvent> {
    Ok((
        (
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        ),
        (
            r.get(6)?,
            r.get(7)?,
            r.get(8)?,
            r.get(9)?,
            r.get(10)?,
            r.get(11)?,
            r.get(12)?,
            r.get(13)?,
        ),
        r.get(14)?,
    ))
}

fn stored_event(row: ListedEvent) -> StoreResult<StoredEvent> {
    let ((event_id, at, user_id, anonymous_id, event, quantity), rest, account_id) = row;
    let (metadata, cost, status, plan_id, reservation_id, reasons, overage, credits_used) = rest;
    Ok(StoredEvent {
        event_id,
        occurred_at: ts(at),
        user_id,
        account_id,
        anonymous_id,
        event,
        quantity: quantity as u64,
        metadata: parse_metadata(&metadata)?,
        cost_micros: cost.map(|c| c as u64),
        status,
        plan_id,
        reservation_id,
        reasons: serde_json::from_str(&reasons).map_err(|_| corrupt("reasons", &reasons))?,
        overage: overage as u64,
        credits_used: credits_used as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan SQLite picks for a statement, one line per step.
    fn plan(conn: &Connection, sql: &str) -> String {
        let mut st = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("explain");
        let rows = st
            .query_map(params![0i64, 100i64], |r| r.get::<_, String>(3))
            .expect("plan rows");
        rows.map(|r| r.expect("a plan row"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_sweep_searches_each_environments_due_range() {
        let mut conn = Connection::open_in_memory().expect("a database");
        crate::schema::migrate(&mut conn).expect("migrations");
        let plan = plan(&conn, DUE_RESERVATIONS);
        assert!(
            plan.contains("SEARCH r USING INDEX reservations_due (env_id=? AND expires_at_ms<?)"),
            "the sweep must not scan every pending reservation; plan:\n{plan}"
        );
    }
}
