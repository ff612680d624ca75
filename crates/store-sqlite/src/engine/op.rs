//! What one engine command wrote: a list of [`Op`]s, each one call of a `MeteringTx` write
//! method with its arguments. The list is the command's log record (encoded by [`encode`],
//! read back by [`decode`]) and what the projection applies to the SQL tables ([`apply`]), by
//! calling the same `MeteringTx` method on SQLite that the procedure called on the engine.
//!
//! **Record format, version 1.** A record is the concatenation of its ops. Each op is a tag
//! byte followed by its fields in the order of the variant's declaration: integers are
//! little-endian `u64`/`i64` (8 bytes) or `u32` (4 bytes), booleans one byte, times
//! milliseconds since the epoch as `i64`, strings a `u32` byte length and UTF-8 bytes, an
//! absent option one `0` byte and a present one `1` then the value, enums their stored names
//! as strings, metadata its JSON text. A newer binary keeps decoding every version it ever
//! wrote: a change of layout takes a new version number and a new decoder branch.

use crate::{ms, sql::metadata_json, ts};
use jiff::Timestamp;
use std::collections::BTreeMap;
use tollgate_core::decision::DenyReason;
use tollgate_core::input::{Metadata, StoredText};
use tollgate_core::plan::{Enforcement, LimitKind, Scope};
use tollgate_store::procedure::{
    CounterKey, EventRow, HoldRow, IdempotencyRow, MeteringTx, ReservationRow, WindowKind,
};
use tollgate_store::{EnvId, ReservationStatus, StoreError, StoreResult};

/// The record layout this binary writes.
pub(crate) const RECORD_VERSION: u8 = 1;

/// One write a command made.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    StoreIdempotency {
        env: EnvId,
        scope: String,
        key: String,
        row: IdempotencyRow,
    },
    OpenCounter {
        env: EnvId,
        key: CounterKey,
        end: Option<Timestamp>,
    },
    AddUsed {
        env: EnvId,
        key: CounterKey,
        end: Option<Timestamp>,
        units: u64,
    },
    /// Boxed, as is `InsertEvent`'s event: inline they made every op some 400 bytes, and a
    /// reserve's `Vec<Op>` over 1 KiB, which glibc's malloc serves from its large bins after
    /// consolidating its fast bins.
    InsertReservation {
        env: EnvId,
        row: Box<ReservationRow>,
    },
    InsertHold {
        env: EnvId,
        reservation_id: String,
        hold: HoldRow,
        expires_at: Timestamp,
    },
    FinishReservation {
        env: EnvId,
        id: String,
        status: ReservationStatus,
        final_quantity: Option<u64>,
        overage: Option<u64>,
    },
    CommitLate {
        env: EnvId,
        id: String,
        event_id: String,
        final_quantity: u64,
        overage: u64,
    },
    SetExpiry {
        env: EnvId,
        id: String,
        expires_at: Timestamp,
    },
    InsertEvent {
        env: EnvId,
        event: Box<Event>,
    },
    PurgeIdempotency {
        before: Timestamp,
    },
    AddRolling {
        env: EnvId,
        limit_id: String,
        subject: String,
        at: Timestamp,
        units: u64,
    },
}

/// An owned [`EventRow`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Event {
    pub event_id: String,
    pub occurred_at: Timestamp,
    pub user_id: String,
    pub event: String,
    pub quantity: u64,
    pub metadata: Metadata,
    pub cost_micros: Option<u64>,
    pub status: String,
    pub plan_id: Option<String>,
    pub reservation_id: Option<String>,
    pub reasons: Vec<DenyReason>,
    pub release_reason: Option<String>,
    pub release_error_code: Option<String>,
    pub overage: u64,
    pub credits_used: u64,
    pub prompt: Option<StoredText>,
    pub response: Option<StoredText>,
}

impl Event {
    pub fn from_row(e: &EventRow<'_>) -> Self {
        Self {
            event_id: e.event_id.to_string(),
            occurred_at: e.occurred_at,
            user_id: e.user_id.to_string(),
            event: e.event.to_string(),
            quantity: e.quantity,
            metadata: e.metadata.clone(),
            cost_micros: e.cost_micros,
            status: e.status.to_string(),
            plan_id: e.plan_id.map(str::to_string),
            reservation_id: e.reservation_id.map(str::to_string),
            reasons: e.reasons.to_vec(),
            release_reason: e.release_reason.map(str::to_string),
            release_error_code: e.release_error_code.map(str::to_string),
            overage: e.overage,
            credits_used: e.credits_used,
            prompt: e.prompt.cloned(),
            response: e.response.cloned(),
        }
    }

