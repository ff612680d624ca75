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
//! subscriptions, accounts, aliases, persons and billers, and the reads that join reservations with
//! credit holds. Credit reads go to SQLite directly: in this version every credit write runs
//! there, so SQLite holds every grant and ledger entry.

use super::op::{stored, Event, Op};
use crate::{ms, sql::SqliteTx};
use hashbrown::hash_map::RawEntryMut;
use hashbrown::Equivalent;
use jiff::Timestamp;
use rusqlite::{params, Connection};
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use tollgate_core::biller::Biller;
use tollgate_core::subscription::{HistoryEntry, Subscription};
use tollgate_store::procedure::*;
use tollgate_store::*;

/// How much older than a rolling window's start the engine keeps charges in memory, beyond two
/// windows, in milliseconds.
const ROLLING_MARGIN_MS: i64 = 24 * 3600 * 1000;

/// The engine's maps hash with foldhash: SipHash (std's default) was a visible part of a
/// reserve's cost, and the keys come from authenticated callers of one environment. They are
/// hashbrown's maps so that a lookup borrows its key ([`IdRef`], [`PairRef`], [`KeyRef`])
/// instead of building an owned one: a key is allocated only when an entry is inserted.
pub(crate) type HashMap<K, V> = hashbrown::HashMap<K, V, foldhash::fast::RandomState>;

/// A reservation id, shared by the reservation's entry, its holds, the pending set and the
/// settled queue (one allocation per reservation instead of one per index).
pub(crate) type ResId = Arc<str>;

/// Keyed by environment and one string (a subject, a user, an anonymous id, an event).
type ById<V> = HashMap<(EnvId, String), V>;
/// Keyed by environment and two strings (scope and key; limit and subject).
type ByPair<V> = HashMap<(EnvId, String, String), V>;

/// A borrowed `(EnvId, String)` (or `(EnvId, ResId)`) key: hashes as the owned one does (a
/// tuple and a tuple struct both hash their fields in order; `String`, `Arc<str>` and `&str`
/// hash as `str`).
#[derive(Hash)]
pub(crate) struct IdRef<'a>(pub EnvId, pub &'a str);

impl Equivalent<(EnvId, String)> for IdRef<'_> {
    fn equivalent(&self, k: &(EnvId, String)) -> bool {
        self.0 == k.0 && self.1 == k.1
    }
}

impl Equivalent<(EnvId, ResId)> for IdRef<'_> {
    fn equivalent(&self, k: &(EnvId, ResId)) -> bool {
        self.0 == k.0 && self.1 == &*k.1
    }
}

/// A borrowed `(EnvId, String, String)` key.
#[derive(Hash)]
struct PairRef<'a>(EnvId, &'a str, &'a str);

impl Equivalent<(EnvId, String, String)> for PairRef<'_> {
    fn equivalent(&self, k: &(EnvId, String, String)) -> bool {
        self.0 == k.0 && self.1 == k.1 && self.2 == k.2
    }
}

/// A borrowed `(EnvId, CounterKey)` key (`CounterKey` derives `Hash`: limit, subject, window).
#[derive(Hash)]
struct KeyRef<'a>(EnvId, &'a str, &'a str, i64);

impl<'a> KeyRef<'a> {
    fn of(env: EnvId, key: &'a CounterKey) -> Self {
        KeyRef(env, &key.limit_id, &key.subject, key.window_key)
    }
}

impl Equivalent<(EnvId, CounterKey)> for KeyRef<'_> {
    fn equivalent(&self, k: &(EnvId, CounterKey)) -> bool {
        self.0 == k.0 && self.3 == k.1.window_key && self.1 == k.1.limit_id && self.2 == k.1.subject
    }
}

