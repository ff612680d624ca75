//! [`MeteringTx`] on PostgreSQL: each method one statement in the current transaction.
//!
//! Correctness across nodes comes from the database: `lock_subjects` takes a transaction-scoped
//! advisory lock per subject, in ascending key order, before any counter is read. Every writer
//! of a subject's holds and counters takes the same locks first, so reads under them see a
//! settled state (READ COMMITTED takes a fresh snapshot per statement) and no two transactions
//! can wait on each other in a cycle.

use crate::pool::pg_error;
use jiff::Timestamp;
use postgres::types::ToSql;
use postgres::{Row, Statement, Transaction};
use std::collections::{BTreeMap, HashMap};
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

pub(crate) fn ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

pub(crate) fn ts(ms: i64) -> Timestamp {
    // Every stored time came from a valid Timestamp, so this clamp never bites in practice.
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

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

/// The advisory lock key of a subject in an environment.
fn lock_key(env: EnvId, subject: &str) -> i64 {
    // FNV-1a over the environment and subject: stable across nodes and releases. A collision
    // only makes two subjects share a lock, which is safe.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in env.0.to_le_bytes().iter().chain(subject.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// Adds one usage event to the daily rollup. Sums stop at 2^63 - 1 rather than fail the call
/// that records the usage.
const ROLLUP_ADD: &str = "INSERT INTO usage_daily AS d (env_id, day_ms, user_id, plan_id, events,
        quantity, cost_micros)
    VALUES ($1, $2, $3, $4, 1, $5, $6)
    ON CONFLICT (env_id, day_ms, user_id, plan_id) DO UPDATE SET
        events = d.events + 1,
        quantity = CASE WHEN d.quantity > 9223372036854775807 - EXCLUDED.quantity
            THEN 9223372036854775807 ELSE d.quantity + EXCLUDED.quantity END,
        cost_micros = CASE WHEN d.cost_micros > 9223372036854775807 - EXCLUDED.cost_micros
            THEN 9223372036854775807 ELSE d.cost_micros + EXCLUDED.cost_micros END";
/// Moves an anonymous id's rollup rows onto its user (identify), merging days both have.
const ROLLUP_MOVE: &str = "INSERT INTO usage_daily AS d (env_id, day_ms, user_id, plan_id, events,
        quantity, cost_micros)
    SELECT env_id, day_ms, $3, plan_id, events, quantity, cost_micros FROM usage_daily
     WHERE env_id = $1 AND user_id = $2
    ON CONFLICT (env_id, day_ms, user_id, plan_id) DO UPDATE SET
        events = d.events + EXCLUDED.events,
        quantity = CASE WHEN d.quantity > 9223372036854775807 - EXCLUDED.quantity
            THEN 9223372036854775807 ELSE d.quantity + EXCLUDED.quantity END,
        cost_micros = CASE WHEN d.cost_micros > 9223372036854775807 - EXCLUDED.cost_micros
            THEN 9223372036854775807 ELSE d.cost_micros + EXCLUDED.cost_micros END";

pub struct PgTx<'c, 's> {
    tx: Transaction<'c>,
    statements: &'s mut HashMap<&'static str, Statement>,
    /// The first database error, kept so the pool can tell a retryable one.
    failure: Option<postgres::Error>,
    /// Whether a statement other than a `SELECT` ran: a failed COMMIT of such a transaction
    /// may have applied something, one of a transaction that only read applied nothing.
    wrote: bool,
}

type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

impl<'c, 's> PgTx<'c, 's> {
    pub(crate) fn new(
        tx: Transaction<'c>,
        statements: &'s mut HashMap<&'static str, Statement>,
    ) -> Self {
        Self {
            tx,
            statements,
            failure: None,
            wrote: false,
        }
    }

    /// The transaction, its first database error, and whether it wrote.
    pub(crate) fn into_parts(self) -> (Transaction<'c>, Option<postgres::Error>, bool) {
        (self.tx, self.failure, self.wrote)
    }

    fn statement(&mut self, sql: &'static str) -> StoreResult<Statement> {
        // A `SELECT` here writes nothing (advisory locks are not data), so a statement
        // counts as a write unless it starts with one.
        let reads = sql
            .trim_start()
            .get(..6)
            .is_some_and(|w| w.eq_ignore_ascii_case("SELECT"));
        self.wrote |= !reads;
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        match self.tx.prepare(sql) {
            Ok(s) => {
                self.statements.insert(sql, s.clone());
                Ok(s)
            }
            Err(e) => Err(self.record(e)),
        }
    }

    fn record(&mut self, e: postgres::Error) -> StoreError {
        let mapped = pg_error(&e);
        if self.failure.is_none() {
            self.failure = Some(e);
        }
        mapped
    }

    pub(crate) fn query(&mut self, sql: &'static str, params: Params<'_>) -> StoreResult<Vec<Row>> {
        let st = self.statement(sql)?;
        self.tx.query(&st, params).map_err(|e| self.record(e))
    }