    fn as_row(&self) -> EventRow<'_> {
        EventRow {
            event_id: &self.event_id,
            occurred_at: self.occurred_at,
            user_id: &self.user_id,
            event: &self.event,
            quantity: self.quantity,
            metadata: &self.metadata,
            cost_micros: self.cost_micros,
            status: &self.status,
            plan_id: self.plan_id.as_deref(),
            reservation_id: self.reservation_id.as_deref(),
            reasons: &self.reasons,
            release_reason: self.release_reason.as_deref(),
            release_error_code: self.release_error_code.as_deref(),
            overage: self.overage,
            credits_used: self.credits_used,
            prompt: self.prompt.as_ref(),
            response: self.response.as_ref(),
        }
    }
}

/// Applies one op to SQLite through the same `MeteringTx` method the procedure called.
pub(crate) fn apply(tx: &mut impl MeteringTx, op: &Op) -> StoreResult<()> {
    match op {
        Op::StoreIdempotency {
            env,
            scope,
            key,
            row,
        } => tx.store_idempotency(*env, scope, key, row),
        Op::OpenCounter { env, key, end } => tx.open_counter(*env, key, *end),
        Op::AddUsed {
            env,
            key,
            end,
            units,
        } => tx.add_used(*env, key, *end, *units),
        Op::InsertReservation { env, row } => tx.insert_reservation(*env, row),
        Op::InsertHold {
            env,
            reservation_id,
            hold,
            expires_at,
        } => tx.insert_hold(*env, reservation_id, hold, *expires_at),
        Op::FinishReservation {
            env,
            id,
            status,
            final_quantity,
            overage,
        } => tx.finish_reservation(*env, id, *status, *final_quantity, *overage),
        Op::CommitLate {
            env,
            id,
            event_id,
            final_quantity,
            overage,
        } => tx.commit_late(*env, id, event_id, *final_quantity, *overage),
        Op::SetExpiry {
            env,
            id,
            expires_at,
        } => tx.set_expiry(*env, id, *expires_at),
        Op::InsertEvent { env, event } => tx.insert_event(*env, &event.as_row()),
        Op::PurgeIdempotency { before } => tx.purge_idempotency(*before),
        Op::AddRolling {
            env,
            limit_id,
            subject,
            at,
            units,
        } => tx.add_rolling(*env, limit_id, subject, *at, *units),
    }
}

// ---- encoding

struct Enc<'a>(&'a mut Vec<u8>);

impl Enc<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn bool(&mut self, v: bool) {
        self.u8(v as u8);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn time(&mut self, t: Timestamp) {
        self.i64(ms(t));
    }
    fn str(&mut self, s: &str) {
        // Every string a command carries is bounded far below 4 GiB (API.md §1).
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn opt<T>(&mut self, v: Option<T>, f: impl FnOnce(&mut Self, T)) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                f(self, v);
            }
        }
    }
    fn env(&mut self, env: EnvId) {
        self.i64(env.0);
    }
    fn key(&mut self, k: &CounterKey) {
        self.str(&k.limit_id);
        self.str(&k.subject);
        self.i64(k.window_key);
    }
    fn text(&mut self, t: Option<&StoredText>) {
        self.opt(t, |e, t| {
            e.str(&t.text);
            e.bool(t.truncated);
        });
    }
}

