//! Applies a batch of log records to the tables with fewer writes than one statement per
//! [`Op`], leaving every table exactly as applying the ops one by one ([`super::apply`], the
//! SQL store's own statements) would.
//!
//! Under load a projection batch holds hundreds of commands, and most of their writes touch
//! the same rows again: a counter takes one `add_used` per commit, a reservation made and
//! settled within the batch is inserted pending, then updated, and its holds inserted held,
//! then zeroed (each write also entering and leaving the pending and held partial indexes).
//! [`Projector`] keeps those rows in memory for the batch and writes each once, in its final
//! state, when the batch ends ([`Projector::finish`]):
//!
//! - **Counters** (`counters`, a `WITHOUT ROWID` table, so the order of writes leaves no
//!   trace): one `INSERT OR IGNORE` (only opened) or one upsert adding the batch's units, with
//!   the window end of the batch's first op on the counter, the one whose insert would have
//!   created the row.
//! - **Reservations made in the batch**, with their holds: one insert each, with the status,
//!   result, expiry and `held` the batch's later ops gave them (`units` keeps the hold as made).
//!   They are inserted in the order the batch made them, so their rowids are the ones the ops
//!   would have given (nothing else inserts into these tables; a hold for a reservation the
//!   batch did not make first writes every pending one out, to keep that order).
//! - Everything else (events, idempotency rows, rolling usage, ops on reservations made in an
//!   earlier batch) is written where it stands, as [`super::apply`] does.

use super::op::{apply, Op};
use super::state::HashMap;
use crate::sql::SqliteTx;
use jiff::Timestamp;
use tollgate_store::procedure::{CounterKey, HoldRow, MeteringTx, ReservationRow};
use tollgate_store::{EnvId, ReservationStatus, StoreResult};

/// A counter's writes in the batch.
struct Counter {
    /// The window end of the batch's first op on the counter.
    end: Option<Timestamp>,
    /// Units the batch added (0: only opened).
    units: u64,
}

/// A reservation the batch made, as it stands after the batch's ops.
struct Reservation<'a> {
    env: EnvId,
    row: &'a ReservationRow,
    status: ReservationStatus,
    expires_at: Timestamp,
    event_id: &'a str,
    final_quantity: Option<u64>,
    overage: Option<u64>,
    late: bool,
    holds: Vec<Hold<'a>>,
}

struct Hold<'a> {
    hold: &'a HoldRow,
    held: u64,
    expires_at: Timestamp,
}