    /// A read assembled at run time (analytics): prepared each time, never cached, since
    /// its shape depends on the request. Its text comes from fixed fragments only.
    pub(crate) fn query_assembled(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> StoreResult<Vec<Row>> {
        self.tx.query(sql, params).map_err(|e| self.record(e))
    }

    pub(crate) fn query_opt(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> StoreResult<Option<Row>> {
        let st = self.statement(sql)?;
        self.tx.query_opt(&st, params).map_err(|e| self.record(e))
    }

    pub(crate) fn query_one(&mut self, sql: &'static str, params: Params<'_>) -> StoreResult<Row> {
        let st = self.statement(sql)?;
        self.tx.query_one(&st, params).map_err(|e| self.record(e))
    }

    pub(crate) fn execute(&mut self, sql: &'static str, params: Params<'_>) -> StoreResult<u64> {
        let st = self.statement(sql)?;
        self.tx.execute(&st, params).map_err(|e| self.record(e))
    }
}

fn metadata_json(m: &Metadata) -> serde_json::Value {
    serde_json::Value::Object(
        m.iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
            .collect(),
    )
}

fn parse_metadata(v: serde_json::Value) -> StoreResult<Metadata> {
    let shown = v.to_string();
    let map: BTreeMap<String, String> =
        serde_json::from_value(v).map_err(|_| corrupt("metadata", &shown))?;
    Metadata::parse(map).map_err(|_| corrupt("metadata", &shown))
}

fn reservation_row(r: &Row) -> StoreResult<ReservationRow> {
    let status: String = r.get("status");
    let prompt: Option<String> = r.get("prompt");
    Ok(ReservationRow {
        reservation_id: r.get("reservation_id"),
        user_id: r.get("user_id"),
        event: r.get("event"),
        quantity: r.get::<_, i64>("quantity") as u64,
        metadata: parse_metadata(r.get("metadata"))?,
        plan_id: r.get("plan_id"),
        status: ReservationStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        created_at: ts(r.get("created_at_ms")),
        expires_at: ts(r.get("expires_at_ms")),
        event_id: r.get("event_id"),
        final_quantity: r.get::<_, Option<i64>>("final_quantity").map(|q| q as u64),
        overage: r.get::<_, Option<i64>>("overage").map(|q| q as u64),
        prompt: prompt.map(|text| StoredText {
            text,
            truncated: r.get("prompt_truncated"),
        }),
        late: r.get("late"),
    })
}

/// The columns of a grant row, in the order [`grant_row`] reads them.
macro_rules! grant_columns {
    () => {
        "g.grant_id, g.subject, g.pack_id, g.item_id, g.unit, g.quantity, g.priority, g.rules,
         g.expires_at_ms, g.source, g.external_ref, g.note, g.created_at_ms"
    };
}

fn grant_row(r: &Row) -> StoreResult<GrantRow> {
    let rules: String = r.get(7);
    let source: String = r.get(9);
    Ok(GrantRow {
        grant_id: r.get(0),
        subject: r.get(1),
        pack_id: r.get(2),
        item_id: r.get(3),
        unit: r.get(4),
        quantity: r.get::<_, i64>(5) as u64,
        priority: r.get(6),
        rules: codec::parse_rules(&rules).ok_or_else(|| corrupt("grant rules", &rules))?,
        expires_at: r.get::<_, Option<i64>>(8).map(ts),
        source: GrantSource::parse(&source).ok_or_else(|| corrupt("grant source", &source))?,
        external_ref: r.get(10),
        note: r.get(11),
        created_at: ts(r.get(12)),
    })
}

macro_rules! ledger_columns {
    () => {
        "seq, entry_id, at_ms, kind, grant_id, subject, user_id, quantity, remaining_after,
         held_after, reservation_id, event_id, external_ref, reason"
    };
}

fn ledger_entry(r: &Row) -> StoreResult<LedgerEntry> {
    let kind: String = r.get(3);
    Ok(LedgerEntry {
        seq: r.get(0),
        entry_id: r.get(1),
        at: ts(r.get(2)),
        kind: LedgerKind::parse(&kind).ok_or_else(|| corrupt("ledger kind", &kind))?,
        grant_id: r.get(4),
        subject: r.get(5),
        user_id: r.get(6),
        quantity: r.get::<_, i64>(7) as u64,
        after: Balance {
            remaining: r.get::<_, i64>(8) as u64,
            held: r.get::<_, i64>(9) as u64,
        },
        reservation_id: r.get(10),
        event_id: r.get(11),
        external_ref: r.get(12),
        reason: r.get(13),
    })
}

fn integration_row(r: &Row) -> StoreResult<Integration> {
    let biller: String = r.get(1);
    Ok(Integration {
        env: EnvId(r.get(0)),
        biller: Biller::parse(&biller).ok_or_else(|| corrupt("biller", &biller))?,
        endpoint_id: r.get(2),
        config: r.get(3),
        updated_at: ts(r.get(4)),
    })
}

/// The columns of a received biller event, in the order [`biller_event_row`] reads them.
macro_rules! biller_event_columns {
    () => {
        "biller, event_id, event_type, received_at_ms, customer_id, status, note, body,
         deliveries"
    };
}

fn biller_event_row(r: &Row) -> StoreResult<StoredBillerEvent> {
    let biller: String = r.get(0);
    let status: String = r.get(5);
    Ok(StoredBillerEvent {
        biller: Biller::parse(&biller).ok_or_else(|| corrupt("biller", &biller))?,
        event_id: r.get(1),
        event_type: r.get(2),
        received_at: ts(r.get(3)),
        customer_id: r.get(4),
        status: BillerEventStatus::parse(&status)
            .ok_or_else(|| corrupt("biller event status", &status))?,
        note: r.get(6),
        body: r.get(7),
        deliveries: u32::try_from(r.get::<_, i64>(8)).unwrap_or(u32::MAX),
    })
}

/// The columns of a meter outbox row (of the table aliased `$t`, given with its dot), in the
/// order [`meter_row`] reads them.
macro_rules! meter_columns {
    ($t:literal) => {
        concat!(
            $t,
            "env_id, ",
            $t,
            "event_id, ",
            $t,
            "meter_event_name, ",
            $t,
            "user_id, ",
            $t,
            "value, ",
            $t,
            "occurred_at_ms, ",
            $t,
            "status, ",
            $t,
            "attempts, ",
            $t,
            "next_attempt_at_ms, ",
            $t,
            "last_status, ",
            $t,
            "last_error, ",
            $t,
            "created_at_ms"
        )
    };
}

fn meter_row(r: &Row) -> StoreResult<MeterEventRow> {
    let status: String = r.get(6);
    Ok(MeterEventRow {
        env: EnvId(r.get(0)),
        event_id: r.get(1),
        meter_event_name: r.get(2),
        user_id: r.get(3),
        value: r.get::<_, i64>(4) as u64,
        occurred_at: ts(r.get(5)),
        status: MeterStatus::parse(&status).ok_or_else(|| corrupt("meter status", &status))?,
        attempts: u32::try_from(r.get::<_, i64>(7)).unwrap_or(u32::MAX),
        next_attempt_at: ts(r.get(8)),
        last_status: r
            .get::<_, Option<i64>>(9)
            .and_then(|s| u16::try_from(s).ok()),
        last_error: r.get(10),
        created_at: ts(r.get(11)),
    })
}

/// The pending reservations due by their environment's clock, per environment in expiry order.
/// The ORDER BY is what steers PostgreSQL onto `reservations_due` (a range per environment):
/// without it the planner read every reservation once a second (the sweep runs this).
pub const DUE_RESERVATIONS: &str = "SELECT e.env_id, r.reservation_id, r.user_id
     FROM environments e
     CROSS JOIN LATERAL (
         SELECT reservation_id, user_id FROM reservations r
         WHERE r.env_id = e.env_id AND r.status = 'pending'
           AND r.expires_at_ms <= $1 + e.clock_offset_s * 1000
         ORDER BY r.expires_at_ms LIMIT $2) r
     LIMIT $2";

impl MeteringTx for PgTx<'_, '_> {
    fn lock_subjects(&mut self, env: EnvId, subjects: &[&str]) -> StoreResult<()> {
        let mut keys: Vec<i64> = subjects.iter().map(|s| lock_key(env, s)).collect();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            self.execute("SELECT pg_advisory_xact_lock($1)", &[&key])?;
        }
        Ok(())
    }

    fn subscription(&mut self, env: EnvId, subject: &str) -> StoreResult<Option<Subscription>> {
        let Some(r) = self.query_opt(
            "SELECT subscription_id, plan_id, status, cycle_start_ms, ends_at_ms, custom_limits,
                    created_at_ms, timezone, seats
             FROM subscriptions WHERE env_id = $1 AND subject = $2",
            &[&env.0, &subject],
        )?
        else {
            return Ok(None);
        };
        let status: String = r.get(2);
        let custom: serde_json::Value = r.get(5);
        let shown = custom.to_string();
        Ok(Some(Subscription {
            id: r.get(0),
            plan_id: r.get(1),
            status: SubscriptionStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
            cycle_start: ts(r.get(3)),
            ends_at: r.get::<_, Option<i64>>(4).map(ts),
            custom_limits: serde_json::from_value(custom)
                .map_err(|_| corrupt("custom limits", &shown))?,
            timezone: stored_zone(r.get::<_, Option<&str>>(7)),
            seats: stored_seats(r.get(8))?,
            created_at: ts(r.get(6)),
        }))
    }

    fn write_subscription(
        &mut self,
        env: EnvId,
        subject: &str,
        s: &Subscription,
    ) -> StoreResult<()> {
        let custom = serde_json::to_value(&s.custom_limits)
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        self.execute(
            "INSERT INTO subscriptions (env_id, subject, subscription_id, plan_id, status,
                 cycle_start_ms, ends_at_ms, custom_limits, created_at_ms, timezone, seats)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (env_id, subject) DO UPDATE SET
                 subscription_id = excluded.subscription_id, plan_id = excluded.plan_id,
                 status = excluded.status, cycle_start_ms = excluded.cycle_start_ms,
                 ends_at_ms = excluded.ends_at_ms, custom_limits = excluded.custom_limits,
                 created_at_ms = excluded.created_at_ms, timezone = excluded.timezone,
                 seats = excluded.seats",
            &[
                &env.0,
                &subject,
                &s.id,
                &s.plan_id,
                &s.status.as_str(),
                &ms(s.cycle_start),
                &s.ends_at.map(ms),
                &custom,
                &ms(s.created_at),
                &zone_name(s.timezone.as_ref()),
                &s.seats.map(i64::from),
            ],
        )
        .map(|_| ())
    }