/// The entry of a map keyed by `(EnvId, String)`, inserted with `load` on a miss.
fn by_id<'m, V>(
    map: &'m mut ById<V>,
    env: EnvId,
    id: &str,
    load: impl FnOnce() -> StoreResult<V>,
) -> StoreResult<&'m mut V> {
    Ok(match map.raw_entry_mut().from_key(&IdRef(env, id)) {
        RawEntryMut::Occupied(e) => e.into_mut(),
        RawEntryMut::Vacant(e) => e.insert((env, id.to_string()), load()?).1,
    })
}

/// The entry of a map keyed by `(EnvId, String, String)`, inserted with `load` on a miss.
fn by_pair<'m, V>(
    map: &'m mut ByPair<V>,
    (env, a, b): (EnvId, &str, &str),
    load: impl FnOnce() -> StoreResult<V>,
) -> StoreResult<&'m mut V> {
    Ok(match map.raw_entry_mut().from_key(&PairRef(env, a, b)) {
        RawEntryMut::Occupied(e) => e.into_mut(),
        RawEntryMut::Vacant(e) => e.insert((env, a.to_string(), b.to_string()), load()?).1,
    })
}

/// One counter in memory: its `used` (once read) and its pending holds.
#[derive(Debug, Default)]
pub(crate) struct Counted {
    used: Option<u64>,
    holds: Holds,
}

/// The pending holds on one counter: units and expiry (ms) by reservation.
#[derive(Debug, Default)]
pub(crate) struct Holds {
    /// The holds of reservations that are not in memory have been read from SQLite.
    loaded: bool,
    by_res: HashMap<ResId, (u64, i64)>,
    total: u64,
    by_expiry: BTreeSet<(i64, ResId)>,
}

