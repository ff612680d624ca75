//! The engine's decision state and [`MemTx`], the `MeteringTx` the procedures run on in the
//! engine.
//!
//! **What memory holds.** Every entity a command touched since the state was last emptied:
//! counters (`used`, the newest window, and the holds on each counter), reservations with their
//! holds and credit holds, idempotency records, subscriptions, memberships, aliases and meter
//! names, each loaded from SQLite on first use (an absent row is remembered as absent). The
//! rule that makes a lazy load correct: **an entity with a write not yet projected is always
//! in memory.** Every write loads its entity first and stays in memory until the projection has
//! applied it; the state is emptied only when the projection has caught up with the log. So an
//! entity missing from memory has no write in flight, and SQLite holds its truth.
//!
//! **What the engine does not carry yet** (the method sets [`MemTx::unsupported`] and the
//! engine runs the command on SQLite instead, see `engine`): writes to credits,
//! subscriptions, accounts, aliases and billers, and the reads that join reservations with
//! credit holds. Credit reads go to SQLite directly: in this version every credit write runs
//! there, so SQLite holds every grant and ledger entry.

use super::op::{stored, Event, Op};
use crate::{ms, sql::SqliteTx};
use jiff::Timestamp;
use rusqlite::{params, Connection};
use std::collections::{BTreeSet, VecDeque};
use tollgate_core::biller::Biller;
use tollgate_core::subscription::{HistoryEntry, Subscription};
use tollgate_store::procedure::*;
use tollgate_store::*;

/// How much older than a rolling window's start the engine keeps charges in memory, beyond two
/// windows, in milliseconds.
const ROLLING_MARGIN_MS: i64 = 24 * 3600 * 1000;

/// The engine's maps hash with foldhash: SipHash (std's default) was a visible part of a
/// reserve's cost, and the keys come from authenticated callers of one environment.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

type ByEnv<V> = HashMap<EnvId, HashMap<String, V>>;

fn slot<V>(map: &mut ByEnv<V>, env: EnvId) -> &mut HashMap<String, V> {
    map.entry(env).or_default()
}

/// The pending holds on one counter: units and expiry (ms) by reservation.
#[derive(Debug, Default)]
pub(crate) struct Holds {
    /// The holds of reservations that are not in memory have been read from SQLite.
    loaded: bool,
    by_res: HashMap<String, (u64, i64)>,
    total: u64,
    by_expiry: BTreeSet<(i64, String)>,
}

impl Holds {
    fn put(&mut self, id: &str, held: u64, expires_ms: i64) {
        self.remove(id);
        if held > 0 {
            self.by_res.insert(id.to_string(), (held, expires_ms));
            self.total += held;
            self.by_expiry.insert((expires_ms, id.to_string()));
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some((held, exp)) = self.by_res.remove(id) {
            self.total -= held;
            self.by_expiry.remove(&(exp, id.to_string()));
        }
    }

    /// Units held by holds unexpired at `now`: the total less the few holds past their expiry
    /// and not yet swept, so the cost does not grow with the number of pending holds.
    fn reserved(&self, now_ms: i64) -> u64 {
        let expired: u64 = self
            .by_expiry
            .iter()
            .take_while(|(exp, _)| *exp <= now_ms)
            .filter_map(|(_, id)| self.by_res.get(id).map(|h| h.0))
            .sum();
        self.total - expired
    }
}

/// One subject's rolling usage of one limit: every charge after `after_ms`, summed by time.
#[derive(Debug)]
pub(crate) struct Rolling {
    after_ms: i64,
    units: std::collections::BTreeMap<i64, u64>,
}

/// A reservation in memory.
#[derive(Debug)]
pub(crate) struct Res {
    pub row: ReservationRow,
    pub holds: Vec<HoldRow>,
    pub credit: Vec<CreditHold>,
    /// The log position of the newest write to it (0: none since it was loaded).
    pub last_lsn: u64,
}

/// The decision state.
#[derive(Debug, Default)]
pub(crate) struct State {
    subs: ByEnv<Option<Subscription>>,
    memberships: ByEnv<Option<(String, Timestamp)>>,
    aliases: ByEnv<Option<String>>,
    /// Keyed by `scope \0 key`.
    idem: ByEnv<Option<IdempotencyRow>>,
    meter_names: ByEnv<Option<String>>,
    used: HashMap<(EnvId, CounterKey), u64>,
    holds: HashMap<(EnvId, CounterKey), Holds>,
    /// Keyed by `limit \0 subject`.
    latest: ByEnv<Option<i64>>,
    /// Rolling usage, keyed by `limit \0 subject`.
    rolling: ByEnv<Rolling>,
    /// Boxed: the map moves its entries when it grows, and a reservation is a few hundred bytes.
    pub(crate) res: ByEnv<Option<Box<Res>>>,
    /// Pending reservations in memory by expiry (ms).
    pending: BTreeSet<(i64, EnvId, String)>,
    /// Settled reservations to drop once the projection has applied their last write.
    pub(crate) settled: VecDeque<(u64, EnvId, String)>,
    /// The greatest reservation id in the tables, by environment (`None` inside: none), read
    /// on first use: a new id above it and not in memory is free without a read of the tables
    /// (ids start with their creation time, so nearly every new id is above it). What runs on
    /// the tables instead of the engine empties the state, and with it this.
    ceiling: HashMap<EnvId, Option<String>>,
}

impl State {
    /// Drops the settled reservations whose writes are all in SQLite.
    pub(crate) fn evict(&mut self, applied: u64) {
        while let Some((lsn, env, _)) = self.settled.front() {
            if *lsn > applied {
                break;
            }
            let env = *env;
            let Some((_, _, id)) = self.settled.pop_front() else {
                break;
            };
            let slot = slot(&mut self.res, env);
            let done = matches!(slot.get(&id), Some(Some(r))
                if r.last_lsn <= applied && r.row.status != ReservationStatus::Pending);
            if done {
                slot.remove(&id);
                // The tables hold it now: a later insert of the same id must read them.
                if let Some(top) = self.ceiling.get_mut(&env) {
                    if top.as_deref() < Some(id.as_str()) {
                        *top = Some(id);
                    }
                }
            }
        }
    }
}

/// A procedure's view of the engine: reads from memory (loading from SQLite on a miss), writes
/// to memory and to the command's ops.
pub(crate) struct MemTx<'a> {
    pub st: &'a mut State,
    pub db: &'a Connection,
    pub ops: Vec<Op>,
    /// Reservations this command wrote.
    pub touched: Vec<(EnvId, String)>,
    /// The first method the engine does not carry, if the command called one.
    pub unsupported: Option<&'static str>,
}