/// Appends the record of `ops` to `out`.
pub(crate) fn encode(ops: &[Op], out: &mut Vec<u8>) {
    let mut e = Enc(out);
    for op in ops {
        match op {
            Op::StoreIdempotency {
                env,
                scope,
                key,
                row,
            } => {
                e.u8(1);
                e.env(*env);
                e.str(scope);
                e.str(key);
                e.str(&row.fingerprint);
                e.str(&row.response);
                e.time(row.created_at);
            }
            Op::OpenCounter { env, key, end } => {
                e.u8(2);
                e.env(*env);
                e.key(key);
                e.opt(*end, Enc::time);
            }
            Op::AddUsed {
                env,
                key,
                end,
                units,
            } => {
                e.u8(3);
                e.env(*env);
                e.key(key);
                e.opt(*end, Enc::time);
                e.u64(*units);
            }
            Op::InsertReservation { env, row: r } => {
                e.u8(4);
                e.env(*env);
                e.str(&r.reservation_id);
                e.str(&r.user_id);
                e.str(&r.event);
                e.u64(r.quantity);
                e.str(&metadata_json(&r.metadata));
                e.opt(r.plan_id.as_deref(), Enc::str);
                e.str(r.status.as_str());
                e.time(r.created_at);
                e.time(r.expires_at);
                e.str(&r.event_id);
                e.opt(r.final_quantity, Enc::u64);
                e.opt(r.overage, Enc::u64);
                e.text(r.prompt.as_ref());
                e.bool(r.late);
            }
            Op::InsertHold {
                env,
                reservation_id,
                hold: h,
                expires_at,
            } => {
                e.u8(5);
                e.env(*env);
                e.str(reservation_id);
                e.key(&h.key);
                e.opt(h.window_start, Enc::time);
                e.opt(h.window_end, Enc::time);
                e.str(h.window_kind.as_str());
                e.u32(h.window_seconds);
                e.str(h.kind.as_str());
                e.str(h.enforcement.as_str());
                e.str(h.scope.as_str());
                e.u64(h.multiplier);
                e.u64(h.quota);
                e.u64(h.held);
                e.time(*expires_at);
            }
            Op::FinishReservation {
                env,
                id,
                status,
                final_quantity,
                overage,
            } => {
                e.u8(6);
                e.env(*env);
                e.str(id);
                e.str(status.as_str());
                e.opt(*final_quantity, Enc::u64);
                e.opt(*overage, Enc::u64);
            }
            Op::CommitLate {
                env,
                id,
                event_id,
                final_quantity,
                overage,
            } => {
                e.u8(7);
                e.env(*env);
                e.str(id);
                e.str(event_id);
                e.u64(*final_quantity);
                e.u64(*overage);
            }
            Op::SetExpiry {
                env,
                id,
                expires_at,
            } => {
                e.u8(8);
                e.env(*env);
                e.str(id);
                e.time(*expires_at);
            }
            Op::InsertEvent { env, event: v } => {
                e.u8(9);
                e.env(*env);
                e.str(&v.event_id);
                e.time(v.occurred_at);
                e.str(&v.user_id);
                e.str(&v.event);
                e.u64(v.quantity);
                e.str(&metadata_json(&v.metadata));
                e.opt(v.cost_micros, Enc::u64);
                e.str(&v.status);
                e.opt(v.plan_id.as_deref(), Enc::str);
                e.opt(v.reservation_id.as_deref(), Enc::str);
                e.u32(v.reasons.len() as u32);
                for r in &v.reasons {
                    e.str(r.as_str());
                }
                e.opt(v.release_reason.as_deref(), Enc::str);
                e.opt(v.release_error_code.as_deref(), Enc::str);
                e.u64(v.overage);
                e.u64(v.credits_used);
                e.text(v.prompt.as_ref());
                e.text(v.response.as_ref());
            }
            Op::PurgeIdempotency { before } => {
                e.u8(10);
                e.time(*before);
            }
            Op::AddRolling {
                env,
                limit_id,
                subject,
                at,
                units,
            } => {
                e.u8(11);
                e.env(*env);
                e.str(limit_id);
                e.str(subject);
                e.time(*at);
                e.u64(*units);
            }
        }
    }
}

// ---- decoding

struct Dec<'a>(&'a [u8]);

fn bad(what: &str) -> StoreError {
    StoreError::Internal(format!("command log record: {what}"))
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> StoreResult<&'a [u8]> {
        if self.0.len() < n {
            return Err(bad("ends inside a field"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> StoreResult<u8> {
        Ok(self.take(1)?[0])
    }
    fn bool(&mut self) -> StoreResult<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(bad("a boolean is neither 0 nor 1")),
        }
    }
    fn u32(&mut self) -> StoreResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> StoreResult<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn i64(&mut self) -> StoreResult<i64> {
        Ok(self.u64()? as i64)
    }
    fn time(&mut self) -> StoreResult<Timestamp> {
        let v = self.i64()?;
        Timestamp::from_millisecond(v).map_err(|_| bad("a time is out of range"))
    }
    fn str(&mut self) -> StoreResult<String> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| bad("a string is not UTF-8"))
    }
    fn opt<T>(&mut self, f: impl FnOnce(&mut Self) -> StoreResult<T>) -> StoreResult<Option<T>> {
        match self.u8()? {
            0 => Ok(None),
            1 => f(self).map(Some),
            _ => Err(bad("an option tag is neither 0 nor 1")),
        }
    }
    fn env(&mut self) -> StoreResult<EnvId> {
        self.i64().map(EnvId)
    }
    fn key(&mut self) -> StoreResult<CounterKey> {
        Ok(CounterKey {
            limit_id: self.str()?,
            subject: self.str()?,
            window_key: self.i64()?,
        })
    }
    fn text(&mut self) -> StoreResult<Option<StoredText>> {
        self.opt(|d| {
            Ok(StoredText {
                text: d.str()?,
                truncated: d.bool()?,
            })
        })
    }
    fn metadata(&mut self) -> StoreResult<Metadata> {
        let json = self.str()?;
        let map: BTreeMap<String, String> =
            serde_json::from_str(&json).map_err(|_| bad("metadata is not a JSON object"))?;
        Metadata::parse(map).map_err(|_| bad("metadata breaks its limits"))
    }
    fn named<T>(&mut self, parse: impl FnOnce(&str) -> Option<T>, what: &str) -> StoreResult<T> {
        let s = self.str()?;
        parse(&s).ok_or_else(|| bad(&format!("unknown {what} {s:?}")))
    }
}