    fn append_history(&mut self, env: EnvId, subject: &str, h: &HistoryEntry) -> StoreResult<()> {
        self.execute(
            "INSERT INTO subscription_history (env_id, subject, kind, at_ms, from_plan_id,
                 to_plan_id, source, reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &env.0,
                &subject,
                &h.kind.as_str(),
                &ms(h.at),
                &h.from_plan_id,
                &h.to_plan_id,
                &h.source,
                &h.reason,
            ],
        )
        .map(|_| ())
    }

    fn latest_window(
        &mut self,
        env: EnvId,
        limit_id: &str,
        subject: &str,
    ) -> StoreResult<Option<i64>> {
        let r = self.query_one(
            "SELECT MAX(window_key) FROM counters
             WHERE env_id = $1 AND subject = $2 AND limit_id = $3",
            &[&env.0, &subject, &limit_id],
        )?;
        Ok(r.get(0))
    }

    fn reserved(&mut self, env: EnvId, key: &CounterKey, now: Timestamp) -> StoreResult<u64> {
        let r = self.query_one(
            "SELECT COALESCE(SUM(held), 0)::BIGINT FROM reservation_limits
             WHERE env_id = $1 AND limit_id = $2 AND subject = $3 AND window_key = $4
               AND held > 0 AND expires_at_ms > $5",
            &[
                &env.0,
                &key.limit_id,
                &key.subject,
                &key.window_key,
                &ms(now),
            ],
        )?;
        Ok(r.get::<_, i64>(0).max(0) as u64)
    }

    fn used(&mut self, env: EnvId, key: &CounterKey) -> StoreResult<u64> {
        let r = self.query_opt(
            "SELECT used FROM counters
             WHERE env_id = $1 AND subject = $2 AND limit_id = $3 AND window_key = $4",
            &[&env.0, &key.subject, &key.limit_id, &key.window_key],
        )?;
        Ok(r.map_or(0, |r| r.get::<_, i64>(0).max(0) as u64))
    }

    fn rolling_used(
        &mut self,
        env: EnvId,
        limit_id: &str,
        subject: &str,
        after: Timestamp,
        until: Timestamp,
    ) -> StoreResult<(u64, Option<Timestamp>)> {
        let r = self.query_one(
            "SELECT COALESCE(SUM(units), 0)::BIGINT, MIN(at_ms) FROM rolling_usage
             WHERE env_id = $1 AND subject = $2 AND limit_id = $3
               AND at_ms > $4 AND at_ms <= $5",
            &[&env.0, &subject, &limit_id, &ms(after), &ms(until)],
        )?;
        Ok((
            r.get::<_, i64>(0).max(0) as u64,
            r.get::<_, Option<i64>>(1).map(ts),
        ))
    }

    fn open_counter(
        &mut self,
        env: EnvId,
        key: &CounterKey,
        end: Option<Timestamp>,
    ) -> StoreResult<()> {
        self.execute(
            "INSERT INTO counters (env_id, limit_id, subject, window_key, window_end_ms, used)
             VALUES ($1, $2, $3, $4, $5, 0) ON CONFLICT DO NOTHING",
            &[
                &env.0,
                &key.limit_id,
                &key.subject,
                &key.window_key,
                &end.map(ms),
            ],
        )
        .map(|_| ())
    }

    fn add_used(
        &mut self,
        env: EnvId,
        key: &CounterKey,
        end: Option<Timestamp>,
        units: u64,
    ) -> StoreResult<()> {
        self.execute(
            "INSERT INTO counters (env_id, limit_id, subject, window_key, window_end_ms, used)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (env_id, subject, limit_id, window_key)
             DO UPDATE SET used = counters.used + excluded.used",
            &[
                &env.0,
                &key.limit_id,
                &key.subject,
                &key.window_key,
                &end.map(ms),
                &(units as i64),
            ],
        )
        .map(|_| ())
    }

    fn add_rolling(
        &mut self,
        env: EnvId,
        limit_id: &str,
        subject: &str,
        at: Timestamp,
        units: u64,
    ) -> StoreResult<()> {
        self.execute(
            "INSERT INTO rolling_usage (env_id, limit_id, subject, at_ms, units)
             VALUES ($1, $2, $3, $4, $5)",
            &[&env.0, &limit_id, &subject, &ms(at), &(units as i64)],
        )
        .map(|_| ())
    }

    fn insert_reservation(&mut self, env: EnvId, r: &ReservationRow) -> StoreResult<()> {
        self.execute(
            "INSERT INTO reservations (env_id, reservation_id, subject, user_id, event, quantity,
                 metadata, plan_id, status, created_at_ms, expires_at_ms, event_id, prompt,
                 prompt_truncated)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            &[
                &env.0,
                &r.reservation_id,
                &user_subject(&r.user_id),
                &r.user_id,
                &r.event,
                &(r.quantity as i64),
                &metadata_json(&r.metadata),
                &r.plan_id,
                &r.status.as_str(),
                &ms(r.created_at),
                &ms(r.expires_at),
                &r.event_id,
                &r.prompt.as_ref().map(|p| p.text.as_str()),
                &r.prompt.as_ref().is_some_and(|p| p.truncated),
            ],
        )
        .map(|_| ())
    }

    fn insert_hold(
        &mut self,
        env: EnvId,
        reservation_id: &str,
        h: &HoldRow,
        expires_at: Timestamp,
    ) -> StoreResult<()> {
        self.execute(
            "INSERT INTO reservation_limits (env_id, reservation_id, seq, limit_id, subject,
                 window_key, window_start_ms, window_end_ms, window_type, window_seconds, kind,
                 enforcement, scope, multiplier, quota, units, held, expires_at_ms)
             VALUES ($1, $2,
                 (SELECT COUNT(*) FROM reservation_limits WHERE env_id = $1
                  AND reservation_id = $2)::INT,
                 $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15, $16)",
            &[
                &env.0,
                &reservation_id,
                &h.key.limit_id,
                &h.key.subject,
                &h.key.window_key,
                &h.window_start.map(ms),
                &h.window_end.map(ms),
                &h.window_kind.as_str(),
                &i64::from(h.window_seconds),
                &h.kind.as_str(),
                &h.enforcement.as_str(),
                &h.scope.as_str(),
                &(h.multiplier as i64),
                &(h.quota as i64),
                &(h.held as i64),
                &ms(expires_at),
            ],
        )
        .map(|_| ())
    }

    fn reservation(&mut self, env: EnvId, id: &str) -> StoreResult<Option<ReservationRow>> {
        self.query_opt(
            "SELECT reservation_id, user_id, event, quantity, metadata, plan_id, status,
                    created_at_ms, expires_at_ms, event_id, final_quantity, overage, prompt,
                    prompt_truncated, late
             FROM reservations WHERE env_id = $1 AND reservation_id = $2",
            &[&env.0, &id],
        )?
        .map(|r| reservation_row(&r))
        .transpose()
    }

    fn holds(&mut self, env: EnvId, reservation_id: &str) -> StoreResult<Vec<HoldRow>> {
        let rows = self.query(
            "SELECT limit_id, subject, window_key, window_start_ms, window_end_ms, window_type,
                    window_seconds, kind, enforcement, scope, multiplier, quota, held
             FROM reservation_limits WHERE env_id = $1 AND reservation_id = $2
             ORDER BY seq",
            &[&env.0, &reservation_id],
        )?;
        rows.iter()
            .map(|r| {
                let wtype: String = r.get(5);
                let kind: String = r.get(7);
                let enforcement: String = r.get(8);
                let scope: String = r.get(9);
                Ok(HoldRow {
                    key: CounterKey {
                        limit_id: r.get(0),
                        subject: r.get(1),
                        window_key: r.get(2),
                    },
                    window_start: r.get::<_, Option<i64>>(3).map(ts),
                    window_end: r.get::<_, Option<i64>>(4).map(ts),
                    window_kind: WindowKind::parse(&wtype)
                        .ok_or_else(|| corrupt("window", &wtype))?,
                    window_seconds: u32::try_from(r.get::<_, i64>(6))
                        .map_err(|_| corrupt("window seconds", "out of range"))?,
                    kind: LimitKind::parse(&kind).ok_or_else(|| corrupt("kind", &kind))?,
                    enforcement: Enforcement::parse(&enforcement)
                        .ok_or_else(|| corrupt("enforcement", &enforcement))?,
                    scope: Scope::parse(&scope).ok_or_else(|| corrupt("scope", &scope))?,
                    multiplier: r.get::<_, i64>(10) as u64,
                    quota: r.get::<_, i64>(11) as u64,
                    held: r.get::<_, i64>(12) as u64,
                })
            })
            .collect()
    }

    fn finish_reservation(
        &mut self,
        env: EnvId,
        id: &str,
        status: ReservationStatus,
        final_quantity: Option<u64>,
        overage: Option<u64>,
    ) -> StoreResult<()> {
        self.execute(
            "UPDATE reservation_limits SET held = 0 WHERE env_id = $1 AND reservation_id = $2",
            &[&env.0, &id],
        )?;
        self.execute(
            "UPDATE reservations SET status = $3, final_quantity = $4, overage = $5
             WHERE env_id = $1 AND reservation_id = $2",
            &[
                &env.0,
                &id,
                &status.as_str(),
                &final_quantity.map(|q| q as i64),
                &overage.map(|q| q as i64),
            ],
        )
        .map(|_| ())
    }

    fn commit_late(
        &mut self,
        env: EnvId,
        id: &str,
        event_id: &str,
        final_quantity: u64,
        overage: u64,
    ) -> StoreResult<()> {
        self.execute(
            "UPDATE reservations SET status = 'committed', late = true, event_id = $3,
                 final_quantity = $4, overage = $5
             WHERE env_id = $1 AND reservation_id = $2",
            &[
                &env.0,
                &id,
                &event_id,
                &(final_quantity as i64),
                &(overage as i64),
            ],
        )
        .map(drop)
    }

    fn move_holds(
        &mut self,
        env: EnvId,
        from: &CounterKey,
        to: &CounterKey,
        (start, end): (Option<Timestamp>, Option<Timestamp>),
    ) -> StoreResult<()> {
        self.execute(
            "UPDATE reservation_limits
             SET window_key = $5, window_start_ms = $6, window_end_ms = $7
             WHERE env_id = $1 AND limit_id = $2 AND subject = $3 AND window_key = $4
               AND held > 0",
            &[
                &env.0,
                &from.limit_id,
                &from.subject,
                &from.window_key,
                &to.window_key,
                &start.map(ms),
                &end.map(ms),
            ],
        )
        .map(drop)
    }

    fn set_expiry(&mut self, env: EnvId, id: &str, expires_at: Timestamp) -> StoreResult<()> {
        self.execute(
            "UPDATE reservations SET expires_at_ms = $3 WHERE env_id = $1 AND reservation_id = $2",
            &[&env.0, &id, &ms(expires_at)],
        )?;
        self.execute(
            "UPDATE reservation_limits SET expires_at_ms = $3
             WHERE env_id = $1 AND reservation_id = $2",
            &[&env.0, &id, &ms(expires_at)],
        )
        .map(|_| ())
    }

    fn insert_event(&mut self, env: EnvId, e: &EventRow<'_>) -> StoreResult<()> {
        let reasons = serde_json::Value::Array(
            e.reasons
                .iter()
                .map(|r| serde_json::Value::String(r.as_str().into()))
                .collect(),
        );
        let truncated =
            e.prompt.is_some_and(|p| p.truncated) || e.response.is_some_and(|p| p.truncated);
        if tollgate_store::analytics::counted(e.status) {
            self.execute(
                ROLLUP_ADD,
                &[
                    &env.0,
                    &tollgate_store::analytics::day_of(ms(e.occurred_at)),
                    &e.user_id,
                    &e.plan_id.unwrap_or(""),
                    &(e.quantity as i64),
                    &(e.cost_micros.unwrap_or(0) as i64),
                ],
            )?;
        }
        self.execute(
            "INSERT INTO events (env_id, event_id, occurred_at_ms, user_id, event, quantity,
                 metadata, cost_micros, status, plan_id, reservation_id, reasons, overage,
                 prompt, response, truncated, release_reason, release_error_code, credits_used)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                 $18, $19)",
            &[
                &env.0,
                &e.event_id,
                &ms(e.occurred_at),
                &e.user_id,
                &e.event,
                &(e.quantity as i64),
                &metadata_json(e.metadata),
                &e.cost_micros.map(|c| c as i64),
                &e.status,
                &e.plan_id,
                &e.reservation_id,
                &reasons,
                &(e.overage as i64),
                &e.prompt.map(|p| p.text.as_str()),
                &e.response.map(|p| p.text.as_str()),
                &truncated,
                &e.release_reason,
                &e.release_error_code,
                &(e.credits_used as i64),
            ],
        )
        .map(|_| ())
    }

    fn idempotency(
        &mut self,
        env: EnvId,
        scope: &str,
        key: &str,
    ) -> StoreResult<Option<IdempotencyRow>> {
        Ok(self
            .query_opt(
                "SELECT fingerprint, response, created_at_ms FROM idempotency
                 WHERE env_id = $1 AND scope = $2 AND key = $3",
                &[&env.0, &scope, &key],
            )?
            .map(|r| IdempotencyRow {
                fingerprint: r.get(0),
                response: r.get(1),
                created_at: ts(r.get(2)),
            }))
    }

    fn store_idempotency(
        &mut self,
        env: EnvId,
        scope: &str,
        key: &str,
        row: &IdempotencyRow,
    ) -> StoreResult<()> {
        self.execute(
            "INSERT INTO idempotency (env_id, scope, key, fingerprint, response, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (env_id, scope, key) DO UPDATE SET fingerprint = excluded.fingerprint,
                 response = excluded.response, created_at_ms = excluded.created_at_ms",
            &[
                &env.0,
                &scope,
                &key,
                &row.fingerprint,
                &row.response,
                &ms(row.created_at),
            ],
        )
        .map(|_| ())
    }

    fn membership(
        &mut self,
        env: EnvId,
        user_id: &str,
    ) -> StoreResult<Option<(String, Timestamp)>> {
        Ok(self
            .query_opt(
                "SELECT account_id, added_at_ms FROM account_members
                 WHERE env_id = $1 AND user_id = $2",
                &[&env.0, &user_id],
            )?
            .map(|r| (r.get(0), ts(r.get(1)))))
    }

    fn members(&mut self, env: EnvId, account_id: &str) -> StoreResult<Vec<Member>> {
        Ok(self
            .query(
                "SELECT user_id, added_at_ms FROM account_members
                 WHERE env_id = $1 AND account_id = $2 ORDER BY user_id",
                &[&env.0, &account_id],
            )?
            .into_iter()
            .map(|r| Member {
                user_id: r.get(0),
                added_at: ts(r.get(1)),
            })
            .collect())
    }

    fn put_member(
        &mut self,
        env: EnvId,
        account_id: &str,
        user_id: &str,
        at: Timestamp,
    ) -> StoreResult<()> {
        self.execute(
            "INSERT INTO account_members (env_id, user_id, account_id, added_at_ms)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (env_id, user_id) DO UPDATE SET
                 account_id = excluded.account_id, added_at_ms = excluded.added_at_ms",
            &[&env.0, &user_id, &account_id, &ms(at)],
        )
        .map(drop)
    }

    fn delete_member(&mut self, env: EnvId, account_id: &str, user_id: &str) -> StoreResult<bool> {
        self.execute(
            "DELETE FROM account_members WHERE env_id = $1 AND user_id = $2 AND account_id = $3",
            &[&env.0, &user_id, &account_id],
        )
        .map(|n| n > 0)
    }

    fn alias(&mut self, env: EnvId, anonymous_id: &str) -> StoreResult<Option<String>> {
        Ok(self
            .query_opt(
                "SELECT user_id FROM aliases WHERE env_id = $1 AND anonymous_id = $2",
                &[&env.0, &anonymous_id],
            )?
            .map(|r| r.get(0)))
    }

    fn insert_alias(
        &mut self,
        env: EnvId,
        anonymous_id: &str,
        user_id: &str,
        at: Timestamp,
    ) -> StoreResult<()> {
        self.execute(
            "UPDATE aliases SET user_id = $3 WHERE env_id = $1 AND user_id = $2",
            &[&env.0, &anonymous_id, &user_id],
        )?;
        self.execute(
            "INSERT INTO aliases (env_id, anonymous_id, user_id, created_at_ms)
             VALUES ($1, $2, $3, $4)",
            &[&env.0, &anonymous_id, &user_id, &ms(at)],
        )
        .map(|_| ())
    }

    fn merge_limit(&mut self, env: EnvId, limit_id: &str, from: &str, to: &str) -> StoreResult<()> {
        let params: Params<'_> = &[&env.0, &limit_id, &from, &to];
        self.execute(
            "INSERT INTO counters (env_id, limit_id, subject, window_key, window_end_ms, used)
             SELECT env_id, limit_id, $4, window_key, window_end_ms, used FROM counters
             WHERE env_id = $1 AND limit_id = $2 AND subject = $3
             ON CONFLICT (env_id, subject, limit_id, window_key)
             DO UPDATE SET used = counters.used + excluded.used",
            params,
        )?;
        self.execute(
            "DELETE FROM counters WHERE env_id = $1 AND limit_id = $2 AND subject = $3",
            &params[..3],
        )?;
        self.execute(
            "UPDATE rolling_usage SET subject = $4
             WHERE env_id = $1 AND limit_id = $2 AND subject = $3",
            params,
        )?;
        self.execute(
            "UPDATE reservation_limits SET subject = $4
             WHERE env_id = $1 AND limit_id = $2 AND subject = $3 AND held > 0",
            params,
        )
        .map(|_| ())
    }

    fn merged_peak(
        &mut self,
        env: EnvId,
        limit_id: &str,
        (from, to): (&str, &str),
        now: Timestamp,
    ) -> StoreResult<u64> {
        let row = self.query_one(
            "SELECT COALESCE(MAX(total), 0)::BIGINT FROM (
                 SELECT SUM(n) AS total FROM (
                     SELECT window_key, used AS n FROM counters
                     WHERE env_id = $1 AND limit_id = $2 AND subject IN ($3, $4)
                     UNION ALL
                     SELECT window_key, held FROM reservation_limits
                     WHERE env_id = $1 AND limit_id = $2 AND subject IN ($3, $4)
                       AND held > 0 AND expires_at_ms > $5
                 ) AS usage GROUP BY window_key
             ) AS windows",
            &[&env.0, &limit_id, &from, &to, &ms(now)],
        )?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }

    fn reattribute(&mut self, env: EnvId, from: &str, to: &str) -> StoreResult<u64> {
        self.execute(ROLLUP_MOVE, &[&env.0, &from, &to])?;
        self.execute(
            "DELETE FROM usage_daily WHERE env_id = $1 AND user_id = $2",
            &[&env.0, &from],
        )?;
        let moved = self.execute(
            "UPDATE events SET user_id = $3, anonymous_id = $2
             WHERE env_id = $1 AND user_id = $2",
            &[&env.0, &from, &to],
        )?;
        self.execute(
            "UPDATE reservations SET user_id = $3
             WHERE env_id = $1 AND user_id = $2 AND status = 'pending'",
            &[&env.0, &from, &to],
        )?;
        Ok(moved)
    }

    fn purge_idempotency(&mut self, before: Timestamp) -> StoreResult<()> {
        self.execute(
            "DELETE FROM idempotency WHERE created_at_ms < $1",
            &[&ms(before)],
        )
        .map(|_| ())
    }

    fn due_reservations(
        &mut self,
        real_now: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<(EnvId, String, String)>> {
        let rows = self.query(DUE_RESERVATIONS, &[&ms(real_now), &(limit as i64)])?;
        Ok(rows
            .iter()
            .map(|r| (EnvId(r.get(0)), r.get(1), r.get(2)))
            .collect())
    }

    fn insert_grant(&mut self, env: EnvId, g: &GrantRow) -> StoreResult<()> {
        self.execute(
            "INSERT INTO credit_grants (env_id, grant_id, subject, pack_id, item_id, unit,
                 quantity, priority, rules, expires_at_ms, source, external_ref, note,
                 created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            &[
                &env.0,
                &g.grant_id,
                &g.subject,
                &g.pack_id,
                &g.item_id,
                &g.unit,
                &(g.quantity as i64),
                &g.priority,
                &codec::rules_json(&g.rules),
                &g.expires_at.map(ms),
                &g.source.as_str(),
                &g.external_ref,
                &g.note,
                &ms(g.created_at),
            ],
        )
        .map(|_| ())
    }

    fn grant(&mut self, env: EnvId, grant_id: &str) -> StoreResult<Option<GrantRow>> {
        let row = self.query_opt(
            concat!(
                "SELECT ",
                grant_columns!(),
                " FROM credit_grants g WHERE env_id = $1 AND grant_id = $2"
            ),
            &[&env.0, &grant_id],
        )?;
        row.as_ref().map(grant_row).transpose()
    }

    fn grants_by_ref(&mut self, env: EnvId, external_ref: &str) -> StoreResult<Vec<GrantRow>> {
        let rows = self.query(
            concat!(
                "SELECT ",
                grant_columns!(),
                " FROM credit_grants g WHERE env_id = $1 AND external_ref = $2
                 ORDER BY created_at_ms, grant_id"
            ),
            &[&env.0, &external_ref],
        )?;
        rows.iter().map(grant_row).collect()
    }

    fn live_grants(&mut self, env: EnvId, subjects: &[&str]) -> StoreResult<Vec<Grant>> {
        let subjects: Vec<&str> = subjects.to_vec();
        let rows = self.query(
            concat!(
                "SELECT ",
                grant_columns!(),
                ", l.remaining_after, l.held_after FROM credit_grants g
                 CROSS JOIN LATERAL (SELECT remaining_after, held_after FROM credit_ledger m
                     WHERE m.env_id = g.env_id AND m.grant_id = g.grant_id
                     ORDER BY seq DESC LIMIT 1) l
                 WHERE g.env_id = $1 AND g.subject = ANY($2) AND l.remaining_after > 0"
            ),
            &[&env.0, &subjects],
        )?;
        rows.iter()
            .map(|r| {
                Ok(Grant {
                    row: grant_row(r)?,
                    balance: Balance {
                        remaining: r.get::<_, i64>(13) as u64,
                        held: r.get::<_, i64>(14) as u64,
                    },
                })
            })
            .collect()
    }

    fn balance(&mut self, env: EnvId, grant_id: &str) -> StoreResult<Balance> {
        let row = self.query_opt(
            "SELECT remaining_after, held_after FROM credit_ledger
             WHERE env_id = $1 AND grant_id = $2 ORDER BY seq DESC LIMIT 1",
            &[&env.0, &grant_id],
        )?;
        Ok(row.map_or_else(Balance::default, |r| Balance {
            remaining: r.get::<_, i64>(0) as u64,
            held: r.get::<_, i64>(1) as u64,
        }))
    }

    fn append_ledger(&mut self, env: EnvId, e: &LedgerEntry) -> StoreResult<()> {
        self.execute(
            "INSERT INTO credit_ledger (env_id, entry_id, at_ms, kind, grant_id, subject,
                 user_id, quantity, remaining_after, held_after, reservation_id, event_id,
                 external_ref, reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            &[
                &env.0,
                &e.entry_id,
                &ms(e.at),
                &e.kind.as_str(),
                &e.grant_id,
                &e.subject,
                &e.user_id,
                &(e.quantity as i64),
                &(e.after.remaining as i64),
                &(e.after.held as i64),
                &e.reservation_id,
                &e.event_id,
                &e.external_ref,
                &e.reason,
            ],
        )
        .map(|_| ())
    }

    fn insert_credit_hold(
        &mut self,
        env: EnvId,
        (reservation_id, user_id): (&str, &str),
        h: &CreditHold,
    ) -> StoreResult<()> {
        self.execute(
            "INSERT INTO credit_holds (env_id, reservation_id, grant_id, subject, user_id, held,
                 active)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &env.0,
                &reservation_id,
                &h.grant_id,
                &h.subject,
                &user_id,
                &(h.units as i64),
                &h.active,
            ],
        )
        .map(|_| ())
    }

    fn credit_holds(&mut self, env: EnvId, reservation_id: &str) -> StoreResult<Vec<CreditHold>> {
        // Drawn in spend order, which the grant ids of one reservation do not keep: the
        // holds' own insertion order does (ctid is not stable), so the procedure's order is
        // kept by the hold's place in the ledger.
        let rows = self.query(
            "SELECT h.grant_id, h.subject, h.held, h.active FROM credit_holds h
             LEFT JOIN credit_ledger l ON l.env_id = h.env_id AND l.reservation_id = h.reservation_id
                 AND l.grant_id = h.grant_id AND l.kind = 'hold'
             WHERE h.env_id = $1 AND h.reservation_id = $2
             ORDER BY l.seq",
            &[&env.0, &reservation_id],
        )?;
        Ok(rows
            .iter()
            .map(|r| CreditHold {
                grant_id: r.get(0),
                subject: r.get(1),
                units: r.get::<_, i64>(2) as u64,
                active: r.get(3),
            })
            .collect())
    }

    fn end_credit_holds(&mut self, env: EnvId, reservation_id: &str) -> StoreResult<()> {
        self.execute(
            "UPDATE credit_holds SET active = false WHERE env_id = $1 AND reservation_id = $2",
            &[&env.0, &reservation_id],
        )
        .map(|_| ())
    }

    fn overdue_held(&mut self, env: EnvId, grant_id: &str, now: Timestamp) -> StoreResult<u64> {
        let row = self.query_one(
            "SELECT COALESCE(SUM(h.held), 0)::BIGINT FROM credit_holds h
             JOIN reservations r ON r.env_id = h.env_id AND r.reservation_id = h.reservation_id
             WHERE h.env_id = $1 AND h.grant_id = $2 AND h.active
               AND r.status = 'pending' AND r.expires_at_ms <= $3",
            &[&env.0, &grant_id, &ms(now)],
        )?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    fn overdue_credit_reservations(
        &mut self,
        env: EnvId,
        user_id: &str,
        now: Timestamp,
    ) -> StoreResult<Vec<String>> {
        let rows = self.query(
            "SELECT h.reservation_id FROM credit_holds h
             JOIN reservations r ON r.env_id = h.env_id AND r.reservation_id = h.reservation_id
             WHERE h.env_id = $1 AND h.user_id = $2 AND h.active
               AND r.status = 'pending' AND r.expires_at_ms <= $3",
            &[&env.0, &user_id, &ms(now)],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn credits_used_by(&mut self, env: EnvId, reservation_id: &str) -> StoreResult<u64> {
        let row = self.query_one(
            "SELECT COALESCE(SUM(CASE kind WHEN 'burn' THEN quantity
                 WHEN 'refund' THEN -quantity ELSE 0 END), 0)::BIGINT
             FROM credit_ledger WHERE env_id = $1 AND reservation_id = $2",
            &[&env.0, &reservation_id],
        )?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }

    fn revoke_mark(&mut self, env: EnvId, grant_id: &str, at: Timestamp) -> StoreResult<()> {
        self.execute(
            "INSERT INTO credit_revocations (env_id, grant_id, at_ms) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[&env.0, &grant_id, &ms(at)],
        )
        .map(|_| ())
    }

    fn is_revoked(&mut self, env: EnvId, grant_id: &str) -> StoreResult<bool> {
        Ok(self
            .query_opt(
                "SELECT 1 FROM credit_revocations WHERE env_id = $1 AND grant_id = $2",
                &[&env.0, &grant_id],
            )?
            .is_some())
    }

    fn ledger_page(
        &mut self,
        env: EnvId,
        (subject, user): (&str, Option<&str>),
        limit: usize,
        before: Option<i64>,
    ) -> StoreResult<Vec<LedgerEntry>> {
        let rows = self.query(
            concat!(
                "SELECT ",
                ledger_columns!(),
                " FROM credit_ledger WHERE env_id = $1 AND subject = $2 AND seq < $4
                 UNION
                 SELECT ",
                ledger_columns!(),
                " FROM credit_ledger WHERE env_id = $1 AND user_id = $3 AND seq < $4
                 ORDER BY seq DESC LIMIT $5"
            ),
            &[
                &env.0,
                &subject,
                &user,
                &before.unwrap_or(i64::MAX),
                &(limit as i64),
            ],
        )?;
        rows.iter().map(ledger_entry).collect()
    }

    fn queue_expiry(&mut self, env: EnvId, g: &GrantRow, expires_at: Timestamp) -> StoreResult<()> {
        self.execute(
            "INSERT INTO credit_expiry_queue (env_id, grant_id, subject, expires_at_ms)
             VALUES ($1, $2, $3, $4)",
            &[&env.0, &g.grant_id, &g.subject, &ms(expires_at)],
        )
        .map(|_| ())
    }

    fn expired_grants(
        &mut self,
        real_now: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<(EnvId, String, String)>> {
        // The bound with the largest clock offset keeps the scan to the queue's due end.
        let rows = self.query(
            "SELECT q.env_id, q.grant_id, q.subject FROM credit_expiry_queue q
             JOIN environments e ON e.env_id = q.env_id
             WHERE q.expires_at_ms <= $1 + (SELECT max(clock_offset_s) FROM environments) * 1000
               AND q.expires_at_ms <= $1 + e.clock_offset_s * 1000
             LIMIT $2",
            &[&ms(real_now), &(limit as i64)],
        )?;
        Ok(rows
            .iter()
            .map(|r| (EnvId(r.get(0)), r.get(1), r.get(2)))
            .collect())
    }

    fn dequeue_expiry(&mut self, env: EnvId, grant_id: &str) -> StoreResult<()> {
        self.execute(
            "DELETE FROM credit_expiry_queue WHERE env_id = $1 AND grant_id = $2",
            &[&env.0, &grant_id],
        )
        .map(|_| ())
    }

    fn rolled_over(&mut self, env: EnvId, key: &CounterKey) -> StoreResult<bool> {
        Ok(self
            .query_opt(
                "SELECT 1 FROM rollovers
                 WHERE env_id = $1 AND limit_id = $2 AND subject = $3 AND window_key = $4",
                &[&env.0, &key.limit_id, &key.subject, &key.window_key],
            )?
            .is_some())
    }

    fn mark_rollover(
        &mut self,
        env: EnvId,
        key: &CounterKey,
        grant_id: Option<&str>,
    ) -> StoreResult<()> {
        self.execute(
            "INSERT INTO rollovers (env_id, limit_id, subject, window_key, grant_id)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &env.0,
                &key.limit_id,
                &key.subject,
                &key.window_key,
                &grant_id,
            ],
        )
        .map(|_| ())
    }

    // ---- billers
    fn put_integration(&mut self, i: &Integration) -> StoreResult<Integration> {
        let row = self.query_one(
            "INSERT INTO biller_integrations (env_id, biller, endpoint_id, config, updated_at_ms)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (env_id, biller) DO UPDATE SET
                 config = excluded.config, updated_at_ms = excluded.updated_at_ms
             RETURNING env_id, biller, endpoint_id, config, updated_at_ms",
            &[
                &i.env.0,
                &i.biller.as_str(),
                &i.endpoint_id,
                &i.config,
                &ms(i.updated_at),
            ],
        )?;
        integration_row(&row)
    }

    fn integration(&mut self, env: EnvId, biller: Biller) -> StoreResult<Option<Integration>> {
        let row = self.query_opt(
            "SELECT env_id, biller, endpoint_id, config, updated_at_ms
             FROM biller_integrations WHERE env_id = $1 AND biller = $2",
            &[&env.0, &biller.as_str()],
        )?;
        row.as_ref().map(integration_row).transpose()
    }

    fn endpoint(
        &mut self,
        biller: Biller,
        endpoint_id: &str,
    ) -> StoreResult<Option<EndpointTarget>> {
        let row = self.query_opt(
            "SELECT i.env_id, i.biller, i.endpoint_id, i.config, i.updated_at_ms,
                 e.clock_offset_s
             FROM biller_integrations i JOIN environments e ON e.env_id = i.env_id
             WHERE i.endpoint_id = $1 AND i.biller = $2",
            &[&endpoint_id, &biller.as_str()],
        )?;
        row.map(|r| {
            Ok(EndpointTarget {
                clock_offset_seconds: r.get(5),
                integration: integration_row(&r)?,
            })
        })
        .transpose()
    }

    fn set_meter_names(&mut self, env: EnvId, names: &[(String, String)]) -> StoreResult<()> {
        self.execute("DELETE FROM meter_names WHERE env_id = $1", &[&env.0])?;
        // A name given twice keeps its last meter rather than failing the whole write.
        for (event, meter) in names {
            self.execute(
                "INSERT INTO meter_names (env_id, event, meter_event_name) VALUES ($1, $2, $3)
                 ON CONFLICT (env_id, event) DO UPDATE SET
                     meter_event_name = excluded.meter_event_name",
                &[&env.0, event, meter],
            )?;
        }
        Ok(())
    }

    fn meter_name(&mut self, env: EnvId, event: &str) -> StoreResult<Option<String>> {
        Ok(self
            .query_opt(
                "SELECT meter_event_name FROM meter_names WHERE env_id = $1 AND event = $2",
                &[&env.0, &event],
            )?
            .map(|r| r.get(0)))
    }

    fn biller_customer(
        &mut self,
        env: EnvId,
        biller: Biller,
        customer_id: &str,
    ) -> StoreResult<Option<String>> {
        Ok(self
            .query_opt(
                "SELECT subject FROM biller_customers
                 WHERE env_id = $1 AND biller = $2 AND customer_id = $3",
                &[&env.0, &biller.as_str(), &customer_id],
            )?
            .map(|r| r.get(0)))
    }

    fn put_biller_customer(
        &mut self,
        env: EnvId,
        biller: Biller,
        customer_id: &str,
        subject: &str,
        at: Timestamp,
    ) -> StoreResult<()> {
        self.execute(
            "INSERT INTO biller_customers (env_id, biller, customer_id, subject, mapped_at_ms)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (env_id, biller, customer_id) DO UPDATE SET
                 subject = excluded.subject, mapped_at_ms = excluded.mapped_at_ms",
            &[&env.0, &biller.as_str(), &customer_id, &subject, &ms(at)],
        )
        .map(|_| ())
    }

    fn biller_customer_of(
        &mut self,
        env: EnvId,
        biller: Biller,
        subject: &str,
    ) -> StoreResult<Option<String>> {
        Ok(self
            .query_opt(
                "SELECT customer_id FROM biller_customers
                 WHERE env_id = $1 AND biller = $2 AND subject = $3
                 ORDER BY mapped_at_ms DESC, customer_id DESC LIMIT 1",
                &[&env.0, &biller.as_str(), &subject],
            )?
            .map(|r| r.get(0)))
    }

    fn biller_event(
        &mut self,
        env: EnvId,
        biller: Biller,
        event_id: &str,
    ) -> StoreResult<Option<StoredBillerEvent>> {
        let row = self.query_opt(
            concat!(
                "SELECT ",
                biller_event_columns!(),
                " FROM biller_events WHERE env_id = $1 AND biller = $2 AND event_id = $3"
            ),
            &[&env.0, &biller.as_str(), &event_id],
        )?;
        row.as_ref().map(biller_event_row).transpose()
    }

    fn put_biller_event(&mut self, env: EnvId, e: &StoredBillerEvent) -> StoreResult<()> {
        self.execute(
            "INSERT INTO biller_events (env_id, biller, event_id, event_type, received_at_ms,
                 customer_id, status, note, body, deliveries)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (env_id, biller, event_id) DO UPDATE SET
                 event_type = excluded.event_type, received_at_ms = excluded.received_at_ms,
                 customer_id = excluded.customer_id, status = excluded.status,
                 note = excluded.note, body = excluded.body, deliveries = excluded.deliveries",
            &[
                &env.0,
                &e.biller.as_str(),
                &e.event_id,
                &e.event_type,
                &ms(e.received_at),
                &e.customer_id,
                &e.status.as_str(),
                &e.note,
                &e.body,
                &i64::from(e.deliveries),
            ],
        )
        .map(|_| ())
    }

    fn biller_events(&mut self, q: &BillerEventsQuery) -> StoreResult<Vec<StoredBillerEvent>> {
        let (before_ms, before_id) = match &q.before {
            Some((t, id)) => (Some(ms(*t)), Some(id.as_str())),
            None => (None, None),
        };
        let rows = self.query(
            concat!(
                "SELECT ",
                biller_event_columns!(),
                " FROM biller_events
                 WHERE env_id = $1 AND biller = $2 AND ($3::text IS NULL OR status = $3)
                   AND ($4::text IS NULL OR customer_id = $4)
                   AND ($5::bigint IS NULL OR received_at_ms < $5
                        OR (received_at_ms = $5 AND event_id < $6))
                 ORDER BY received_at_ms DESC, event_id DESC LIMIT $7"
            ),
            &[
                &q.env.0,
                &q.biller.as_str(),
                &q.status.map(BillerEventStatus::as_str),
                &q.customer_id,
                &before_ms,
                &before_id,
                &(q.limit as i64),
            ],
        )?;
        rows.iter().map(biller_event_row).collect()
    }

    fn purge_biller_events(&mut self, before: Timestamp) -> StoreResult<usize> {
        self.execute(
            "DELETE FROM biller_events WHERE received_at_ms < $1",
            &[&ms(before)],
        )
        .map(|n| n as usize)
    }

    fn biller_snapshot(
        &mut self,
        env: EnvId,
        biller: Biller,
        subscription_id: &str,
    ) -> StoreResult<Option<BillerSnapshotRow>> {
        Ok(self
            .query_opt(
                "SELECT subscription_id, subject, created_ms, period_start_ms, ended
                 FROM biller_snapshots
                 WHERE env_id = $1 AND biller = $2 AND subscription_id = $3",
                &[&env.0, &biller.as_str(), &subscription_id],
            )?
            .map(|r| BillerSnapshotRow {
                subscription_id: r.get(0),
                subject: r.get(1),
                created: ts(r.get(2)),
                period_start: r.get::<_, Option<i64>>(3).map(ts),
                ended: r.get(4),
            }))
    }

    fn put_biller_snapshot(
        &mut self,
        env: EnvId,
        biller: Biller,
        row: &BillerSnapshotRow,
    ) -> StoreResult<()> {
        self.execute(
            "INSERT INTO biller_snapshots (env_id, biller, subscription_id, subject, created_ms,
                 period_start_ms, ended)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (env_id, biller, subscription_id) DO UPDATE SET
                 subject = excluded.subject, created_ms = excluded.created_ms,
                 period_start_ms = excluded.period_start_ms, ended = excluded.ended",
            &[
                &env.0,
                &biller.as_str(),
                &row.subscription_id,
                &row.subject,
                &ms(row.created),
                &row.period_start.map(ms),
                &row.ended,
            ],
        )
        .map(|_| ())
    }

    fn live_biller_subscriptions(
        &mut self,
        env: EnvId,
        biller: Biller,
        subject: &str,
    ) -> StoreResult<Vec<String>> {
        let rows = self.query(
            "SELECT subscription_id FROM biller_snapshots
             WHERE env_id = $1 AND biller = $2 AND subject = $3 AND NOT ended
             ORDER BY subscription_id",
            &[&env.0, &biller.as_str(), &subject],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn enqueue_meter_event(&mut self, row: &MeterEventRow) -> StoreResult<()> {
        self.execute(
            "INSERT INTO meter_outbox (env_id, event_id, meter_event_name, user_id, value,
                 occurred_at_ms, status, attempts, next_attempt_at_ms, last_status, last_error,
                 created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (env_id, event_id) DO NOTHING",
            &[
                &row.env.0,
                &row.event_id,
                &row.meter_event_name,
                &row.user_id,
                &(row.value as i64),
                &ms(row.occurred_at),
                &row.status.as_str(),
                &i64::from(row.attempts),
                &ms(row.next_attempt_at),
                &row.last_status.map(i64::from),
                &row.last_error,
                &ms(row.created_at),
            ],
        )
        .map(|_| ())
    }

    fn claim_meter_events(
        &mut self,
        real_now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<(MeterEventRow, i64)>> {
        // SKIP LOCKED: a row another node is leasing right now is left to it, so two nodes
        // never take the same row; a lease it committed fails the re-checked condition.
        // The bound with the largest clock offset keeps the scan to the queue's due end.
        let rows = self.query(
            concat!(
                "UPDATE meter_outbox o SET lease_until_ms = $2
                 FROM environments e
                 WHERE e.env_id = o.env_id AND (o.env_id, o.event_id) IN (
                     SELECT q.env_id, q.event_id FROM meter_outbox q
                     JOIN environments qe ON qe.env_id = q.env_id
                     WHERE q.status = 'pending'
                       AND q.next_attempt_at_ms
                           <= $1 + (SELECT max(clock_offset_s) FROM environments) * 1000
                       AND q.next_attempt_at_ms <= $1 + qe.clock_offset_s * 1000
                       AND (q.lease_until_ms IS NULL OR q.lease_until_ms <= $1)
                     ORDER BY q.next_attempt_at_ms LIMIT $3
                     FOR UPDATE OF q SKIP LOCKED)
                 RETURNING ",
                meter_columns!("o."),
                ", e.clock_offset_s"
            ),
            &[&ms(real_now), &ms(lease_until), &(limit as i64)],
        )?;
        rows.iter()
            .map(|r| Ok((meter_row(r)?, r.get(12))))
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
        self.execute(
            "UPDATE meter_outbox SET attempts = attempts + 1, last_attempt_at_ms = $3,
                 lease_until_ms = NULL, status = COALESCE($4::text, status),
                 last_status = $5, last_error = $6,
                 next_attempt_at_ms = COALESCE($7::bigint, next_attempt_at_ms)
             WHERE env_id = $1 AND event_id = $2",
            &[
                &env.0,
                &event_id,
                &ms(now),
                &status.map(MeterStatus::as_str),
                &last_status.map(i64::from),
                &last_error,
                &next,
            ],
        )
        .map(|_| ())
    }

    fn meter_events(&mut self, q: &MeterEventsQuery) -> StoreResult<Vec<MeterEventRow>> {
        let (before_ms, before_id) = match &q.before {
            Some((t, id)) => (Some(ms(*t)), Some(id.as_str())),
            None => (None, None),
        };
        let rows = self.query(
            concat!(
                "SELECT ",
                meter_columns!(""),
                " FROM meter_outbox
                 WHERE env_id = $1 AND ($2::text IS NULL OR status = $2)
                   AND ($3::bigint IS NULL OR created_at_ms < $3
                        OR (created_at_ms = $3 AND event_id < $4))
                 ORDER BY created_at_ms DESC, event_id DESC LIMIT $5"
            ),
            &[
                &q.env.0,
                &q.status.map(MeterStatus::as_str),
                &before_ms,
                &before_id,
                &(q.limit as i64),
            ],
        )?;
        rows.iter().map(meter_row).collect()
    }

    fn retry_meter_event(
        &mut self,
        env: EnvId,
        event_id: &str,
        now: Timestamp,
    ) -> StoreResult<bool> {
        self.execute(
            "UPDATE meter_outbox SET status = 'pending', next_attempt_at_ms = $3,
                 lease_until_ms = NULL
             WHERE env_id = $1 AND event_id = $2",
            &[&env.0, &event_id, &ms(now)],
        )
        .map(|n| n > 0)
    }

    fn traits(&mut self, env: EnvId, user_id: &str) -> StoreResult<Option<String>> {
        crate::persons::traits(self, env, user_id)
    }

    fn put_traits(
        &mut self,
        env: EnvId,
        user_id: &str,
        traits: &str,
        now: Timestamp,
    ) -> StoreResult<()> {
        crate::persons::put_traits(self, env, user_id, traits, now)
    }

    fn delete_traits(&mut self, env: EnvId, user_id: &str) -> StoreResult<Option<String>> {
        crate::persons::delete_traits(self, env, user_id)
    }

    fn erase_logged_text(
        &mut self,
        env: EnvId,
        user_id: &str,
        limit: usize,
    ) -> StoreResult<LoggedTextCleared> {
        crate::persons::erase_logged_text(self, env, user_id, limit)
    }

    fn settings(&mut self, env: EnvId) -> StoreResult<Option<StoredSettings>> {
        Ok(self
            .query_opt(
                "SELECT document, updated_at_ms FROM settings WHERE env_id = $1",
                &[&env.0],
            )?
            .map(|r| StoredSettings {
                document: r.get(0),
                updated_at: ts(r.get(1)),
            }))
    }

    fn put_settings(&mut self, env: EnvId, document: &str, now: Timestamp) -> StoreResult<()> {
        self.execute(
            "INSERT INTO settings (env_id, document, updated_at_ms) VALUES ($1, $2, $3)
             ON CONFLICT (env_id) DO UPDATE SET
                 document = excluded.document, updated_at_ms = excluded.updated_at_ms",
            &[&env.0, &document, &ms(now)],
        )
        .map(|_| ())
    }

    fn token_secret(&mut self, env: EnvId, candidate: &str, now: Timestamp) -> StoreResult<String> {
        self.execute(
            "INSERT INTO environment_secrets (env_id, token_secret, created_at_ms)
             VALUES ($1, $2, $3) ON CONFLICT (env_id) DO NOTHING",
            &[&env.0, &candidate, &ms(now)],
        )?;
        Ok(self
            .query_one(
                "SELECT token_secret FROM environment_secrets WHERE env_id = $1",
                &[&env.0],
            )?
            .get(0))
    }
}

/// The filters every shape of `GET /v1/events` shares, parameters $3 to $10.
macro_rules! event_filters {
    () => {
        "($3::text IS NULL OR status = $3)
           AND ($4::bigint IS NULL OR occurred_at_ms < $4
                OR (occurred_at_ms = $4 AND event_id < $5))
           AND ($6::text IS NULL OR event LIKE $6 ESCAPE '\\')
           AND ($7::bigint IS NULL OR occurred_at_ms >= $7)
           AND ($8::bigint IS NULL OR occurred_at_ms < $8)
           AND ($9::jsonb IS NULL OR metadata @> $9::jsonb)"
    };
}

/// The columns of a listed usage event, in the order [`stored_event`] reads them.
macro_rules! event_columns {
    () => {
        "event_id, occurred_at_ms, user_id, anonymous_id, event, quantity, metadata,
         cost_micros, status, plan_id, reservation_id, reasons, overage, credits_used, account_id"
    };
}

/// `GET /v1/events`: newest first, by time then event id (the cursor's order). One statement
/// per shape, so that each uses its index: (env_id, user_id, occurred_at_ms) with a user,
/// (env_id, occurred_at_ms) without.
pub(crate) fn list_events(tx: &mut PgTx<'_, '_>, q: &EventsQuery) -> StoreResult<Vec<StoredEvent>> {
    const BY_USER: &str = concat!(
        "SELECT ",
        event_columns!(),
        " FROM events WHERE env_id = $1 AND user_id = $2 AND ",
        event_filters!(),
        " ORDER BY occurred_at_ms DESC, event_id DESC LIMIT $10"
    );
    const ALL: &str = concat!(
        "SELECT ",
        event_columns!(),
        " FROM events WHERE env_id = $1 AND $2::text IS NULL AND ",
        event_filters!(),
        " ORDER BY occurred_at_ms DESC, event_id DESC LIMIT $10"
    );
    let (before_ms, before_id) = match &q.before {
        Some((t, id)) => (Some(ms(*t)), Some(id.as_str())),
        None => (None, None),
    };
    let user = q.user_id.as_ref().map(|u| u.as_str());
    let sql = if user.is_some() { BY_USER } else { ALL };
    let event = q.event.as_ref().map(|e| like_pattern(e.as_str()));
    let metadata: Option<serde_json::Value> = q
        .metadata_json()
        .and_then(|m| serde_json::from_str(&m).ok());
    let rows = tx.query(
        sql,
        &[
            &q.env.0,
            &user,
            &q.status,
            &before_ms,
            &before_id,
            &event,
            &q.from.map(ms),
            &q.to.map(ms),
            &metadata,
            &(q.limit as i64),
        ],
    )?;
    rows.iter().map(stored_event).collect()
}

/// A glob of event names (`*` any run of characters) as a `LIKE` pattern escaped with `\`.
pub(crate) fn like_pattern(glob: &str) -> String {
    let mut out = String::with_capacity(glob.len() + 4);
    for c in glob.chars() {
        match c {
            '*' => out.push('%'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// `GET /v1/events/{id}`: one event, with its logged prompt and response.
pub(crate) fn get_event(
    tx: &mut PgTx<'_, '_>,
    env: EnvId,
    event_id: &str,
) -> StoreResult<Option<StoredEventDetail>> {
    const SQL: &str = concat!(
        "SELECT ",
        event_columns!(),
        ", prompt, response, truncated FROM events WHERE env_id = $1 AND event_id = $2"
    );
    let Some(r) = tx.query_opt(SQL, &[&env.0, &event_id])? else {
        return Ok(None);
    };
    Ok(Some(StoredEventDetail {
        event: stored_event(&r)?,
        prompt: r.get(15),
        response: r.get(16),
        truncated: r.get(17),
    }))
}

fn stored_event(r: &Row) -> StoreResult<StoredEvent> {
    let reasons: serde_json::Value = r.get(11);
    let shown = reasons.to_string();
    Ok(StoredEvent {
        event_id: r.get(0),
        occurred_at: ts(r.get(1)),
        user_id: r.get(2),
        account_id: r.get(14),
        anonymous_id: r.get(3),
        event: r.get(4),
        quantity: r.get::<_, i64>(5) as u64,
        metadata: parse_metadata(r.get(6))?,
        cost_micros: r.get::<_, Option<i64>>(7).map(|c| c as u64),
        status: r.get(8),
        plan_id: r.get(9),
        reservation_id: r.get(10),
        reasons: serde_json::from_value(reasons).map_err(|_| corrupt("reasons", &shown))?,
        overage: r.get::<_, i64>(12) as u64,
        credits_used: r.get::<_, i64>(13) as u64,
    })
}