fn two(a: &str, b: &str) -> String {
    let mut s = String::with_capacity(a.len() + b.len() + 1);
    s.push_str(a);
    s.push('\0');
    s.push_str(b);
    s
}

fn overflow(key: &CounterKey) -> StoreError {
    StoreError::Internal(format!(
        "counter {}/{} would pass the largest stored integer",
        key.limit_id, key.subject
    ))
}

impl<'a> MemTx<'a> {
    pub fn new(st: &'a mut State, db: &'a Connection) -> Self {
        Self {
            st,
            db,
            ops: Vec::new(),
            touched: Vec::new(),
            unsupported: None,
        }
    }

    fn sql(&self) -> SqliteTx<'a> {
        SqliteTx(self.db)
    }

    fn unsupported<T>(&mut self, what: &'static str) -> StoreResult<T> {
        self.unsupported.get_or_insert(what);
        Err(StoreError::Unavailable(format!(
            "the engine does not carry {what}"
        )))
    }

    fn used_entry(&mut self, env: EnvId, key: &CounterKey) -> StoreResult<&mut u64> {
        let k = (env, key.clone());
        if !self.st.used.contains_key(&k) {
            let v = self.sql().used(env, key)?;
            self.st.used.insert(k.clone(), v);
        }
        Ok(self.st.used.entry(k).or_default())
    }

    fn latest_entry(
        &mut self,
        env: EnvId,
        limit: &str,
        subject: &str,
    ) -> StoreResult<&mut Option<i64>> {
        let k = two(limit, subject);
        if !slot(&mut self.st.latest, env).contains_key(&k) {
            let v = self.sql().latest_window(env, limit, subject)?;
            slot(&mut self.st.latest, env).insert(k.clone(), v);
        }
        Ok(slot(&mut self.st.latest, env).entry(k).or_default())
    }

    fn bump_latest(&mut self, env: EnvId, key: &CounterKey) -> StoreResult<()> {
        let latest = self.latest_entry(env, &key.limit_id, &key.subject)?;
        *latest = Some(latest.map_or(key.window_key, |w| w.max(key.window_key)));
        Ok(())
    }

    fn holds_of(&mut self, env: EnvId, key: &CounterKey) -> StoreResult<&mut Holds> {
        let k = (env, key.clone());
        let loaded = self.st.holds.get(&k).is_some_and(|h| h.loaded);
        if !loaded {
            let rows = pending_holds(self.db, env, key)?;
            let known = slot(&mut self.st.res, env);
            let fresh: Vec<_> = rows
                .into_iter()
                .filter(|(id, _, _)| !known.contains_key(id))
                .collect();
            let h = self.st.holds.entry(k.clone()).or_default();
            for (id, held, exp) in fresh {
                h.put(&id, held, exp);
            }
            h.loaded = true;
        }
        Ok(self.st.holds.entry(k).or_default())
    }

    /// The reservation, loaded with its holds and credit holds on first use.
    fn res_entry(&mut self, env: EnvId, id: &str) -> StoreResult<Option<&mut Res>> {
        if !slot(&mut self.st.res, env).contains_key(id) {
            let loaded = match self.sql().reservation(env, id)? {
                None => None,
                Some(row) => {
                    let holds = self.sql().holds(env, id)?;
                    let credit = self.sql().credit_holds(env, id)?;
                    Some(Box::new(Res {
                        row,
                        holds,
                        credit,
                        last_lsn: 0,
                    }))
                }
            };
            let found = loaded.is_some();
            slot(&mut self.st.res, env).insert(id.to_string(), loaded);
            if found {
                self.index(env, id);
            }
        }
        Ok(slot(&mut self.st.res, env)
            .get_mut(id)
            .and_then(|r| r.as_deref_mut()))
    }

    /// Adds the pending holds of reservation `id`, as memory holds it, to its counters, and the
    /// reservation to the pending set if it is pending.
    fn index(&mut self, env: EnvId, id: &str) {
        let State {
            res,
            holds,
            pending,
            ..
        } = &mut *self.st;
        let Some(Some(r)) = res.get(&env).and_then(|m| m.get(id)) else {
            return;
        };
        let exp = ms(r.row.expires_at);
        for h in r.holds.iter().filter(|h| h.held > 0) {
            holds
                .entry((env, h.key.clone()))
                .or_default()
                .put(id, h.held, exp);
        }
        if r.row.status == ReservationStatus::Pending {
            pending.insert((exp, env, id.to_string()));
        }
    }

    /// Takes a reservation's holds off its counters and out of the pending set.
    fn unindex(&mut self, env: EnvId, id: &str) {
        let Some(Some(r)) = slot(&mut self.st.res, env).get(id) else {
            return;
        };
        let keys: Vec<CounterKey> = r.holds.iter().map(|h| h.key.clone()).collect();
        let exp = ms(r.row.expires_at);
        for key in keys {
            if let Some(h) = self.st.holds.get_mut(&(env, key)) {
                h.remove(id);
            }
        }
        self.st.pending.remove(&(exp, env, id.to_string()));
    }

    /// The rolling usage in memory, loaded from the tables for times after `after` (ms) on
    /// first use; `None` if memory holds less than that (a longer window than it loaded).
    fn rolling_entry(
        &mut self,
        env: EnvId,
        limit_id: &str,
        subject: &str,
        after: i64,
    ) -> StoreResult<Option<&mut Rolling>> {
        let k = two(limit_id, subject);
        if !slot(&mut self.st.rolling, env).contains_key(&k) {
            let mut units = std::collections::BTreeMap::new();
            for (at, n) in rolling_after(self.db, env, limit_id, subject, after)? {
                *units.entry(at).or_default() += n;
            }
            let r = Rolling {
                after_ms: after,
                units,
            };
            slot(&mut self.st.rolling, env).insert(k.clone(), r);
        }
        Ok(slot(&mut self.st.rolling, env)
            .get_mut(&k)
            .filter(|r| r.after_ms <= after))
    }

    fn touch(&mut self, env: EnvId, id: &str) {
        self.touched.push((env, id.to_string()));
    }
}