/// Reads back a record written by [`encode`] in layout `version`.
pub(crate) fn decode(version: u8, bytes: &[u8]) -> StoreResult<Vec<Op>> {
    if version != RECORD_VERSION {
        return Err(bad(&format!(
            "version {version} is newer than this binary reads ({RECORD_VERSION})"
        )));
    }
    let mut d = Dec(bytes);
    let mut ops = Vec::new();
    while !d.0.is_empty() {
        let op = match d.u8()? {
            1 => Op::StoreIdempotency {
                env: d.env()?,
                scope: d.str()?,
                key: d.str()?,
                row: IdempotencyRow {
                    fingerprint: d.str()?,
                    response: d.str()?,
                    created_at: d.time()?,
                },
            },
            2 => Op::OpenCounter {
                env: d.env()?,
                key: d.key()?,
                end: d.opt(Dec::time)?,
            },
            3 => Op::AddUsed {
                env: d.env()?,
                key: d.key()?,
                end: d.opt(Dec::time)?,
                units: d.u64()?,
            },
            4 => Op::InsertReservation {
                env: d.env()?,
                row: Box::new(ReservationRow {
                    reservation_id: d.str()?,
                    user_id: d.str()?,
                    event: d.str()?,
                    quantity: d.u64()?,
                    metadata: d.metadata()?,
                    plan_id: d.opt(Dec::str)?,
                    status: d.named(ReservationStatus::parse, "status")?,
                    created_at: d.time()?,
                    expires_at: d.time()?,
                    event_id: d.str()?,
                    final_quantity: d.opt(Dec::u64)?,
                    overage: d.opt(Dec::u64)?,
                    prompt: d.text()?,
                    late: d.bool()?,
                }),
            },
            5 => Op::InsertHold {
                env: d.env()?,
                reservation_id: d.str()?,
                hold: HoldRow {
                    key: d.key()?,
                    window_start: d.opt(Dec::time)?,
                    window_end: d.opt(Dec::time)?,
                    window_kind: d.named(WindowKind::parse, "window kind")?,
                    window_seconds: d.u32()?,
                    kind: d.named(LimitKind::parse, "limit kind")?,
                    enforcement: d.named(Enforcement::parse, "enforcement")?,
                    scope: d.named(Scope::parse, "scope")?,
                    multiplier: d.u64()?,
                    quota: d.u64()?,
                    held: d.u64()?,
                },
                expires_at: d.time()?,
            },
            6 => Op::FinishReservation {
                env: d.env()?,
                id: d.str()?,
                status: d.named(ReservationStatus::parse, "status")?,
                final_quantity: d.opt(Dec::u64)?,
                overage: d.opt(Dec::u64)?,
            },
            7 => Op::CommitLate {
                env: d.env()?,
                id: d.str()?,
                event_id: d.str()?,
                final_quantity: d.u64()?,
                overage: d.u64()?,
            },
            8 => Op::SetExpiry {
                env: d.env()?,
                id: d.str()?,
                expires_at: d.time()?,
            },
            9 => {
                let env = d.env()?;
                let event_id = d.str()?;
                let occurred_at = d.time()?;
                let user_id = d.str()?;
                let event = d.str()?;
                let quantity = d.u64()?;
                let metadata = d.metadata()?;
                let cost_micros = d.opt(Dec::u64)?;
                let status = d.str()?;
                let plan_id = d.opt(Dec::str)?;
                let reservation_id = d.opt(Dec::str)?;
                let n = d.u32()? as usize;
                let mut reasons = Vec::with_capacity(n.min(8));
                for _ in 0..n {
                    reasons.push(d.named(DenyReason::parse, "deny reason")?);
                }
                Op::InsertEvent {
                    env,
                    event: Box::new(Event {
                        event_id,
                        occurred_at,
                        user_id,
                        event,
                        quantity,
                        metadata,
                        cost_micros,
                        status,
                        plan_id,
                        reservation_id,
                        reasons,
                        release_reason: d.opt(Dec::str)?,
                        release_error_code: d.opt(Dec::str)?,
                        overage: d.u64()?,
                        credits_used: d.u64()?,
                        prompt: d.text()?,
                        response: d.text()?,
                    }),
                }
            }
            10 => Op::PurgeIdempotency { before: d.time()? },
            11 => Op::AddRolling {
                env: d.env()?,
                limit_id: d.str()?,
                subject: d.str()?,
                at: d.time()?,
                units: d.u64()?,
            },
            tag => return Err(bad(&format!("unknown op tag {tag}"))),
        };
        ops.push(op);
    }
    Ok(ops)
}

/// A time as SQLite keeps it (whole milliseconds), so what the engine holds reads back exactly
/// as the projected row will.
pub(crate) fn stored(t: Timestamp) -> Timestamp {
    ts(ms(t))
}