/// One batch's writes on their way to the tables (see the module doc).
pub(crate) struct Projector<'a, 'c> {
    tx: SqliteTx<'c>,
    counters: HashMap<(EnvId, &'a CounterKey), Counter>,
    /// Reservations made in the batch, in the order it made them, and where each is by id.
    reservations: Vec<Reservation<'a>>,
    made: HashMap<(EnvId, &'a str), usize>,
}

impl<'a, 'c> Projector<'a, 'c> {
    pub(crate) fn new(tx: SqliteTx<'c>) -> Self {
        Self {
            tx,
            counters: HashMap::default(),
            reservations: Vec::new(),
            made: HashMap::default(),
        }
    }

    /// Takes one op of the batch: kept to be written at [`Self::finish`], or written now.
    pub(crate) fn op(&mut self, op: &'a Op) -> StoreResult<()> {
        match op {
            Op::OpenCounter { env, key, end } => {
                self.counters.entry((*env, key)).or_insert(Counter {
                    end: *end,
                    units: 0,
                });
                Ok(())
            }
            Op::AddUsed {
                env,
                key,
                end,
                units,
            } => {
                let c = self.counters.entry((*env, key)).or_insert(Counter {
                    end: *end,
                    units: 0,
                });
                c.units = c.units.wrapping_add(*units);
                Ok(())
            }
            Op::InsertReservation { env, row } => {
                if self.made.contains_key(&(*env, row.reservation_id.as_str())) {
                    // Made twice: let the tables refuse it as they would.
                    self.write_reservations()?;
                    return apply(&mut self.tx, op);
                }
                self.made
                    .insert((*env, &row.reservation_id), self.reservations.len());
                // As `insert_reservation` stores it: no result yet, not late.
                self.reservations.push(Reservation {
                    env: *env,
                    row,
                    status: row.status,
                    expires_at: row.expires_at,
                    event_id: &row.event_id,
                    final_quantity: None,
                    overage: None,
                    late: false,
                    holds: Vec::new(),
                });
                Ok(())
            }
            Op::InsertHold {
                env,
                reservation_id,
                hold,
                expires_at,
            } => match self.made_mut(*env, reservation_id) {
                Some(r) => {
                    r.holds.push(Hold {
                        hold,
                        held: hold.held,
                        expires_at: *expires_at,
                    });
                    Ok(())
                }
                None => {
                    self.write_reservations()?;
                    apply(&mut self.tx, op)
                }
            },
            Op::FinishReservation {
                env,
                id,
                status,
                final_quantity,
                overage,
            } => match self.made_mut(*env, id) {
                Some(r) => {
                    for h in &mut r.holds {
                        h.held = 0;
                    }
                    r.status = *status;
                    r.final_quantity = *final_quantity;
                    r.overage = *overage;
                    Ok(())
                }
                None => apply(&mut self.tx, op),
            },
            Op::CommitLate {
                env,
                id,
                event_id,
                final_quantity,
                overage,
            } => match self.made_mut(*env, id) {
                Some(r) => {
                    r.status = ReservationStatus::Committed;
                    r.late = true;
                    r.event_id = event_id;
                    r.final_quantity = Some(*final_quantity);
                    r.overage = Some(*overage);
                    Ok(())
                }
                None => apply(&mut self.tx, op),
            },
            Op::SetExpiry {
                env,
                id,
                expires_at,
            } => match self.made_mut(*env, id) {
                Some(r) => {
                    r.expires_at = *expires_at;
                    for h in &mut r.holds {
                        h.expires_at = *expires_at;
                    }
                    Ok(())
                }
                None => apply(&mut self.tx, op),
            },
            Op::StoreIdempotency { .. }
            | Op::InsertEvent { .. }
            | Op::PurgeIdempotency { .. }
            | Op::AddRolling { .. } => apply(&mut self.tx, op),
        }
    }

    fn made_mut(&mut self, env: EnvId, id: &str) -> Option<&mut Reservation<'a>> {
        let i = *self.made.get(&(env, id))?;
        Some(&mut self.reservations[i])
    }

    /// Writes the reservations made so far, in the order they were made.
    fn write_reservations(&mut self) -> StoreResult<()> {
        for r in self.reservations.drain(..) {
            self.tx.insert_reservation_as(
                r.env,
                r.row,
                (r.status, r.expires_at, r.event_id),
                (r.final_quantity, r.overage, r.late),
            )?;
            for h in &r.holds {
                self.tx.insert_hold_as(
                    r.env,
                    &r.row.reservation_id,
                    h.hold,
                    h.held,
                    h.expires_at,
                )?;
            }
        }
        self.made.clear();
        Ok(())
    }

    /// Writes what the batch kept back.
    pub(crate) fn finish(mut self) -> StoreResult<()> {
        self.write_reservations()?;
        for ((env, key), c) in std::mem::take(&mut self.counters) {
            match c.units {
                0 => self.tx.open_counter(env, key, c.end)?,
                units => self.tx.add_used(env, key, c.end, units)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::op::Event;
    use rusqlite::Connection;
    use tollgate_core::input::Metadata;
    use tollgate_core::plan::{Enforcement, LimitKind, Scope};
    use tollgate_store::procedure::{IdempotencyRow, WindowKind};

    const ENV: EnvId = EnvId(7);

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_780_000_000 + s).expect("in range")
    }

    fn key(limit: &str, window_key: i64) -> CounterKey {
        CounterKey {
            limit_id: limit.into(),
            subject: "u:alice".into(),
            window_key,
        }
    }

    fn reserve(id: &str, limits: &[&str], ttl: i64) -> Vec<Op> {
        let mut ops = vec![Op::InsertReservation {
            env: ENV,
            row: Box::new(ReservationRow {
                reservation_id: id.into(),
                user_id: "alice".into(),
                event: "image.render".into(),
                quantity: 3,
                metadata: Metadata::default(),
                plan_id: Some("free".into()),
                status: ReservationStatus::Pending,
                created_at: at(0),
                expires_at: at(ttl),
                event_id: format!("evt_{id}"),
                // Not stored by an insert: the projection must not store them either.
                final_quantity: Some(99),
                overage: Some(98),
                prompt: None,
                late: true,
            }),
        }];
        for (i, limit) in limits.iter().enumerate() {
            ops.push(Op::InsertHold {
                env: ENV,
                reservation_id: id.into(),
                hold: HoldRow {
                    key: key(limit, 0),
                    window_start: None,
                    window_end: Some(at(86_400)),
                    window_kind: WindowKind::Calendar,
                    window_seconds: 86_400,
                    kind: LimitKind::Consumable,
                    enforcement: Enforcement::Hard,
                    scope: Scope::User,
                    multiplier: 1,
                    quota: 100,
                    held: 3 + i as u64,
                },
                expires_at: at(ttl),
            });
            ops.push(Op::OpenCounter {
                env: ENV,
                key: key(limit, 0),
                end: Some(at(86_400 + i as i64)),
            });
        }
        ops
    }

    fn finish(id: &str, status: ReservationStatus) -> Op {
        Op::FinishReservation {
            env: ENV,
            id: id.into(),
            status,
            final_quantity: Some(2),
            overage: Some(0),
        }
    }

    fn add(limit: &str, window_key: i64, units: u64) -> Op {
        Op::AddUsed {
            env: ENV,
            key: key(limit, window_key),
            end: Some(at(window_key + 3)),
            units,
        }
    }

    fn event(id: &str) -> Op {
        Op::InsertEvent {
            env: ENV,
            event: Box::new(Event {
                event_id: id.into(),
                occurred_at: at(1),
                user_id: "alice".into(),
                event: "image.render".into(),
                quantity: 2,
                metadata: Metadata::default(),
                cost_micros: None,
                status: "committed".into(),
                plan_id: Some("free".into()),
                reservation_id: None,
                reasons: Vec::new(),
                release_reason: None,
                release_error_code: None,
                overage: 0,
                credits_used: 0,
                prompt: None,
                response: None,
            }),
        }
    }

    fn idempotency(k: &str, created: i64) -> Op {
        Op::StoreIdempotency {
            env: ENV,
            scope: "reserve".into(),
            key: k.into(),
            row: IdempotencyRow {
                fingerprint: "f".into(),
                response: format!("r{created}"),
                created_at: at(created),
            },
        }
    }

    fn db() -> Connection {
        let mut c = Connection::open_in_memory().expect("an in-memory database");
        crate::schema::migrate(&mut c).expect("migrations");
        c
    }

    /// Every projected table, rows with their rowids where the table has them.
    fn dump(c: &Connection) -> Vec<String> {
        let mut out = Vec::new();
        for (table, order) in [
            ("reservations", "rowid"),
            ("reservation_limits", "rowid"),
            ("counters", "env_id, limit_id, subject, window_key"),
            ("rolling_usage", "rowid"),
            ("events", "rowid"),
            ("idempotency", "env_id, scope, key"),
        ] {
            let rowid = match table {
                "counters" => "0",
                _ => "rowid",
            };
            let mut s = c
                .prepare(&format!("SELECT {rowid}, * FROM {table} ORDER BY {order}"))
                .expect("a select");
            let n = s.column_count();
            let rows = s
                .query_map([], |r| {
                    let mut line = table.to_string();
                    for i in 0..n {
                        let v: rusqlite::types::Value = r.get(i)?;
                        line.push_str(&format!(" {v:?}"));
                    }
                    Ok(line)
                })
                .expect("rows");
            out.extend(rows.map(|r| r.expect("a row")));
        }
        out
    }

    /// Applies each batch op by op to one database and through a `Projector` to another, and
    /// compares every projected row.
    fn same_as_op_by_op(batches: &[Vec<Op>]) {
        let (one, many) = (db(), db());
        for batch in batches {
            let mut tx = SqliteTx(&one);
            for op in batch {
                apply(&mut tx, op).expect("apply");
            }
            let mut p = Projector::new(SqliteTx(&many));
            for op in batch {
                p.op(op).expect("op");
            }
            p.finish().expect("finish");
        }
        let (a, b) = (dump(&one), dump(&many));
        assert!(!a.is_empty());
        assert_eq!(a, b);
    }

    #[test]
    fn a_coalesced_batch_leaves_the_tables_as_op_by_op() {
        let mut first = Vec::new();
        first.extend(reserve("rsv_old", &["a", "b"], 60));
        first.extend(reserve("rsv_gone", &["a"], 60));
        first.push(add("a", 0, 5));
        first.push(idempotency("k1", 0));

        let mut second = Vec::new();
        // Made and committed in the batch.
        second.extend(reserve("rsv_1", &["a", "b"], 60));
        second.push(add("a", 0, 2));
        second.push(add("b", 0, 2));
        second.push(finish("rsv_1", ReservationStatus::Committed));
        second.push(event("evt_rsv_1"));
        // Made in an earlier batch, settled in this one, between reservations this one makes.
        second.push(finish("rsv_old", ReservationStatus::Released));
        second.push(Op::SetExpiry {
            env: ENV,
            id: "rsv_gone".into(),
            expires_at: at(500),
        });
        // Made, extended, committed late.
        second.extend(reserve("rsv_2", &["b"], 30));
        second.push(Op::SetExpiry {
            env: ENV,
            id: "rsv_2".into(),
            expires_at: at(90),
        });
        second.push(finish("rsv_2", ReservationStatus::Expired));
        second.push(Op::CommitLate {
            env: ENV,
            id: "rsv_2".into(),
            event_id: "evt_late".into(),
            final_quantity: 4,
            overage: 1,
        });
        // Made and left pending.
        second.extend(reserve("rsv_3", &["a", "c"], 60));
        // Counters: a new window opened then added to twice, units 0, an existing counter.
        second.push(Op::OpenCounter {
            env: ENV,
            key: key("d", 10),
            end: None,
        });
        second.push(add("d", 10, 4));
        second.push(add("d", 10, 0));
        second.push(add("e", 20, 0));
        second.push(add("a", 0, 1));
        second.push(Op::AddRolling {
            env: ENV,
            limit_id: "r".into(),
            subject: "u:alice".into(),
            at: at(3),
            units: 2,
        });
        second.push(idempotency("k2", 5));
        second.push(Op::PurgeIdempotency { before: at(1) });
        second.push(idempotency("k2", 6));
        second.push(event("evt_2"));

        // A hold for a reservation the batch did not make (no procedure writes one, yet the
        // projection must keep the rowids' order for it too).
        let mut third = reserve("rsv_4", &["a"], 60);
        third.extend(reserve("rsv_old", &["z"], 60).into_iter().skip(1));
        third.extend(reserve("rsv_5", &["a"], 60));

        same_as_op_by_op(&[first, second, third]);
    }
}