/// The pending holds on a counter in SQLite: reservation, units held, expiry (ms).
fn pending_holds(
    db: &Connection,
    env: EnvId,
    key: &CounterKey,
) -> StoreResult<Vec<(String, u64, i64)>> {
    let mut stmt = db
        .prepare_cached(
            "SELECT reservation_id, held, expires_at_ms FROM reservation_limits
             WHERE env_id = ?1 AND limit_id = ?2 AND subject = ?3 AND window_key = ?4
               AND held > 0",
        )
        .map_err(crate::internal)?;
    let rows = stmt
        .query_map(
            params![env.0, key.limit_id, key.subject, key.window_key],
            |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64, r.get(2)?)),
        )
        .map_err(crate::internal)?;
    rows.collect::<Result<_, _>>().map_err(crate::internal)
}

/// The greatest reservation id of an environment in the tables.
fn max_reservation_id(db: &Connection, env: EnvId) -> StoreResult<Option<String>> {
    db.prepare_cached("SELECT MAX(reservation_id) FROM reservations WHERE env_id = ?1")
        .and_then(|mut s| s.query_row([env.0], |r| r.get(0)))
        .map_err(crate::internal)
}

/// Rolling usage rows of a subject's limit after `after` (ms): time (ms), units.
fn rolling_after(
    db: &Connection,
    env: EnvId,
    limit_id: &str,
    subject: &str,
    after: i64,
) -> StoreResult<Vec<(i64, u64)>> {
    let mut stmt = db
        .prepare_cached(
            "SELECT at_ms, units FROM rolling_usage
             WHERE env_id = ?1 AND limit_id = ?2 AND subject = ?3 AND at_ms > ?4",
        )
        .map_err(crate::internal)?;
    let rows = stmt
        .query_map(params![env.0, limit_id, subject, after], |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64))
        })
        .map_err(crate::internal)?;
    rows.collect::<Result<_, _>>().map_err(crate::internal)
}