impl Holds {
    fn put(&mut self, id: &ResId, held: u64, expires_ms: i64) {
        self.remove(id);
        if held > 0 {
            self.by_res.insert(id.clone(), (held, expires_ms));
            self.total += held;
            self.by_expiry.insert((expires_ms, id.clone()));
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some((id, (held, exp))) = self.by_res.remove_entry(id) {
            self.total -= held;
            self.by_expiry.remove(&(exp, id));
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
    subs: ById<Option<Subscription>>,
    memberships: ById<Option<(String, Timestamp)>>,
    aliases: ById<Option<String>>,
    /// Keyed by scope and key.
    idem: ByPair<Option<IdempotencyRow>>,
    meter_names: ById<Option<String>>,
    counters: HashMap<(EnvId, CounterKey), Counted>,
    /// Keyed by limit and subject.
    latest: ByPair<Option<i64>>,
    /// Rolling usage, keyed by limit and subject.
    rolling: ByPair<Rolling>,
    /// Boxed: the map moves its entries when it grows, and a reservation is a few hundred bytes.
    res: HashMap<(EnvId, ResId), Option<Box<Res>>>,
    /// Pending reservations in memory by expiry (ms).
    pending: BTreeSet<(i64, EnvId, ResId)>,
    /// Settled reservations to drop once the projection has applied their last write.
    settled: VecDeque<(u64, EnvId, ResId)>,
    /// The greatest reservation id in the tables, by environment (`None` inside: none), read
    /// on first use: a new id above it and not in memory is free without a read of the tables
    /// (ids start with their creation time, so nearly every new id is above it). What runs on
    /// the tables instead of the engine empties the state, and with it this.
    ceiling: HashMap<EnvId, Option<String>>,
}

impl State {
    /// Drops the settled reservations whose writes are all in SQLite.
    pub(crate) fn evict(&mut self, applied: u64) {
        while let Some((lsn, _, _)) = self.settled.front() {
            if *lsn > applied {
                break;
            }
            let Some((_, env, id)) = self.settled.pop_front() else {
                break;
            };
            let done = matches!(self.res.get(&IdRef(env, &id)), Some(Some(r))
                if r.last_lsn <= applied && r.row.status != ReservationStatus::Pending);
            if done {
                self.res.remove(&IdRef(env, &id));
                // The tables hold it now: a later insert of the same id must read them.
                if let Some(top) = self.ceiling.get_mut(&env) {
                    if top.as_deref() < Some(&*id) {
                        *top = Some(id.to_string());
                    }
                }
            }
        }
    }

    /// Marks the reservations a command wrote with the log position of its record, and queues
    /// the settled ones for eviction once the projection has applied it.
    pub(crate) fn written(&mut self, touched: Vec<(EnvId, ResId)>, lsn: u64) {
        for (env, id) in touched {
            if let Some(Some(r)) = self.res.get_mut(&IdRef(env, &id)) {
                r.last_lsn = lsn;
                if r.row.status != ReservationStatus::Pending {
                    self.settled.push_back((lsn, env, id));
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
    /// Reservations this command wrote (an id may repeat).
    pub touched: Vec<(EnvId, ResId)>,
    /// The first method the engine does not carry, if the command called one.
    pub unsupported: Option<&'static str>,
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

    /// The counter's entry, with `used` read from the tables if `used` and not read yet, and
    /// the holds of reservations not in memory read if `holds` and not read yet.
    fn counted(
        &mut self,
        env: EnvId,
        key: &CounterKey,
        (used, holds): (bool, bool),
    ) -> StoreResult<&mut Counted> {
        let State { counters, res, .. } = &mut *self.st;
        let c = match counters.raw_entry_mut().from_key(&KeyRef::of(env, key)) {
            RawEntryMut::Occupied(e) => e.into_mut(),
            RawEntryMut::Vacant(e) => e.insert((env, key.clone()), Counted::default()).1,
        };
        if used && c.used.is_none() {
            c.used = Some(SqliteTx(self.db).used(env, key)?);
        }
        if holds && !c.holds.loaded {
            for (id, held, exp) in pending_holds(self.db, env, key)? {
                if !res.contains_key(&IdRef(env, &id)) {
                    c.holds.put(&ResId::from(id), held, exp);
                }
            }
            c.holds.loaded = true;
        }
        Ok(c)
    }

    fn used_entry(&mut self, env: EnvId, key: &CounterKey) -> StoreResult<&mut u64> {
        Ok(self.counted(env, key, (true, false))?.used.get_or_insert(0))
    }

    fn holds_of(&mut self, env: EnvId, key: &CounterKey) -> StoreResult<&mut Holds> {
        Ok(&mut self.counted(env, key, (false, true))?.holds)
    }

    fn latest_entry(
        &mut self,
        env: EnvId,
        limit: &str,
        subject: &str,
    ) -> StoreResult<&mut Option<i64>> {
        let db = self.db;
        by_pair(&mut self.st.latest, (env, limit, subject), || {
            SqliteTx(db).latest_window(env, limit, subject)
        })
    }

    fn bump_latest(&mut self, env: EnvId, key: &CounterKey) -> StoreResult<()> {
        let latest = self.latest_entry(env, &key.limit_id, &key.subject)?;
        *latest = Some(latest.map_or(key.window_key, |w| w.max(key.window_key)));
        Ok(())
    }

    /// The reservation, loaded with its holds and credit holds on first use.
    fn res_entry(&mut self, env: EnvId, id: &str) -> StoreResult<Option<&mut Res>> {
        if !self.st.res.contains_key(&IdRef(env, id)) {
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
            let id = ResId::from(id);
            self.st.res.insert((env, id.clone()), loaded);
            if found {
                self.index(env, &id);
            }
        }
        Ok(self
            .st
            .res
            .get_mut(&IdRef(env, id))
            .and_then(|r| r.as_deref_mut()))
    }

    /// The shared id of a reservation in memory.
    fn res_id(&self, env: EnvId, id: &str) -> Option<ResId> {
        self.st
            .res
            .get_key_value(&IdRef(env, id))
            .map(|((_, id), _)| id.clone())
    }

    /// Adds the pending holds of reservation `id`, as memory holds it, to its counters, and the
    /// reservation to the pending set if it is pending.
    fn index(&mut self, env: EnvId, id: &ResId) {
        let State {
            res,
            counters,
            pending,
            ..
        } = &mut *self.st;
        let Some(Some(r)) = res.get(&IdRef(env, id)) else {
            return;
        };
        let exp = ms(r.row.expires_at);
        for h in r.holds.iter().filter(|h| h.held > 0) {
            let c = match counters.raw_entry_mut().from_key(&KeyRef::of(env, &h.key)) {
                RawEntryMut::Occupied(e) => e.into_mut(),
                RawEntryMut::Vacant(e) => e.insert((env, h.key.clone()), Counted::default()).1,
            };
            c.holds.put(id, h.held, exp);
        }
        if r.row.status == ReservationStatus::Pending {
            pending.insert((exp, env, id.clone()));
        }
    }

    /// Takes a reservation's holds off its counters and out of the pending set.
    fn unindex(&mut self, env: EnvId, id: &str) {
        let State {
            res,
            counters,
            pending,
            ..
        } = &mut *self.st;
        let Some(((_, rid), Some(r))) = res.get_key_value(&IdRef(env, id)) else {
            return;
        };
        for h in &r.holds {
            if let Some(c) = counters.get_mut(&KeyRef::of(env, &h.key)) {
                c.holds.remove(id);
            }
        }
        pending.remove(&(ms(r.row.expires_at), env, rid.clone()));
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
        let db = self.db;
        let r = by_pair(&mut self.st.rolling, (env, limit_id, subject), || {
            let mut units = std::collections::BTreeMap::new();
            for (at, n) in rolling_after(db, env, limit_id, subject, after)? {
                *units.entry(at).or_default() += n;
            }
            Ok(Rolling {
                after_ms: after,
                units,
            })
        })?;
        Ok(Some(r).filter(|r| r.after_ms <= after))
    }

    fn touch(&mut self, env: EnvId, id: &str) {
        if let Some(id) = self.res_id(env, id) {
            self.touched.push((env, id));
        }
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
        let db = self.db;
        Ok(by_id(&mut self.st.subs, env, subject, || {
            SqliteTx(db).subscription(env, subject)
        })?
        .clone())
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

    fn used_and_reserved(
        &mut self,
        env: EnvId,
        key: &CounterKey,
        now: Timestamp,
    ) -> StoreResult<(u64, u64)> {
        let c = self.counted(env, key, (true, true))?;
        Ok((c.used.unwrap_or(0), c.holds.reserved(ms(now))))
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
        let loaded = match self.st.rolling.get(&PairRef(env, limit_id, subject)) {
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
        let known = self.st.res.get(&IdRef(env, &r.reservation_id));
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
        let id = ResId::from(r.reservation_id.as_str());
        self.st.res.insert((env, id.clone()), Some(Box::new(res)));
        self.index(env, &id);
        self.touched.push((env, id));
        self.ops.push(Op::InsertReservation {
            env,
            row: Box::new(r.clone()),
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
        let Some(id) = self.res_id(env, reservation_id) else {
            return Err(StoreError::Internal(format!(
                "reservation {reservation_id} left memory while its hold was added"
            )));
        };
        if h.held > 0 {
            self.holds_of(env, &h.key)?.put(&id, h.held, ms(expires_at));
        }
        self.touched.push((env, id));
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
            if let Some(rid) = self.res_id(env, id) {
                self.index(env, &rid);
            }
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
            event: Box::new(Event::from_row(e)),
        });
        Ok(())
    }

    fn idempotency(
        &mut self,
        env: EnvId,
        scope: &str,
        key: &str,
    ) -> StoreResult<Option<IdempotencyRow>> {
        let db = self.db;
        Ok(by_pair(&mut self.st.idem, (env, scope, key), || {
            SqliteTx(db).idempotency(env, scope, key)
        })?
        .clone())
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
        *by_pair(&mut self.st.idem, (env, scope, key), || Ok(None))? = Some(kept);
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
        let db = self.db;
        Ok(by_id(&mut self.st.memberships, env, user_id, || {
            SqliteTx(db).membership(env, user_id)
        })?
        .clone())
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
        let db = self.db;
        Ok(by_id(&mut self.st.aliases, env, anonymous_id, || {
            SqliteTx(db).alias(env, anonymous_id)
        })?
        .clone())
    }

    fn insert_alias(&mut self, _: EnvId, _: &str, _: &str, _: Timestamp) -> StoreResult<()> {
        self.unsupported("aliases")
    }

    fn traits(&mut self, _: EnvId, _: &str) -> StoreResult<Option<String>> {
        self.unsupported("persons")
    }

    fn put_traits(&mut self, _: EnvId, _: &str, _: &str, _: Timestamp) -> StoreResult<()> {
        self.unsupported("persons")
    }

    fn delete_traits(&mut self, _: EnvId, _: &str) -> StoreResult<Option<String>> {
        self.unsupported("persons")
    }

    fn erase_logged_text(&mut self, _: EnvId, _: &str, _: usize) -> StoreResult<LoggedTextCleared> {
        self.unsupported("erasing logged text")
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
        for v in self.st.idem.values_mut() {
            if v.as_ref().is_some_and(|r| r.created_at < before) {
                *v = None;
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
            if !self.st.res.contains_key(&IdRef(env, &id)) {
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
            .map(|(_, env, id)| (*env, id.to_string()))
            .collect();
        for (env, id) in due {
            if out.len() >= limit {
                break;
            }
            if let Some(Some(r)) = self.st.res.get(&IdRef(env, &id)) {
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
            total += match self.st.res.get(&IdRef(env, &id)) {
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
        let res = &self.st.res;
        Ok(ids
            .into_iter()
            .filter(|id| match res.get(&IdRef(env, id)) {
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
        let db = self.db;
        Ok(by_id(&mut self.st.meter_names, env, event, || {
            SqliteTx(db).meter_name(env, event)
        })?
        .clone())
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
    fn token_secret(&mut self, _: EnvId, _: &str, _: Timestamp) -> StoreResult<String> {
        self.unsupported("token secrets")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    /// A borrowed key finds what its owned key inserted only if both hash alike.
    #[test]
    fn borrowed_keys_hash_as_owned_ones() {
        let h = foldhash::fast::RandomState::default();
        let env = EnvId(7);
        let key = CounterKey {
            limit_id: "images".into(),
            subject: "u:ann".into(),
            window_key: 1_700_000_000_000,
        };
        assert_eq!(
            h.hash_one((env, key.clone())),
            h.hash_one(KeyRef::of(env, &key))
        );
        assert_eq!(
            h.hash_one((env, "rsv_1".to_string())),
            h.hash_one(IdRef(env, "rsv_1"))
        );
        assert_eq!(
            h.hash_one((env, ResId::from("rsv_1"))),
            h.hash_one(IdRef(env, "rsv_1"))
        );
        assert_eq!(
            h.hash_one((env, "a".to_string(), "b".to_string())),
            h.hash_one(PairRef(env, "a", "b"))
        );
        // Two strings are not one joined string: ("ab", "") and ("a", "b") differ.
        let mut m: ByPair<u8> = HashMap::default();
        m.insert((env, "ab".into(), String::new()), 1);
        assert!(m.get(&PairRef(env, "a", "b")).is_none());
        assert_eq!(m.get(&PairRef(env, "ab", "")), Some(&1));
    }

    #[test]
    fn holds_share_ids_and_count_unexpired() {
        let mut h = Holds::default();
        let (a, b): (ResId, ResId) = ("a".into(), "b".into());
        h.put(&a, 3, 10);
        h.put(&b, 4, 20);
        assert_eq!(h.reserved(5), 7);
        assert_eq!(h.reserved(10), 4);
        h.put(&a, 5, 30);
        assert_eq!(h.reserved(10), 9);
        h.remove("a");
        assert_eq!((h.total, h.by_res.len(), h.by_expiry.len()), (4, 1, 1));
        h.put(&b, 0, 20);
        assert_eq!((h.total, h.by_res.len(), h.by_expiry.len()), (0, 0, 0));
    }
}