/// A grant's active holds by pending reservations past their expiry at `now` (ms), in the
/// tables: reservation, units.
fn overdue_holds(
    db: &Connection,
    env: EnvId,
    grant_id: &str,
    now: i64,
) -> StoreResult<Vec<(String, u64)>> {
    let mut stmt = db
        .prepare_cached(
            "SELECT h.reservation_id, h.held FROM credit_holds h
             JOIN reservations r ON r.env_id = h.env_id AND r.reservation_id = h.reservation_id
             WHERE h.env_id = ?1 AND h.grant_id = ?2 AND h.active = 1
               AND r.status = 'pending' AND r.expires_at_ms <= ?3",
        )
        .map_err(crate::internal)?;
    let rows = stmt
        .query_map(params![env.0, grant_id, now], |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64))
        })
        .map_err(crate::internal)?;
    rows.collect::<Result<_, _>>().map_err(crate::internal)
}

/// Each environment's clock offset in seconds.
pub(crate) fn clock_offsets(db: &Connection) -> StoreResult<HashMap<EnvId, i64>> {
    let mut stmt = db
        .prepare_cached("SELECT env_id, clock_offset_s FROM environments")
        .map_err(crate::internal)?;
    let rows = stmt
        .query_map([], |r| Ok((EnvId(r.get(0)?), r.get(1)?)))
        .map_err(crate::internal)?;
    rows.collect::<Result<_, _>>().map_err(crate::internal)
}

impl MeteringTx for MemTx<'_> {
    fn lock_subjects(&mut self, _env: EnvId, _subjects: &[&str]) -> StoreResult<()> {
        Ok(())
    }

    fn single_writer(&self) -> bool {
        true
    }

    fn subscription(&mut self, env: EnvId, subject: &str) -> StoreResult<Option<Subscription>> {
        if let Some(v) = slot(&mut self.st.subs, env).get(subject) {
            return Ok(v.clone());
        }
        let v = self.sql().subscription(env, subject)?;
        slot(&mut self.st.subs, env).insert(subject.to_string(), v.clone());
        Ok(v)
    }

    fn write_subscription(&mut self, _: EnvId, _: &str, _: &Subscription) -> StoreResult<()> {
        self.unsupported("subscription writes")
    }

    fn append_history(&mut self, _: EnvId, _: &str, _: &HistoryEntry) -> StoreResult<()> {
        self.unsupported("subscription history")
    }

    fn latest_window(
        &mut self,
        env: EnvId,
        limit_id: &str,
        subject: &str,
    ) -> StoreResult<Option<i64>> {
        Ok(*self.latest_entry(env, limit_id, subject)?)
    }

    fn reserved(&mut self, env: EnvId, key: &CounterKey, now: Timestamp) -> StoreResult<u64> {
        Ok(self.holds_of(env, key)?.reserved(ms(now)))
    }

    fn used(&mut self, env: EnvId, key: &CounterKey) -> StoreResult<u64> {
        Ok(*self.used_entry(env, key)?)
    }

    fn rolling_used(
        &mut self,
        env: EnvId,
        limit_id: &str,
        subject: &str,
        after: Timestamp,
        until: Timestamp,
    ) -> StoreResult<(u64, Option<Timestamp>)> {
        let (after, until) = (ms(after), ms(until));
        let Some(r) = self.rolling_entry(env, limit_id, subject, after)? else {
            return self.unsupported("a rolling window longer than the one in memory");
        };
        let first = after.saturating_add(1);
        let mut sum = 0u64;
        let mut oldest = None;
        if until >= first {
            for (&at, &units) in r.units.range(first..=until) {
                oldest.get_or_insert(at);
                sum = sum.saturating_add(units);
            }
        }
        // Charges older than this window are read again only to settle an older reservation
        // (a commit charges at its reservation's time, within a window either side): keep two
        // windows and a day more; anything older comes from the tables.
        let keep = (until - after)
            .saturating_mul(2)
            .saturating_add(ROLLING_MARGIN_MS);
        let boundary = after.saturating_sub(keep);
        if boundary > r.after_ms {
            r.units = r.units.split_off(&boundary.saturating_add(1));
            r.after_ms = boundary;
        }
        Ok((sum, oldest.map(crate::ts)))
    }

    fn open_counter(
        &mut self,
        env: EnvId,
        key: &CounterKey,
        end: Option<Timestamp>,
    ) -> StoreResult<()> {
        self.used_entry(env, key)?;
        self.bump_latest(env, key)?;
        self.ops.push(Op::OpenCounter {
            env,
            key: key.clone(),
            end,
        });
        Ok(())
    }

    fn add_used(
        &mut self,
        env: EnvId,
        key: &CounterKey,
        end: Option<Timestamp>,
        units: u64,
    ) -> StoreResult<()> {
        let used = self.used_entry(env, key)?;
        let after = used
            .checked_add(units)
            .filter(|&v| v <= i64::MAX as u64)
            .ok_or_else(|| overflow(key))?;
        *used = after;
        self.bump_latest(env, key)?;
        self.ops.push(Op::AddUsed {
            env,
            key: key.clone(),
            end,
            units,
        });
        Ok(())
    }

    fn add_rolling(
        &mut self,
        env: EnvId,
        limit_id: &str,
        subject: &str,
        at: Timestamp,
        units: u64,
    ) -> StoreResult<()> {
        let at_ms = ms(at);
        let loaded = match slot(&mut self.st.rolling, env).get(&two(limit_id, subject)) {
            Some(r) => r.after_ms < at_ms,
            None => false,
        };
        if !loaded {
            // Loads what the tables hold from this charge's time on, so the charge is counted
            // with everything after it.
            self.rolling_entry(env, limit_id, subject, at_ms - 1)?;
        }
        if let Some(r) = self.rolling_entry(env, limit_id, subject, at_ms - 1)? {
            *r.units.entry(at_ms).or_default() += units;
        }
        self.ops.push(Op::AddRolling {
            env,
            limit_id: limit_id.to_string(),
            subject: subject.to_string(),
            at,
            units,
        });
        Ok(())
    }

    fn insert_reservation(&mut self, env: EnvId, r: &ReservationRow) -> StoreResult<()> {
        if !self.st.ceiling.contains_key(&env) {
            let top = max_reservation_id(self.db, env)?;
            self.st.ceiling.insert(env, top);
        }
        let above = match self.st.ceiling.get(&env) {
            Some(Some(top)) => r.reservation_id.as_str() > top.as_str(),
            _ => true,
        };
        let known = slot(&mut self.st.res, env).get(&r.reservation_id);
        let taken = match (known, above) {
            (Some(v), _) => v.is_some(),
            (None, true) => false,
            (None, false) => self.res_entry(env, &r.reservation_id)?.is_some(),
        };
        if taken {
            return Err(StoreError::AlreadyExists);
        }
        let row = ReservationRow {
            created_at: stored(r.created_at),
            expires_at: stored(r.expires_at),
            final_quantity: None,
            overage: None,
            late: false,
            ..r.clone()
        };
        let res = Res {
            row,
            holds: Vec::new(),
            credit: Vec::new(),
            last_lsn: 0,
        };
        slot(&mut self.st.res, env).insert(r.reservation_id.clone(), Some(Box::new(res)));
        self.index(env, &r.reservation_id);
        self.touch(env, &r.reservation_id);
        self.ops.push(Op::InsertReservation {
            env,
            row: r.clone(),
        });
        Ok(())
    }

    fn insert_hold(
        &mut self,
        env: EnvId,
        reservation_id: &str,
        h: &HoldRow,
        expires_at: Timestamp,
    ) -> StoreResult<()> {
        let hold = HoldRow {
            window_start: h.window_start.map(stored),
            window_end: h.window_end.map(stored),
            ..h.clone()
        };
        // Loads the counter's other holds first, so this one is not counted twice.
        self.holds_of(env, &h.key)?;
        let Some(r) = self.res_entry(env, reservation_id)? else {
            return Err(StoreError::Internal(format!(
                "a hold for reservation {reservation_id}, which does not exist"
            )));
        };
        r.holds.push(hold);
        if h.held > 0 {
            self.holds_of(env, &h.key)?
                .put(reservation_id, h.held, ms(expires_at));
        }
        self.touch(env, reservation_id);
        self.ops.push(Op::InsertHold {
            env,
            reservation_id: reservation_id.to_string(),
            hold: h.clone(),
            expires_at,
        });
        Ok(())
    }

    fn reservation(&mut self, env: EnvId, id: &str) -> StoreResult<Option<ReservationRow>> {
        Ok(self.res_entry(env, id)?.map(|r| r.row.clone()))
    }

    fn holds(&mut self, env: EnvId, reservation_id: &str) -> StoreResult<Vec<HoldRow>> {
        Ok(self
            .res_entry(env, reservation_id)?
            .map(|r| r.holds.clone())
            .unwrap_or_default())
    }

    fn finish_reservation(
        &mut self,
        env: EnvId,
        id: &str,
        status: ReservationStatus,
        final_quantity: Option<u64>,
        overage: Option<u64>,
    ) -> StoreResult<()> {
        if self.res_entry(env, id)?.is_some() {
            self.unindex(env, id);
            if let Some(r) = self.res_entry(env, id)? {
                r.row.status = status;
                r.row.final_quantity = final_quantity;
                r.row.overage = overage;
                r.holds.iter_mut().for_each(|h| h.held = 0);
            }
            self.touch(env, id);
        }
        self.ops.push(Op::FinishReservation {
            env,
            id: id.to_string(),
            status,
            final_quantity,
            overage,
        });
        Ok(())
    }

    fn commit_late(
        &mut self,
        env: EnvId,
        id: &str,
        event_id: &str,
        final_quantity: u64,
        overage: u64,
    ) -> StoreResult<()> {
        if self.res_entry(env, id)?.is_some() {
            self.unindex(env, id);
            if let Some(r) = self.res_entry(env, id)? {
                r.row.status = ReservationStatus::Committed;
                r.row.late = true;
                r.row.event_id = event_id.to_string();
                r.row.final_quantity = Some(final_quantity);
                r.row.overage = Some(overage);
            }
            self.touch(env, id);
        }
        self.ops.push(Op::CommitLate {
            env,
            id: id.to_string(),
            event_id: event_id.to_string(),
            final_quantity,
            overage,
        });
        Ok(())
    }

    fn set_expiry(&mut self, env: EnvId, id: &str, expires_at: Timestamp) -> StoreResult<()> {
        if self.res_entry(env, id)?.is_some() {
            self.unindex(env, id);
            if let Some(r) = self.res_entry(env, id)? {
                r.row.expires_at = stored(expires_at);
            }
            self.index(env, id);
            self.touch(env, id);
        }
        self.ops.push(Op::SetExpiry {
            env,
            id: id.to_string(),
            expires_at,
        });
        Ok(())
    }

    fn move_holds(
        &mut self,
        _: EnvId,
        _: &CounterKey,
        _: &CounterKey,
        _: (Option<Timestamp>, Option<Timestamp>),
    ) -> StoreResult<()> {
        self.unsupported("moving holds")
    }

    fn insert_event(&mut self, env: EnvId, e: &EventRow<'_>) -> StoreResult<()> {
        self.ops.push(Op::InsertEvent {
            env,
            event: Event::from_row(e),
        });
        Ok(())
    }

    fn idempotency(
        &mut self,
        env: EnvId,
        scope: &str,
        key: &str,
    ) -> StoreResult<Option<IdempotencyRow>> {
        let k = two(scope, key);
        if let Some(v) = slot(&mut self.st.idem, env).get(&k) {
            return Ok(v.clone());
        }
        let v = self.sql().idempotency(env, scope, key)?;
        slot(&mut self.st.idem, env).insert(k, v.clone());
        Ok(v)
    }

    fn store_idempotency(
        &mut self,
        env: EnvId,
        scope: &str,
        key: &str,
        row: &IdempotencyRow,
    ) -> StoreResult<()> {
        let kept = IdempotencyRow {
            created_at: stored(row.created_at),
            ..row.clone()
        };
        slot(&mut self.st.idem, env).insert(two(scope, key), Some(kept));
        self.ops.push(Op::StoreIdempotency {
            env,
            scope: scope.to_string(),
            key: key.to_string(),
            row: row.clone(),
        });
        Ok(())
    }

    fn membership(
        &mut self,
        env: EnvId,
        user_id: &str,
    ) -> StoreResult<Option<(String, Timestamp)>> {
        if let Some(v) = slot(&mut self.st.memberships, env).get(user_id) {
            return Ok(v.clone());
        }
        let v = self.sql().membership(env, user_id)?;
        slot(&mut self.st.memberships, env).insert(user_id.to_string(), v.clone());
        Ok(v)
    }

    fn members(&mut self, _: EnvId, _: &str) -> StoreResult<Vec<Member>> {
        self.unsupported("account members")
    }

    fn put_member(&mut self, _: EnvId, _: &str, _: &str, _: Timestamp) -> StoreResult<()> {
        self.unsupported("account members")
    }

    fn delete_member(&mut self, _: EnvId, _: &str, _: &str) -> StoreResult<bool> {
        self.unsupported("account members")
    }

    fn alias(&mut self, env: EnvId, anonymous_id: &str) -> StoreResult<Option<String>> {
        if let Some(v) = slot(&mut self.st.aliases, env).get(anonymous_id) {
            return Ok(v.clone());
        }
        let v = self.sql().alias(env, anonymous_id)?;
        slot(&mut self.st.aliases, env).insert(anonymous_id.to_string(), v.clone());
        Ok(v)
    }

    fn insert_alias(&mut self, _: EnvId, _: &str, _: &str, _: Timestamp) -> StoreResult<()> {
        self.unsupported("aliases")
    }

    fn merge_limit(&mut self, _: EnvId, _: &str, _: &str, _: &str) -> StoreResult<()> {
        self.unsupported("merging usage")
    }

    fn merged_peak(
        &mut self,
        _: EnvId,
        _: &str,
        _: (&str, &str),
        _: Timestamp,
    ) -> StoreResult<u64> {
        self.unsupported("merging usage")
    }

    fn reattribute(&mut self, _: EnvId, _: &str, _: &str) -> StoreResult<u64> {
        self.unsupported("moving events")
    }

    fn purge_idempotency(&mut self, before: Timestamp) -> StoreResult<()> {
        for records in self.st.idem.values_mut() {
            for v in records.values_mut() {
                if v.as_ref().is_some_and(|r| r.created_at < before) {
                    *v = None;
                }
            }
        }
        self.ops.push(Op::PurgeIdempotency { before });
        Ok(())
    }

    fn due_reservations(
        &mut self,
        real_now: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<(EnvId, String, String)>> {
        let mut out = Vec::new();
        // SQLite's pending reservations that memory does not know (memory's are newer).
        for (env, id, user) in self.sql().due_reservations(real_now, limit)? {
            if !slot(&mut self.st.res, env).contains_key(&id) {
                out.push((env, id, user));
            }
        }
        let offsets = clock_offsets(self.db)?;
        let largest = offsets.values().copied().max().unwrap_or(0).max(0);
        let horizon = ms(real_now).saturating_add(largest.saturating_mul(1000));
        let due: Vec<(EnvId, String)> = self
            .st
            .pending
            .iter()
            .take_while(|(exp, _, _)| *exp <= horizon)
            .filter(|(exp, env, _)| {
                let offset = offsets.get(env).copied().unwrap_or(0);
                *exp <= ms(real_now).saturating_add(offset.saturating_mul(1000))
            })
            .map(|(_, env, id)| (*env, id.clone()))
            .collect();
        for (env, id) in due {
            if out.len() >= limit {
                break;
            }
            if let Some(Some(r)) = slot(&mut self.st.res, env).get(&id) {
                out.push((env, id, r.row.user_id.clone()));
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    // ---- credits: reads from SQLite (every credit write runs there), writes not carried.
    fn insert_grant(&mut self, _: EnvId, _: &GrantRow) -> StoreResult<()> {
        self.unsupported("credit grants")
    }
    fn grant(&mut self, env: EnvId, grant_id: &str) -> StoreResult<Option<GrantRow>> {
        self.sql().grant(env, grant_id)
    }
    fn grants_by_ref(&mut self, env: EnvId, external_ref: &str) -> StoreResult<Vec<GrantRow>> {
        self.sql().grants_by_ref(env, external_ref)
    }
    fn live_grants(&mut self, env: EnvId, subjects: &[&str]) -> StoreResult<Vec<Grant>> {
        self.sql().live_grants(env, subjects)
    }
    fn balance(&mut self, env: EnvId, grant_id: &str) -> StoreResult<Balance> {
        self.sql().balance(env, grant_id)
    }
    fn append_ledger(&mut self, _: EnvId, _: &LedgerEntry) -> StoreResult<()> {
        self.unsupported("credit ledger entries")
    }
    fn insert_credit_hold(&mut self, _: EnvId, _: (&str, &str), _: &CreditHold) -> StoreResult<()> {
        self.unsupported("credit holds")
    }
    fn credit_holds(&mut self, env: EnvId, reservation_id: &str) -> StoreResult<Vec<CreditHold>> {
        Ok(self
            .res_entry(env, reservation_id)?
            .map(|r| r.credit.clone())
            .unwrap_or_default())
    }
    fn end_credit_holds(&mut self, env: EnvId, reservation_id: &str) -> StoreResult<()> {
        let active = self
            .res_entry(env, reservation_id)?
            .is_some_and(|r| r.credit.iter().any(|h| h.active));
        match active {
            true => self.unsupported("credit holds"),
            false => Ok(()),
        }
    }
    // A reservation in memory may be newer than its row (extended, settled); one that holds
    // credits was loaded from the tables (the engine does not place credit holds yet), so the
    // tables list every candidate and memory decides about the ones it holds.
    fn overdue_held(&mut self, env: EnvId, grant_id: &str, now: Timestamp) -> StoreResult<u64> {
        let mut total = 0u64;
        for (id, units) in overdue_holds(self.db, env, grant_id, ms(now))? {
            total += match slot(&mut self.st.res, env).get(&id) {
                None => units,
                Some(None) => 0,
                Some(Some(r))
                    if r.row.status == ReservationStatus::Pending && r.row.expires_at <= now =>
                {
                    r.credit
                        .iter()
                        .filter(|h| h.active && h.grant_id == grant_id)
                        .map(|h| h.units)
                        .sum()
                }
                Some(Some(_)) => 0,
            };
        }
        Ok(total)
    }
    fn overdue_credit_reservations(
        &mut self,
        env: EnvId,
        user_id: &str,
        now: Timestamp,
    ) -> StoreResult<Vec<String>> {
        let ids = self.sql().overdue_credit_reservations(env, user_id, now)?;
        let res = slot(&mut self.st.res, env);
        Ok(ids
            .into_iter()
            .filter(|id| match res.get(id) {
                None => true,
                Some(None) => false,
                Some(Some(r)) => {
                    r.row.status == ReservationStatus::Pending
                        && r.row.expires_at <= now
                        && r.credit.iter().any(|h| h.active)
                }
            })
            .collect())
    }
    fn credits_used_by(&mut self, env: EnvId, reservation_id: &str) -> StoreResult<u64> {
        self.sql().credits_used_by(env, reservation_id)
    }
    fn revoke_mark(&mut self, _: EnvId, _: &str, _: Timestamp) -> StoreResult<()> {
        self.unsupported("revocations")
    }
    fn is_revoked(&mut self, env: EnvId, grant_id: &str) -> StoreResult<bool> {
        self.sql().is_revoked(env, grant_id)
    }
    fn ledger_page(
        &mut self,
        env: EnvId,
        owner: (&str, Option<&str>),
        limit: usize,
        before: Option<i64>,
    ) -> StoreResult<Vec<LedgerEntry>> {
        self.sql().ledger_page(env, owner, limit, before)
    }
    fn queue_expiry(&mut self, _: EnvId, _: &GrantRow, _: Timestamp) -> StoreResult<()> {
        self.unsupported("credit expiry")
    }
    fn expired_grants(
        &mut self,
        real_now: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<(EnvId, String, String)>> {
        let due = self.sql().expired_grants(real_now, limit)?;
        match due.is_empty() {
            true => Ok(due),
            false => self.unsupported("credit expiry"),
        }
    }
    fn dequeue_expiry(&mut self, _: EnvId, _: &str) -> StoreResult<()> {
        self.unsupported("credit expiry")
    }
    fn rolled_over(&mut self, env: EnvId, key: &CounterKey) -> StoreResult<bool> {
        self.sql().rolled_over(env, key)
    }
    fn mark_rollover(&mut self, _: EnvId, _: &CounterKey, _: Option<&str>) -> StoreResult<()> {
        self.unsupported("rollovers")
    }

    // ---- billers: not carried, except reading whether a usage event is forwarded.
    fn put_integration(&mut self, _: &Integration) -> StoreResult<Integration> {
        self.unsupported("biller integrations")
    }
    fn integration(&mut self, env: EnvId, biller: Biller) -> StoreResult<Option<Integration>> {
        self.sql().integration(env, biller)
    }
    fn endpoint(&mut self, biller: Biller, id: &str) -> StoreResult<Option<EndpointTarget>> {
        self.sql().endpoint(biller, id)
    }
    fn set_meter_names(&mut self, _: EnvId, _: &[(String, String)]) -> StoreResult<()> {
        self.unsupported("meter names")
    }
    fn meter_name(&mut self, env: EnvId, event: &str) -> StoreResult<Option<String>> {
        if let Some(v) = slot(&mut self.st.meter_names, env).get(event) {
            return Ok(v.clone());
        }
        let v = self.sql().meter_name(env, event)?;
        slot(&mut self.st.meter_names, env).insert(event.to_string(), v.clone());
        Ok(v)
    }
    fn biller_customer(&mut self, env: EnvId, b: Biller, c: &str) -> StoreResult<Option<String>> {
        self.sql().biller_customer(env, b, c)
    }
    fn put_biller_customer(
        &mut self,
        _: EnvId,
        _: Biller,
        _: &str,
        _: &str,
        _: Timestamp,
    ) -> StoreResult<()> {
        self.unsupported("biller customers")
    }
    fn biller_customer_of(
        &mut self,
        env: EnvId,
        b: Biller,
        s: &str,
    ) -> StoreResult<Option<String>> {
        self.sql().biller_customer_of(env, b, s)
    }
    fn biller_event(
        &mut self,
        env: EnvId,
        b: Biller,
        id: &str,
    ) -> StoreResult<Option<StoredBillerEvent>> {
        self.sql().biller_event(env, b, id)
    }
    fn put_biller_event(&mut self, _: EnvId, _: &StoredBillerEvent) -> StoreResult<()> {
        self.unsupported("biller events")
    }
    fn biller_events(&mut self, q: &BillerEventsQuery) -> StoreResult<Vec<StoredBillerEvent>> {
        self.sql().biller_events(q)
    }
    fn purge_biller_events(&mut self, _: Timestamp) -> StoreResult<usize> {
        self.unsupported("biller events")
    }
    fn biller_snapshot(
        &mut self,
        env: EnvId,
        b: Biller,
        id: &str,
    ) -> StoreResult<Option<BillerSnapshotRow>> {
        self.sql().biller_snapshot(env, b, id)
    }
    fn put_biller_snapshot(
        &mut self,
        _: EnvId,
        _: Biller,
        _: &BillerSnapshotRow,
    ) -> StoreResult<()> {
        self.unsupported("biller snapshots")
    }
    fn live_biller_subscriptions(
        &mut self,
        env: EnvId,
        b: Biller,
        subject: &str,
    ) -> StoreResult<Vec<String>> {
        self.sql().live_biller_subscriptions(env, b, subject)
    }
    fn enqueue_meter_event(&mut self, _: &MeterEventRow) -> StoreResult<()> {
        self.unsupported("the meter outbox")
    }
    fn claim_meter_events(
        &mut self,
        _: Timestamp,
        _: Timestamp,
        _: usize,
    ) -> StoreResult<Vec<(MeterEventRow, i64)>> {
        self.unsupported("the meter outbox")
    }
    fn finish_meter_event(
        &mut self,
        _: EnvId,
        _: &str,
        _: &MeterAttempt,
        _: Timestamp,
    ) -> StoreResult<()> {
        self.unsupported("the meter outbox")
    }
    fn meter_events(&mut self, q: &MeterEventsQuery) -> StoreResult<Vec<MeterEventRow>> {
        self.sql().meter_events(q)
    }
    fn retry_meter_event(&mut self, _: EnvId, _: &str, _: Timestamp) -> StoreResult<bool> {
        self.unsupported("the meter outbox")
    }
    fn settings(&mut self, env: EnvId) -> StoreResult<Option<StoredSettings>> {
        self.sql().settings(env)
    }
    fn put_settings(&mut self, _: EnvId, _: &str, _: Timestamp) -> StoreResult<()> {
        self.unsupported("settings")
    }
}
