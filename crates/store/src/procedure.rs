//! The metering procedures, written once for every backend: reserve, commit, release, extend,
//! expire, track, check, usage and the subscription writes.
//!
//! A procedure runs inside one transaction of a backend, seen through [`MeteringTx`]: small
//! typed reads and writes, each one SQL statement in the adapter. The procedure loads the
//! counters an event touches, asks `tollgate-core` to decide, and writes what was decided.
//! `reserved` is never stored: it is the sum of the holds of pending reservations unexpired at
//! `now`, so an expired reservation never holds quota, swept or not.
//!
//! Concurrency: a procedure first calls [`MeteringTx::lock_subjects`] for every subject it will
//! read or write, sorted, before reading any counter. A single-writer backend may make that a
//! no-op; a backend with concurrent writers (several nodes) takes row locks there, and because
//! every procedure locks subjects first and in one global order, none can deadlock another.

pub mod credits;

use crate::*;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use tollgate_core::decision::{
    self, sum_in_range, CounterState, DenyReason, LimitCheck, OutOfRange, SettleInput,
};
use tollgate_core::input::{EventName, IDEMPOTENCY_RETENTION_SECONDS, QUANTITY_MAX};
use tollgate_core::plan::{Limit, UnmatchedEvents, WindowSpec};
use tollgate_core::subscription::{self, Resolved};

/// A subscriber's time zone as stored: its IANA name.
pub fn zone_name(tz: Option<&TimeZone>) -> Option<&str> {
    tz.and_then(TimeZone::iana_name)
}

/// A stored time zone name back as a zone. A name this build's time zone database no longer
/// knows (zones are renamed, rarely removed) reads as none, so the limits' own zones apply.
pub fn stored_zone(name: Option<&str>) -> Option<TimeZone> {
    name.and_then(|n| TimeZone::get(n).ok())
}

/// The counter key of a user's own limits.
pub fn user_subject(user_id: &str) -> String {
    format!("u:{user_id}")
}

/// The counter key of an account's pooled limits and of its subscription (`w:` for
/// workspace, apart from every user's `u:`).
pub fn account_subject(account_id: &str) -> String {
    format!("w:{account_id}")
}

/// The subjects a user's limits count on: their own, and their account's for `scope:
/// account` limits (their own when they belong to no account).
#[derive(Debug, Clone)]
struct Subjects {
    user: String,
    account: Option<String>,
}

impl Subjects {
    fn alone(user: &str) -> Self {
        Subjects {
            user: user.to_string(),
            account: None,
        }
    }

    fn of(&self, scope: Scope) -> &str {
        match (scope, &self.account) {
            (Scope::Account, Some(account)) => account,
            _ => &self.user,
        }
    }
}

/// What applies to a user now: the subjects their limits count on, and the subscription whose
/// plan is in force. That is their own if active, else their account's if active, else their
/// own ended one (it still carries their time zone), or none.
#[derive(Debug, Clone)]
struct Standing {
    subjects: Subjects,
    sub: Option<Subscription>,
    /// `sub` is the account's, not the user's own.
    from_account: bool,
}

/// The subjects of a user, reading which account they belong to.
fn subjects_of(tx: &mut impl MeteringTx, env: EnvId, user_id: &str) -> StoreResult<Subjects> {
    let account = tx.membership(env, user_id)?;
    Ok(Subjects {
        user: user_subject(user_id),
        account: account.map(|(a, _)| account_subject(&a)),
    })
}

/// The standing of a user whose subjects are known (and locked, for a write).
fn standing(
    tx: &mut impl MeteringTx,
    env: EnvId,
    subjects: Subjects,
    now: Timestamp,
) -> StoreResult<Standing> {
    let own = tx.subscription(env, &subjects.user)?;
    if own.as_ref().is_some_and(|s| s.is_active(now)) {
        return Ok(Standing {
            subjects,
            sub: own,
            from_account: false,
        });
    }
    if let Some(account) = &subjects.account {
        let theirs = tx.subscription(env, account)?;
        if theirs.as_ref().is_some_and(|s| s.is_active(now)) {
            return Ok(Standing {
                subjects,
                sub: theirs,
                from_account: true,
            });
        }
    }
    Ok(Standing {
        subjects,
        sub: own,
        from_account: false,
    })
}

/// One counter: a limit, a subject, a window (by its start; 0 for lifetime, concurrency and
/// rolling limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterKey {
    pub limit_id: String,
    pub subject: String,
    pub window_key: i64,
}

/// How a hold's window is counted, as stored with the hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    Calendar,
    Subscription,
    Rolling,
    FirstUse,
    Lifetime,
}

impl WindowKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Calendar => "calendar",
            Self::Subscription => "subscription",
            Self::Rolling => "rolling",
            Self::FirstUse => "first_use",
            Self::Lifetime => "lifetime",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Calendar,
            Self::Subscription,
            Self::Rolling,
            Self::FirstUse,
            Self::Lifetime,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// What a reservation holds on one limit, stored so that commit, release and expiry settle
/// exactly what reserve decided even if the plan document changed in between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRow {
    pub key: CounterKey,
    pub window_start: Option<Timestamp>,
    pub window_end: Option<Timestamp>,
    pub window_kind: WindowKind,
    pub window_seconds: u32,
    pub kind: LimitKind,
    pub enforcement: Enforcement,
    pub scope: Scope,
    pub multiplier: u64,
    pub quota: u64,
    /// Units held now (0 once the reservation ended).
    pub held: u64,
}

/// A stored reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationRow {
    pub reservation_id: String,
    pub user_id: String,
    pub event: String,
    pub quantity: u64,
    pub metadata: Metadata,
    pub plan_id: Option<String>,
    pub status: ReservationStatus,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub event_id: String,
    pub final_quantity: Option<u64>,
    pub overage: Option<u64>,
    pub prompt: Option<StoredText>,
    /// Committed after it expired (`ifExpired: record`); its `event_id` is then the late
    /// commit's usage event, not the expiry's.
    pub late: bool,
}

/// One usage event row (committed, released, expired, tracked, denied).
#[derive(Debug, Clone)]
pub struct EventRow<'a> {
    pub event_id: &'a str,
    pub occurred_at: Timestamp,
    pub user_id: &'a str,
    pub event: &'a str,
    pub quantity: u64,
    pub metadata: &'a Metadata,
    pub cost_micros: Option<u64>,
    pub status: &'a str,
    pub plan_id: Option<&'a str>,
    pub reservation_id: Option<&'a str>,
    pub reasons: &'a [DenyReason],
    /// Why a release happened, as the client said (`reason`, `errorCode`).
    pub release_reason: Option<&'a str>,
    pub release_error_code: Option<&'a str>,
    pub overage: u64,
    /// Units of `quantity` paid for with credits.
    pub credits_used: u64,
    pub prompt: Option<&'a StoredText>,
    pub response: Option<&'a StoredText>,
}

/// A stored idempotency record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRow {
    pub fingerprint: String,
    pub response: String,
    pub created_at: Timestamp,
}

/// The reads and writes a procedure needs from one backend transaction. Each method is one
/// statement in the adapter; none decides anything.
pub trait MeteringTx {
    /// Serializes concurrent writers on these subjects (sorted, deduplicated) until the
    /// transaction ends. A single-writer backend may do nothing.
    fn lock_subjects(&mut self, env: EnvId, subjects: &[&str]) -> StoreResult<()>;
    /// True if no other transaction can write while this one runs, so a row read before
    /// `lock_subjects` needs no second read after it.
    fn single_writer(&self) -> bool {
        false
    }

    fn subscription(&mut self, env: EnvId, subject: &str) -> StoreResult<Option<Subscription>>;
    fn write_subscription(
        &mut self,
        env: EnvId,
        subject: &str,
        s: &Subscription,
    ) -> StoreResult<()>;
    fn append_history(&mut self, env: EnvId, subject: &str, h: &HistoryEntry) -> StoreResult<()>;

    /// The start of the newest window of a limit for a subject (first_use windows).
    fn latest_window(
        &mut self,
        env: EnvId,
        limit_id: &str,
        subject: &str,
    ) -> StoreResult<Option<i64>>;
    /// Units held on a counter by holds unexpired at `now`.
    fn reserved(&mut self, env: EnvId, key: &CounterKey, now: Timestamp) -> StoreResult<u64>;
    /// `used` of a fixed-window counter (0 if it has none yet).
    fn used(&mut self, env: EnvId, key: &CounterKey) -> StoreResult<u64>;
    /// `used` and `reserved` of a fixed-window counter together; a backend may read both in
    /// one statement (one per limit on every reserve, the hot path's most repeated read).
    fn used_and_reserved(
        &mut self,
        env: EnvId,
        key: &CounterKey,
        now: Timestamp,
    ) -> StoreResult<(u64, u64)> {
        Ok((self.used(env, key)?, self.reserved(env, key, now)?))
    }
    /// Rolling usage with time in `(after, until]`, and the oldest such time.
    fn rolling_used(
        &mut self,
        env: EnvId,
        limit_id: &str,
        subject: &str,
        after: Timestamp,
        until: Timestamp,
    ) -> StoreResult<(u64, Option<Timestamp>)>;
    /// Creates a counter with `used` 0 if it does not exist (opens a first_use window).
    fn open_counter(
        &mut self,
        env: EnvId,
        key: &CounterKey,
        end: Option<Timestamp>,
    ) -> StoreResult<()>;
    fn add_used(
        &mut self,
        env: EnvId,
        key: &CounterKey,
        end: Option<Timestamp>,
        units: u64,
    ) -> StoreResult<()>;
    fn add_rolling(
        &mut self,
        env: EnvId,
        limit_id: &str,
        subject: &str,
        at: Timestamp,
        units: u64,
    ) -> StoreResult<()>;

    /// `AlreadyExists` if the id is taken.
    fn insert_reservation(&mut self, env: EnvId, r: &ReservationRow) -> StoreResult<()>;
    fn insert_hold(
        &mut self,
        env: EnvId,
        reservation_id: &str,
        h: &HoldRow,
        expires_at: Timestamp,
    ) -> StoreResult<()>;
    fn reservation(&mut self, env: EnvId, id: &str) -> StoreResult<Option<ReservationRow>>;
    /// A reservation's holds, in the order they were placed.
    fn holds(&mut self, env: EnvId, reservation_id: &str) -> StoreResult<Vec<HoldRow>>;
    /// Ends every hold of a reservation and sets its status.
    fn finish_reservation(
        &mut self,
        env: EnvId,
        id: &str,
        status: ReservationStatus,
        final_quantity: Option<u64>,
        overage: Option<u64>,
    ) -> StoreResult<()>;
    /// Records the late commit of an expired reservation: status committed, flagged late,
    /// `event_id` (a new usage event: the reservation's own went to its expiry) and the final
    /// quantity and overage. Its holds ended at the expiry.
    fn commit_late(
        &mut self,
        env: EnvId,
        id: &str,
        event_id: &str,
        final_quantity: u64,
        overage: u64,
    ) -> StoreResult<()>;
    /// Moves a reservation's and its holds' expiry.
    fn set_expiry(&mut self, env: EnvId, id: &str, expires_at: Timestamp) -> StoreResult<()>;
    /// Moves every hold on counter `from` to counter `to` (the same limit and subject, another
    /// window), with that window's bounds: a subscription write that moves a subject to new
    /// windows takes its pending reservations along, so they still show in `reserved` there
    /// and settle there.
    fn move_holds(
        &mut self,
        env: EnvId,
        from: &CounterKey,
        to: &CounterKey,
        window: (Option<Timestamp>, Option<Timestamp>),
    ) -> StoreResult<()>;
    fn insert_event(&mut self, env: EnvId, e: &EventRow<'_>) -> StoreResult<()>;

    fn idempotency(
        &mut self,
        env: EnvId,
        scope: &str,
        key: &str,
    ) -> StoreResult<Option<IdempotencyRow>>;
    fn store_idempotency(
        &mut self,
        env: EnvId,
        scope: &str,
        key: &str,
        row: &IdempotencyRow,
    ) -> StoreResult<()>;
    /// The account a user belongs to, and since when.
    fn membership(&mut self, env: EnvId, user_id: &str)
        -> StoreResult<Option<(String, Timestamp)>>;
    /// The members of an account, sorted by user id.
    fn members(&mut self, env: EnvId, account_id: &str) -> StoreResult<Vec<Member>>;
    /// Makes the user a member of the account (leaving any other) from `at`.
    fn put_member(
        &mut self,
        env: EnvId,
        account_id: &str,
        user_id: &str,
        at: Timestamp,
    ) -> StoreResult<()>;
    /// Removes the user from the account; false if they were not a member of it.
    fn delete_member(&mut self, env: EnvId, account_id: &str, user_id: &str) -> StoreResult<bool>;
    /// The user an anonymous id stands for, if it was identified (`POST /v1/identify`).
    fn alias(&mut self, env: EnvId, anonymous_id: &str) -> StoreResult<Option<String>>;
    /// Records that `anonymous_id` stands for `user_id` from now on, and re-points every alias
    /// that stood for `anonymous_id` itself (so an alias is never a chain).
    fn insert_alias(
        &mut self,
        env: EnvId,
        anonymous_id: &str,
        user_id: &str,
        at: Timestamp,
    ) -> StoreResult<()>;
    /// Moves one limit's usage from subject `from` to subject `to`: its counters are added to
    /// `to`'s of the same windows (then deleted), its rolling usage and its pending holds
    /// change subject.
    fn merge_limit(&mut self, env: EnvId, limit_id: &str, from: &str, to: &str) -> StoreResult<()>;
    /// What [`merge_limit`](Self::merge_limit) would make of one limit's fixed windows: the
    /// largest `used` plus holds unexpired at `now` that any window would count once `from`'s
    /// counters and holds are added to `to`'s (0 if neither has any).
    fn merged_peak(
        &mut self,
        env: EnvId,
        limit_id: &str,
        subjects: (&str, &str),
        now: Timestamp,
    ) -> StoreResult<u64>;
    /// Moves the usage events and pending reservations of user `from` to user `to`; each moved
    /// event keeps `from` as its anonymous id. Returns how many events moved.
    fn reattribute(&mut self, env: EnvId, from: &str, to: &str) -> StoreResult<u64>;
    /// Forgets idempotency records created before `before`.
    fn purge_idempotency(&mut self, before: Timestamp) -> StoreResult<()>;
    /// Pending reservations due at `real_now` (each environment by its own clock), at most
    /// `limit`, as (environment, reservation id, user id).
    fn due_reservations(
        &mut self,
        real_now: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<(EnvId, String, String)>>;

    // ---- credits (see `credits`): grants never change; balances are ledger entries.
    /// `AlreadyExists` if the id is taken.
    fn insert_grant(&mut self, env: EnvId, g: &GrantRow) -> StoreResult<()>;
    fn grant(&mut self, env: EnvId, grant_id: &str) -> StoreResult<Option<GrantRow>>;
    /// The grants made with a reference, oldest first.
    fn grants_by_ref(&mut self, env: EnvId, external_ref: &str) -> StoreResult<Vec<GrantRow>>;
    /// The grants of these subjects with something left (`remaining > 0`), with their balances.
    fn live_grants(&mut self, env: EnvId, subjects: &[&str]) -> StoreResult<Vec<Grant>>;
    /// A grant's balance: the after-values of its newest ledger entry.
    fn balance(&mut self, env: EnvId, grant_id: &str) -> StoreResult<Balance>;
    /// Appends one entry (its `seq` is given by the store).
    fn append_ledger(&mut self, env: EnvId, e: &LedgerEntry) -> StoreResult<()>;
    /// Records that reservation `(id, user)` holds units of a grant.
    fn insert_credit_hold(
        &mut self,
        env: EnvId,
        reservation: (&str, &str),
        h: &CreditHold,
    ) -> StoreResult<()>;
    /// The grants a reservation drew on, in the order drawn, active or not.
    fn credit_holds(&mut self, env: EnvId, reservation_id: &str) -> StoreResult<Vec<CreditHold>>;
    /// Marks every credit hold of a reservation ended.
    fn end_credit_holds(&mut self, env: EnvId, reservation_id: &str) -> StoreResult<()>;
    /// Units of a grant held by pending reservations whose expiry is at or before `now`
    /// (expired, not yet swept).
    fn overdue_held(&mut self, env: EnvId, grant_id: &str, now: Timestamp) -> StoreResult<u64>;
    /// A user's pending reservations past their expiry at `now` that hold credits.
    fn overdue_credit_reservations(
        &mut self,
        env: EnvId,
        user_id: &str,
        now: Timestamp,
    ) -> StoreResult<Vec<String>>;
    /// Credits a committed reservation used: its burns less its refunds.
    fn credits_used_by(&mut self, env: EnvId, reservation_id: &str) -> StoreResult<u64>;
    fn revoke_mark(&mut self, env: EnvId, grant_id: &str, at: Timestamp) -> StoreResult<()>;
    fn is_revoked(&mut self, env: EnvId, grant_id: &str) -> StoreResult<bool>;
    /// Ledger entries newest first with `seq < before`: those of grants owned by `subject`,
    /// and, with `user`, those that user's requests made.
    fn ledger_page(
        &mut self,
        env: EnvId,
        owner: (&str, Option<&str>),
        limit: usize,
        before: Option<i64>,
    ) -> StoreResult<Vec<LedgerEntry>>;
    /// Grants past their expiry at `real_now` (each environment by its own clock) whose
    /// ledger still has unheld units, at most `limit`, as (environment, grant id, subject).
    fn expired_grants(
        &mut self,
        real_now: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<(EnvId, String, String)>>;
    /// Whether a counter's window was rolled over already.
    fn rolled_over(&mut self, env: EnvId, key: &CounterKey) -> StoreResult<bool>;
    /// Records that a counter's window rolled over (into `grant_id`, if it made a grant).
    fn mark_rollover(
        &mut self,
        env: EnvId,
        key: &CounterKey,
        grant_id: Option<&str>,
    ) -> StoreResult<()>;
}

/// A reservation's draw on one grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditHold {
    pub grant_id: String,
    /// The grant's owner, locked with the reservation's subjects.
    pub subject: String,
    pub units: u64,
    /// Still held (the reservation is pending).
    pub active: bool,
}

fn secs(n: i64) -> SignedDuration {
    SignedDuration::from_secs(n)
}

fn overflow(e: jiff::Error) -> StoreError {
    StoreError::Internal(format!("time out of range: {e}"))
}

/// Where a counter's usage lives.
#[derive(Debug, Clone)]
enum CounterWindow {
    Fixed {
        start: Timestamp,
        end: Option<Timestamp>,
        /// A first_use window that this use would open (nothing counted in it yet).
        opening: bool,
    },
    Rolling {
        seconds: u32,
    },
}

/// One limit's counter for one subject, with what it takes to render it.
#[derive(Debug, Clone)]
struct Counter {
    key: CounterKey,
    label: String,
    unit: String,
    kind: LimitKind,
    enforcement: Enforcement,
    scope: Scope,
    multiplier: u64,
    quota: u64,
    window_kind: WindowKind,
    window_seconds: u32,
    window: CounterWindow,
}

impl Counter {
    fn hold_row(&self, units: u64) -> HoldRow {
        let (start, end) = match &self.window {
            CounterWindow::Fixed { start, end, .. } => (Some(*start), *end),
            CounterWindow::Rolling { .. } => (None, None),
        };
        HoldRow {
            key: self.key.clone(),
            window_start: start,
            window_end: end,
            window_kind: self.window_kind,
            window_seconds: self.window_seconds,
            kind: self.kind,
            enforcement: self.enforcement,
            scope: self.scope,
            multiplier: self.multiplier,
            quota: self.quota,
            held: units,
        }
    }

    /// Rebuilds a held counter; label and unit come from the plan document while it still has
    /// the limit.
    fn from_hold(h: &HoldRow, plans: &PlanDocument) -> Counter {
        let def = plans
            .plans
            .iter()
            .flat_map(|p| &p.limits)
            .find(|l| l.id == h.key.limit_id);
        let window = match h.window_kind {
            WindowKind::Rolling => CounterWindow::Rolling {
                seconds: h.window_seconds,
            },
            _ => CounterWindow::Fixed {
                start: h.window_start.unwrap_or(Timestamp::UNIX_EPOCH),
                end: h.window_end,
                opening: false,
            },
        };
        Counter {
            key: h.key.clone(),
            label: def.map_or_else(|| h.key.limit_id.clone(), |l| l.label.clone()),
            unit: def.map_or_else(|| "count".to_string(), |l| l.unit.clone()),
            kind: h.kind,
            enforcement: h.enforcement,
            scope: h.scope,
            multiplier: h.multiplier,
            quota: h.quota,
            window_kind: h.window_kind,
            window_seconds: h.window_seconds,
            window,
        }
    }

    /// The counter as shown once this use has opened its window.
    fn opened(&self) -> Counter {
        let mut c = self.clone();
        if let CounterWindow::Fixed { opening, .. } = &mut c.window {
            *opening = false;
        }
        c
    }
}

/// The counter of `limit` for `subject` at instant `at`.
fn counter_for(
    tx: &mut impl MeteringTx,
    env: EnvId,
    limit: &Limit,
    resolved: Resolved<'_>,
    subjects: &Subjects,
    at: Timestamp,
) -> StoreResult<Counter> {
    let subject = subjects.of(limit.scope);
    let (window_kind, window_seconds) = match &limit.window {
        WindowSpec::Calendar { .. } => (WindowKind::Calendar, 0),
        WindowSpec::Subscription => (WindowKind::Subscription, 0),
        WindowSpec::Rolling { seconds } => (WindowKind::Rolling, *seconds),
        WindowSpec::FirstUse { seconds } => (WindowKind::FirstUse, *seconds),
        WindowSpec::Lifetime => (WindowKind::Lifetime, 0),
    };
    let quota = resolved
        .subscription
        .map_or(limit.quota, |s| s.quota(&limit.id, limit.quota));
    let (window_key, window) = if limit.kind == LimitKind::Concurrency {
        let w = CounterWindow::Fixed {
            start: Timestamp::UNIX_EPOCH,
            end: None,
            opening: false,
        };
        (0, w)
    } else if let WindowSpec::Rolling { seconds } = limit.window {
        (0, CounterWindow::Rolling { seconds })
    } else {
        let current = match limit.window {
            WindowSpec::FirstUse { .. } => tx
                .latest_window(env, &limit.id, subject)?
                .and_then(|ms| Timestamp::from_millisecond(ms).ok()),
            _ => None,
        };
        let bounds =
            subscription::limit_window(&limit.window, resolved, current, at).map_err(|e| {
                StoreError::Invalid {
                    field: "occurredAt".into(),
                    message: e.to_string(),
                }
            })?;
        let opening = window_kind == WindowKind::FirstUse && current != Some(bounds.start);
        let key = match window_kind {
            WindowKind::Lifetime => 0,
            _ => bounds.start.as_millisecond(),
        };
        let w = CounterWindow::Fixed {
            start: bounds.start,
            end: bounds.end,
            opening,
        };
        (key, w)
    };
    Ok(Counter {
        key: CounterKey {
            limit_id: limit.id.clone(),
            subject: subject.to_string(),
            window_key,
        },
        label: limit.label.clone(),
        unit: limit.unit.clone(),
        kind: limit.kind,
        enforcement: limit.enforcement,
        scope: limit.scope,
        multiplier: limit.multiplier,
        quota,
        window_kind,
        window_seconds,
        window,
    })
}

/// A counter's state: `used` at instant `at`, `reserved` by holds unexpired at `now`, and for
/// rolling windows the oldest usage still counted.
#[derive(Debug, Clone, Copy)]
struct Loaded {
    state: CounterState,
    oldest: Option<Timestamp>,
}

fn load(
    tx: &mut impl MeteringTx,
    env: EnvId,
    c: &Counter,
    at: Timestamp,
    now: Timestamp,
) -> StoreResult<Loaded> {
    let (used, reserved, oldest) = match (&c.kind, &c.window) {
        (LimitKind::Concurrency, _) | (_, CounterWindow::Fixed { opening: true, .. }) => {
            (0, tx.reserved(env, &c.key, now)?, None)
        }
        (_, CounterWindow::Fixed { .. }) => {
            let (used, reserved) = tx.used_and_reserved(env, &c.key, now)?;
            (used, reserved, None)
        }
        (_, CounterWindow::Rolling { seconds }) => {
            let after = at
                .checked_sub(secs(i64::from(*seconds)))
                .map_err(overflow)?;
            let (used, oldest) =
                tx.rolling_used(env, &c.key.limit_id, &c.key.subject, after, at)?;
            (used, tx.reserved(env, &c.key, now)?, oldest)
        }
    };
    Ok(Loaded {
        state: CounterState { used, reserved },
        oldest,
    })
}

fn render(c: &Counter, l: Loaded, at: Timestamp) -> LimitState {
    let (window_start, resets_at) = match &c.window {
        CounterWindow::Fixed { opening: true, .. } => (None, None),
        CounterWindow::Fixed { start, end, .. } => (Some(*start), *end),
        CounterWindow::Rolling { seconds } => {
            let span = secs(i64::from(*seconds));
            (
                at.checked_sub(span).ok(),
                l.oldest.and_then(|o| o.checked_add(span).ok()),
            )
        }
    };
    LimitState {
        limit_id: c.key.limit_id.clone(),
        label: c.label.clone(),
        unit: c.unit.clone(),
        kind: c.kind,
        scope: c.scope,
        enforcement: c.enforcement,
        quota: c.quota,
        used: l.state.used,
        reserved: l.state.reserved,
        remaining: l.state.remaining(c.quota),
        window_start,
        resets_at,
    }
}

/// The effective plan's limits that count this event, as counters at `at`, with their states.
fn matching(
    tx: &mut impl MeteringTx,
    env: EnvId,
    resolved: Resolved<'_>,
    subjects: &Subjects,
    (event, metadata): (&EventName, &Metadata),
    at: Timestamp,
    now: Timestamp,
) -> StoreResult<Vec<(Counter, Loaded)>> {
    let mut out = Vec::new();
    for limit in resolved.plan.limits.iter() {
        if limit.matches(event, metadata) {
            let c = counter_for(tx, env, limit, resolved, subjects, at)?;
            let l = load(tx, env, &c, at, now)?;
            out.push((c, l));
        }
    }
    Ok(out)
}

/// A command refused because it would take a figure of counter `c`'s limit past 2^53-1 (a
/// core decision names it by index): the client's error, in the field the client can change.
/// Nothing of it was applied.
fn out_of_range(c: &Counter) -> StoreError {
    let limit_id = &c.key.limit_id;
    StoreError::Invalid {
        field: "quantity".into(),
        message: format!(
            "would take limit `{limit_id}` past {QUANTITY_MAX} (2^53-1), the largest figure \
             Tollgate keeps exact; nothing was applied"
        ),
    }
}

/// Decides a reserve-like request against loaded counters. The limits are looked up again by id
/// in the resolved plan (the counters were built from them, in order).
fn decide(
    resolved: Resolved<'_>,
    event: &EventName,
    metadata: &Metadata,
    counters: &[(Counter, Loaded)],
    quantity: u64,
) -> StoreResult<decision::ReserveDecision> {
    let limits = resolved
        .plan
        .limits
        .iter()
        .filter(|l| l.matches(event, metadata));
    let checks: Vec<LimitCheck<'_>> = limits
        .zip(counters)
        .map(|(limit, (c, l))| LimitCheck {
            limit,
            quota: c.quota,
            state: l.state,
        })
        .collect();
    decision::decide_reserve(&checks, quantity)
        .map_err(|OutOfRange { check }| out_of_range(&counters[check].0))
}

fn replay(
    tx: &mut impl MeteringTx,
    env: EnvId,
    scope: &str,
    key: &tollgate_core::input::IdempotencyKey,
    fingerprint: &str,
    now: Timestamp,
) -> StoreResult<Option<String>> {
    let cutoff = now
        .checked_sub(secs(IDEMPOTENCY_RETENTION_SECONDS))
        .map_err(overflow)?;
    match tx.idempotency(env, scope, key.as_str())? {
        Some(row) if row.created_at <= cutoff => Ok(None),
        Some(row) if row.fingerprint == fingerprint => Ok(Some(row.response)),
        Some(_) => Err(StoreError::IdempotencyConflict),
        None => Ok(None),
    }
}

fn remember<T>(
    tx: &mut impl MeteringTx,
    env: EnvId,
    scope: &str,
    idem: &Idempotency<T>,
    outcome: &T,
    now: Timestamp,
) -> StoreResult<()> {
    let row = IdempotencyRow {
        fingerprint: idem.fingerprint.clone(),
        response: (idem.render)(outcome),
        created_at: now,
    };
    tx.store_idempotency(env, scope, idem.key.as_str(), &row)
}

/// Runs `decide` for a user under the user's subject lock, or answers the first answer given
/// to the same idempotency key (a different request with that key is a conflict).
fn idempotently<T, Tx: MeteringTx>(
    tx: &mut Tx,
    (env, now): (EnvId, Timestamp),
    subjects: Subjects,
    (scope, idem): (&str, Option<&Idempotency<T>>),
    decide: impl FnOnce(&mut Tx, &Standing) -> StoreResult<T>,
) -> StoreResult<Idempotent<T>> {
    if let Some(idem) = idem {
        if let Some(body) = replay(tx, env, scope, &idem.key, &idem.fingerprint, now)? {
            return Ok(Idempotent::Replayed(body));
        }
    }
    let st = standing(tx, env, subjects, now)?;
    let outcome = decide(tx, &st)?;
    if let Some(idem) = idem {
        remember(tx, env, scope, idem, &outcome, now)?;
    }
    Ok(Idempotent::Fresh(outcome))
}

/// The user an identified anonymous id stands for.
fn alias_of(tx: &mut impl MeteringTx, env: EnvId, id: &UserId) -> StoreResult<Option<UserId>> {
    tx.alias(env, id.as_str())?
        .map(|u| UserId::parse(u).map_err(|e| StoreError::Internal(format!("alias: {e}"))))
        .transpose()
}

/// Who a write for `given` is for, read without locks: the user an identified anonymous id
/// stands for (if it is one), and the subjects that user counts on.
fn who(
    tx: &mut impl MeteringTx,
    env: EnvId,
    given: &UserId,
) -> StoreResult<(Option<UserId>, Subjects)> {
    let alias = alias_of(tx, env, given)?;
    let user = alias.as_ref().unwrap_or(given).as_str();
    let subjects = subjects_of(tx, env, user)?;
    Ok((alias, subjects))
}

/// Locks everything a write for `given` touches: the given id, the user it stands for and
/// that user's account, in one `lock_subjects` call. A backend with several writers orders a
/// call's locks by its own key, so locking in two calls could deadlock against a procedure
/// (a commit) that locks the same subjects in one. What was read before the locks is read
/// again under them; if an identify or a membership change committed in between, its
/// subjects are locked too (a second call: in a race that rare, the database's deadlock
/// detection and the transaction retry are the backstop) and it is read again.
fn lock_for_write(
    tx: &mut impl MeteringTx,
    env: EnvId,
    given: &UserId,
) -> StoreResult<(Option<UserId>, Subjects)> {
    let (mut alias, mut subjects) = who(tx, env, given)?;
    if tx.single_writer() {
        // Nothing else writes meanwhile, and locking would do nothing.
        return Ok((alias, subjects));
    }
    let mut locked: Vec<String> = Vec::new();
    loop {
        let mut want = vec![user_subject(given.as_str()), subjects.user.clone()];
        want.extend(subjects.account.clone());
        want.retain(|w| !locked.contains(w));
        if !want.is_empty() {
            let refs: Vec<&str> = want.iter().map(String::as_str).collect();
            tx.lock_subjects(env, &refs)?;
            locked.extend(want);
        }
        let (now_alias, now_subjects) = who(tx, env, given)?;
        if now_alias == alias && now_subjects.account == subjects.account {
            return Ok((alias, subjects));
        }
        (alias, subjects) = (now_alias, now_subjects);
    }
}

/// A command that names the user it is for.
trait ForUser: Clone {
    fn user(&mut self) -> &mut UserId;
}

macro_rules! for_user_field {
    ($($t:ty),*) => {$(
        impl ForUser for $t {
            fn user(&mut self) -> &mut UserId {
                &mut self.user_id
            }
        }
    )*};
}
for_user_field!(ReserveCommand, TrackCommand, CheckCommand, UsageQuery);

/// `cmd` for `user` instead of the id it names, if an alias gave one (a copy only then).
fn with_user<C: ForUser>(cmd: &C, user: Option<UserId>) -> std::borrow::Cow<'_, C> {
    match user {
        Some(u) => {
            let mut c = cmd.clone();
            *c.user() = u;
            std::borrow::Cow::Owned(c)
        }
        None => std::borrow::Cow::Borrowed(cmd),
    }
}

/// A read-only command as it applies: for the user its anonymous id stands for, if it was
/// identified. Nothing is locked: a read racing an identify sees one side of it.
fn resolved_read<'c, C: ForUser>(
    tx: &mut impl MeteringTx,
    env: EnvId,
    cmd: &'c C,
    given: &UserId,
) -> StoreResult<std::borrow::Cow<'c, C>> {
    Ok(with_user(cmd, alias_of(tx, env, given)?))
}

/// Merges an anonymous subject into a user (`POST /v1/identify`); see [`Store::identify`].
pub fn identify(tx: &mut impl MeteringTx, cmd: &IdentifyCommand) -> StoreResult<IdentifyOutcome> {
    let env = cmd.env;
    let (anon, given) = (cmd.anonymous_id.as_str(), cmd.user_id.as_str());
    // The target may itself be an identified anonymous id: merge into the user it stands
    // for. All three subjects are locked in one call (see `lock_for_write`), then the target
    // is read again under the locks.
    let mut target = tx.alias(env, given)?.unwrap_or_else(|| given.to_string());
    let subjects = [
        user_subject(anon),
        user_subject(given),
        user_subject(&target),
    ];
    let refs: Vec<&str> = subjects.iter().map(String::as_str).collect();
    tx.lock_subjects(env, &refs)?;
    if !tx.single_writer() {
        let again = tx.alias(env, given)?.unwrap_or_else(|| given.to_string());
        if again != target {
            tx.lock_subjects(env, &[&user_subject(&again)])?;
            target = again;
        }
    }
    if target == anon {
        return Err(StoreError::Invalid {
            field: "userId".into(),
            message: "names the anonymous id itself (or a user merged into it)".into(),
        });
    }
    match tx.alias(env, anon)? {
        Some(user) if user == target => {
            return Ok(IdentifyOutcome {
                user_id: target,
                merged: false,
                events_merged: 0,
            })
        }
        Some(user_id) => return Err(StoreError::AlreadyIdentified { user_id }),
        None => {}
    }
    let (from, to) = (user_subject(anon), user_subject(&target));
    let mut limit_ids: Vec<&str> = cmd
        .plans
        .plans
        .iter()
        .flat_map(|p| &p.limits)
        .map(|l| l.id.as_str())
        .collect();
    limit_ids.sort_unstable();
    limit_ids.dedup();
    for id in &limit_ids {
        merge_stays_in_range(tx, (env, cmd.now), &cmd.plans, id, (&from, &to))?;
    }
    for id in limit_ids {
        tx.merge_limit(env, id, &from, &to)?;
    }
    let events_merged = tx.reattribute(env, anon, &target)?;
    tx.insert_alias(env, anon, &target, cmd.now)?;
    Ok(IdentifyOutcome {
        user_id: target,
        merged: true,
        events_merged,
    })
}

/// Refuses an identify whose merge would take a counter of limit `limit_id` past 2^53-1:
/// a fixed window's `used` plus holds, or a rolling window's usage now plus holds, of both
/// subjects together. Checked for every limit before anything moves, so a refused identify
/// changes nothing.
fn merge_stays_in_range(
    tx: &mut impl MeteringTx,
    (env, now): (EnvId, Timestamp),
    plans: &PlanDocument,
    limit_id: &str,
    (from, to): (&str, &str),
) -> StoreResult<()> {
    let mut peak = tx.merged_peak(env, limit_id, (from, to), now)?;
    let rolling = plans
        .plans
        .iter()
        .flat_map(|p| &p.limits)
        .filter(|l| l.id == limit_id)
        .find_map(|l| match l.window {
            WindowSpec::Rolling { seconds } => Some(seconds),
            _ => None,
        });
    if let Some(seconds) = rolling {
        let after = now
            .checked_sub(secs(i64::from(seconds)))
            .map_err(overflow)?;
        for subject in [from, to] {
            let (used, _) = tx.rolling_used(env, limit_id, subject, after, now)?;
            peak = sum_in_range(&[peak, used]).unwrap_or(u64::MAX);
        }
    }
    if peak > QUANTITY_MAX {
        return Err(StoreError::Invalid {
            field: "anonymousId".into(),
            message: format!(
                "merging its usage into the user would take limit `{limit_id}` past \
                 {QUANTITY_MAX} (2^53-1); nothing was applied"
            ),
        });
    }
    Ok(())
}

pub fn reserve(
    tx: &mut impl MeteringTx,
    cmd: &ReserveCommand,
) -> StoreResult<Idempotent<ReserveOutcome>> {
    let (user, subjects) = lock_for_write(tx, cmd.env, &cmd.user_id)?;
    let cmd = &*with_user(cmd, user);
    let scope = ("reserve", cmd.idempotency.as_ref());
    idempotently(tx, (cmd.env, cmd.now), subjects, scope, |tx, st| {
        let outcome = decide_and_hold(tx, cmd, st)?;
        if !outcome.allowed && cmd.record_denials {
            tx.insert_event(
                cmd.env,
                &EventRow {
                    event_id: &cmd.event_id,
                    occurred_at: cmd.now,
                    user_id: cmd.user_id.as_str(),
                    event: cmd.event.as_str(),
                    quantity: cmd.quantity.get(),
                    metadata: &cmd.metadata,
                    cost_micros: None,
                    status: "denied",
                    plan_id: outcome.plan_id.as_deref(),
                    reservation_id: None,
                    reasons: &outcome.reasons,
                    release_reason: None,
                    release_error_code: None,
                    overage: 0,
                    credits_used: 0,
                    prompt: cmd.prompt.as_ref(),
                    response: None,
                },
            )?;
        }
        Ok(outcome)
    })
}

/// The limits of the resolved plan that count an event, in plan order (the order of the
/// counters `matching` loads).
fn matching_limits<'p>(
    resolved: Option<Resolved<'p>>,
    (event, metadata): (&EventName, &Metadata),
) -> Vec<&'p Limit> {
    resolved.map_or_else(Vec::new, |r| {
        r.plan
            .limits
            .iter()
            .filter(|l| l.matches(event, metadata))
            .collect()
    })
}

fn decide_and_hold(
    tx: &mut impl MeteringTx,
    cmd: &ReserveCommand,
    st: &Standing,
) -> StoreResult<ReserveOutcome> {
    let (env, now) = (cmd.env, cmd.now);
    let user = cmd.user_id.as_str();
    let resolved = subscription::resolve(&cmd.plans, st.sub.as_ref(), user, now);
    let plan_id = resolved.map(|r| r.plan.id.clone());
    let (event, metadata) = (&cmd.event, &cmd.metadata);
    let mut posting = credits::Posting::new(&cmd.ids, now);
    let counters = match resolved {
        Some(r) => matching(tx, env, r, &st.subjects, (event, metadata), now, now)?,
        None => Vec::new(),
    };
    if let Some(r) = resolved {
        let limits = matching_limits(resolved, (event, metadata));
        credits::roll_over(tx, env, &mut posting, (r, &limits), &counters)?;
    }
    let ask = credits::Ask {
        env,
        subjects: &st.subjects,
        user,
        event: (event, metadata),
        now,
    };
    let funded = credits::fund(
        tx,
        &ask,
        (resolved, &cmd.plans),
        &counters,
        (cmd.quantity.get(), Some(&mut posting)),
    )?;
    let funding = match funded {
        Ok(f) => f,
        Err(reasons) => {
            let d = match resolved {
                Some(r) if !counters.is_empty() => {
                    Some(decide(r, event, metadata, &counters, cmd.quantity.get())?)
                }
                _ => None,
            };
            return Ok(ReserveOutcome {
                allowed: false,
                reservation_id: None,
                expires_at: None,
                plan_id,
                reasons,
                denied_by: d.map_or_else(Vec::new, |d| {
                    d.denied_by
                        .iter()
                        .map(|&i| counters[i].0.key.limit_id.clone())
                        .collect()
                }),
                limits: counters.iter().map(|(c, l)| render(c, *l, now)).collect(),
                credits: CreditsDrawn::default(),
            });
        }
    };
    let expires_at = now
        .checked_add(secs(i64::from(cmd.ttl.get())))
        .map_err(overflow)?;
    let row = ReservationRow {
        reservation_id: cmd.reservation_id.clone(),
        user_id: cmd.user_id.as_str().to_string(),
        event: cmd.event.as_str().to_string(),
        quantity: cmd.quantity.get(),
        metadata: cmd.metadata.clone(),
        plan_id: plan_id.clone(),
        status: ReservationStatus::Pending,
        created_at: now,
        expires_at,
        event_id: cmd.event_id.clone(),
        final_quantity: None,
        overage: None,
        prompt: cmd.prompt.clone(),
        late: false,
    };
    tx.insert_reservation(env, &row)?;
    let mut limits = Vec::with_capacity(counters.len());
    for ((c, l), &hold) in counters.iter().zip(&funding.decision.holds) {
        tx.insert_hold(env, &cmd.reservation_id, &c.hold_row(hold), expires_at)?;
        if let CounterWindow::Fixed {
            end, opening: true, ..
        } = &c.window
        {
            tx.open_counter(env, &c.key, *end)?;
        }
        let mut after = *l;
        after.state.reserved += hold;
        limits.push(render(&c.opened(), after, now));
    }
    credits::hold(tx, env, &mut posting, &funding, &row)?;
    Ok(ReserveOutcome {
        allowed: true,
        reservation_id: Some(cmd.reservation_id.clone()),
        expires_at: Some(expires_at),
        plan_id,
        reasons: Vec::new(),
        denied_by: Vec::new(),
        limits,
        credits: funding.drawn(),
    })
}

/// Adds `units` of usage at `at` to a counter.
fn charge(
    tx: &mut impl MeteringTx,
    env: EnvId,
    c: &Counter,
    units: u64,
    at: Timestamp,
) -> StoreResult<()> {
    if units == 0 || c.kind == LimitKind::Concurrency {
        return Ok(());
    }
    match &c.window {
        CounterWindow::Fixed { end, .. } => tx.add_used(env, &c.key, *end, units),
        CounterWindow::Rolling { .. } => {
            tx.add_rolling(env, &c.key.limit_id, &c.key.subject, at, units)
        }
    }
}

/// The states of a reservation's counters now.
fn render_held(
    tx: &mut impl MeteringTx,
    env: EnvId,
    held: &[(Counter, u64)],
    at: Timestamp,
    now: Timestamp,
) -> StoreResult<Vec<LimitState>> {
    held.iter()
        .map(|(c, _)| Ok(render(c, load(tx, env, c, at, now)?, at.max(now))))
        .collect()
}

fn held_counters(holds: &[HoldRow], plans: &PlanDocument) -> Vec<(Counter, u64)> {
    holds
        .iter()
        .map(|h| (Counter::from_hold(h, plans), h.held))
        .collect()
}

/// Held counters as a read would show them now. A reservation settles on the terms it was
/// admitted under (the quota stored with each hold), but its answer shows the quota in force,
/// which a plan change or a custom limit may have moved since. A limit the plan in force no
/// longer has keeps its stored quota.
fn quotas_in_force(
    tx: &mut impl MeteringTx,
    env: EnvId,
    (user_id, plans): (&str, &PlanDocument),
    held: &mut [(Counter, u64)],
    now: Timestamp,
) -> StoreResult<()> {
    let subjects = subjects_of(tx, env, user_id)?;
    let st = standing(tx, env, subjects, now)?;
    let Some(resolved) = subscription::resolve(plans, st.sub.as_ref(), user_id, now) else {
        return Ok(());
    };
    for (c, _) in held.iter_mut() {
        if let Some(l) = resolved.plan.limits.iter().find(|l| l.id == c.key.limit_id) {
            c.quota = resolved
                .subscription
                .map_or(l.quota, |s| s.quota(&l.id, l.quota));
        }
    }
    Ok(())
}

/// Locks the subjects of a reservation (its user and every subject it holds on) in one call,
/// then reads it and its holds again under the locks (unless the backend has a single writer,
/// where nothing can have changed). An identify committed in between may have moved the
/// reservation and its pending holds to another user: then that user's subjects are locked
/// too (a second call; see `lock_for_write`) and everything is read again.
fn lock_reservation(
    tx: &mut impl MeteringTx,
    env: EnvId,
    id: &str,
) -> StoreResult<(ReservationRow, Vec<HoldRow>)> {
    let mut r = tx.reservation(env, id)?.ok_or(StoreError::NotFound)?;
    let mut holds = tx.holds(env, id)?;
    if tx.single_writer() {
        return Ok((r, holds));
    }
    let mut locked: Vec<String> = Vec::new();
    loop {
        let mut want = vec![user_subject(&r.user_id)];
        want.extend(holds.iter().map(|h| h.key.subject.clone()));
        // Credits it drew, and its user's account's, which a commit of more may draw on.
        let (_, drawn) = credits::drawn_by(tx, env, id)?;
        want.extend(drawn.into_iter().map(|h| h.subject));
        want.extend(
            tx.membership(env, &r.user_id)?
                .map(|(a, _)| account_subject(&a)),
        );
        want.sort_unstable();
        want.dedup();
        want.retain(|w| !locked.contains(w));
        if want.is_empty() {
            return Ok((r, holds));
        }
        let refs: Vec<&str> = want.iter().map(String::as_str).collect();
        tx.lock_subjects(env, &refs)?;
        locked.extend(want);
        r = tx.reservation(env, id)?.ok_or(StoreError::NotFound)?;
        holds = tx.holds(env, id)?;
    }
}

/// A held counter's state once the reservation settled: its hold gone, `charged` units added
/// at `at` (the reservation's time, which is also when the state was loaded). Saves reading
/// back what this transaction just wrote.
fn settled(c: &Counter, l: Loaded, own: u64, charged: u64, at: Timestamp) -> Loaded {
    let counted = charged > 0 && c.kind != LimitKind::Concurrency;
    let oldest = match (&c.window, counted) {
        (CounterWindow::Rolling { .. }, true) => Some(l.oldest.map_or(at, |o| o.min(at))),
        _ => l.oldest,
    };
    Loaded {
        state: CounterState {
            used: if counted {
                l.state.used.saturating_add(charged)
            } else {
                l.state.used
            },
            reserved: l.state.reserved.saturating_sub(own),
        },
        oldest,
    }
}

/// The usage event a reservation ends in, as reserved; callers override what settling changed.
fn reservation_event<'a>(r: &'a ReservationRow, status: &'a str) -> EventRow<'a> {
    EventRow {
        event_id: &r.event_id,
        occurred_at: r.created_at,
        user_id: &r.user_id,
        event: &r.event,
        quantity: r.quantity,
        metadata: &r.metadata,
        cost_micros: None,
        status,
        plan_id: r.plan_id.as_deref(),
        reservation_id: Some(&r.reservation_id),
        reasons: &[],
        release_reason: None,
        release_error_code: None,
        overage: 0,
        credits_used: 0,
        prompt: r.prompt.as_ref(),
        response: None,
    }
}

/// Expires one pending reservation: its holds end and an `expired` usage event is written.
fn expire(tx: &mut impl MeteringTx, env: EnvId, r: &ReservationRow) -> StoreResult<()> {
    credits::on_expiry(tx, env, r)?;
    tx.finish_reservation(
        env,
        &r.reservation_id,
        ReservationStatus::Expired,
        None,
        None,
    )?;
    tx.insert_event(
        env,
        &EventRow {
            occurred_at: r.expires_at,
            prompt: None,
            ..reservation_event(r, "expired")
        },
    )
}

/// Refuses a reservation that is no longer pending at `now`; one past its expiry is expired
/// here (a logged event, like the sweeper's) and refused.
fn still_pending(
    tx: &mut impl MeteringTx,
    env: EnvId,
    r: &ReservationRow,
    now: Timestamp,
) -> StoreResult<()> {
    if r.status != ReservationStatus::Pending {
        return Err(StoreError::NotPending { status: r.status });
    }
    if r.expires_at <= now {
        expire(tx, env, r)?;
        return Err(StoreError::NotPending {
            status: ReservationStatus::Expired,
        });
    }
    Ok(())
}

/// Whether a commit of `r` is late: false for a pending reservation; true for an expired one
/// (expired here if overdue) when the commit says `ifExpired: record`; any other state is
/// refused as [`still_pending`] refuses it.
fn commit_is_late(
    tx: &mut impl MeteringTx,
    env: EnvId,
    r: &ReservationRow,
    (if_expired, now): (IfExpired, Timestamp),
) -> StoreResult<bool> {
    match still_pending(tx, env, r, now) {
        Ok(()) => Ok(false),
        Err(StoreError::NotPending {
            status: ReservationStatus::Expired,
        }) if if_expired == IfExpired::Record => Ok(true),
        Err(e) => Err(e),
    }
}

/// What settling a charge at `at` on counter `c` needs to know: its state `l` (loaded at
/// `at`), less `own` (the hold being settled, if it still counts in `reserved`), and for a
/// rolling window the usage within one window length either side of `at`, which bounds every
/// window the charge will count in.
fn settle_input(
    tx: &mut impl MeteringTx,
    env: EnvId,
    (c, l, own): (&Counter, &Loaded, u64),
    at: Timestamp,
) -> StoreResult<SettleInput> {
    let used_around = match &c.window {
        CounterWindow::Rolling { seconds } if c.kind == LimitKind::Consumable => {
            let span = secs(i64::from(*seconds));
            let after = at.checked_sub(span).map_err(overflow)?;
            let until = at.checked_add(span).map_err(overflow)?;
            tx.rolling_used(env, &c.key.limit_id, &c.key.subject, after, until)?
                .0
        }
        _ => l.state.used,
    };
    Ok(SettleInput {
        kind: c.kind,
        multiplier: c.multiplier,
        quota: c.quota,
        used: l.state.used,
        used_around,
        reserved_others: l.state.reserved.saturating_sub(own),
    })
}

pub fn commit(tx: &mut impl MeteringTx, cmd: &CommitCommand) -> StoreResult<CommitOutcome> {
    let (env, now, id) = (cmd.env, cmd.now, cmd.reservation_id.as_str());
    let (r, holds) = lock_reservation(tx, env, id)?;
    let mut held = held_counters(&holds, &cmd.plans);
    if r.status == ReservationStatus::Committed {
        quotas_in_force(tx, env, (&r.user_id, &cmd.plans), &mut held, now)?;
        return Ok(CommitOutcome {
            reservation_id: id.to_string(),
            quantity: r.final_quantity.unwrap_or(r.quantity),
            overage: r.overage.unwrap_or(0),
            late: r.late,
            limits: render_held(tx, env, &held, r.created_at, now)?,
            credits_used: tx.credits_used_by(env, id)?,
            event_id: r.event_id,
        });
    }
    let late = commit_is_late(tx, env, &r, (cmd.if_expired, now))?;
    let quantity = cmd.quantity.map_or(r.quantity, |q| q.get());
    let metadata = match &cmd.metadata {
        Some(extra) => r.metadata.merged(extra).map_err(|e| StoreError::Invalid {
            field: "metadata".into(),
            message: format!("merged with the reservation's metadata, {}", e.error),
        })?,
        None => r.metadata.clone(),
    };
    // An expired reservation's holds no longer count in `reserved`: a late commit is charged
    // like a commit of more than was held, with nothing of its own to return. Its credit holds
    // went back at the expiry too.
    let own_of = |own: u64| if late { 0 } else { own };
    let (drawn, credit_holds) = credits::drawn_by(tx, env, id)?;
    let (plan_held, credits_held) = match late {
        true => (0, 0),
        false => (r.quantity.saturating_sub(drawn), drawn),
    };
    let split = tollgate_core::credits::split_commit(plan_held, credits_held, quantity);
    let mut counters = Vec::with_capacity(held.len());
    for (c, _) in &held {
        counters.push((c.clone(), load(tx, env, c, r.created_at, now)?));
    }
    // A reservation the plan paid nothing of (no plan, or no limit and only credits) has no
    // room on the plan for more.
    let plan_pays = r.plan_id.is_some() && !(holds.is_empty() && drawn == r.quantity);
    let fit = credits::plan_room(&counters, split.extra, plan_pays);
    let event_id = match late {
        true => cmd.late_event_id.as_str(),
        false => r.event_id.as_str(),
    };
    let mut posting = credits::Posting::new(&cmd.ids, now);
    let refs = credits::refs(&r.user_id, Some(id), Some(event_id));
    credits::settle_holds(
        tx,
        env,
        &mut posting,
        (&r, &credit_holds),
        (split.refunded, quantity, event_id),
    )?;
    let beyond = split.extra - fit;
    let burned = match EventName::parse(r.event.clone()) {
        Ok(event) if beyond > 0 => {
            let subjects = subjects_of(tx, env, &r.user_id)?;
            let ask = credits::Ask {
                env,
                subjects: &subjects,
                user: &r.user_id,
                event: (&event, &metadata),
                now,
            };
            let why = format!(
                "reservation {id} committed with {quantity}, {} more than reserved",
                split.extra
            );
            credits::burn_unheld(tx, &ask, &mut posting, beyond, (refs, &why))?
        }
        _ => 0,
    };
    let credits_used = split.credits_used() + burned;
    let plan_quantity = split.plan + fit + (beyond - burned);
    let mut inputs = Vec::with_capacity(held.len());
    for ((c, own), (_, l)) in held.iter().zip(&counters) {
        inputs.push(settle_input(tx, env, (c, l, own_of(*own)), r.created_at)?);
    }
    let settlement = decision::settle(&inputs, plan_quantity)
        .map_err(|OutOfRange { check }| out_of_range(&held[check].0))?;
    for ((c, _), &units) in held.iter().zip(&settlement.charged) {
        charge(tx, env, c, units, r.created_at)?;
    }
    if late {
        tx.commit_late(env, id, event_id, quantity, settlement.overage)?;
    } else {
        let (status, overage) = (ReservationStatus::Committed, Some(settlement.overage));
        tx.finish_reservation(env, id, status, Some(quantity), overage)?;
    }
    tx.insert_event(
        env,
        &EventRow {
            event_id,
            quantity,
            metadata: &metadata,
            cost_micros: cmd.cost_micros,
            overage: settlement.overage,
            credits_used,
            response: cmd.response.as_ref(),
            ..reservation_event(&r, "committed")
        },
    )?;
    quotas_in_force(tx, env, (&r.user_id, &cmd.plans), &mut held, now)?;
    let limits = held
        .iter()
        .zip(counters)
        .zip(&settlement.charged)
        .map(|(((c, own), (_, l)), &units)| {
            let after = settled(c, l, own_of(*own), units, r.created_at);
            render(c, after, r.created_at.max(now))
        })
        .collect();
    Ok(CommitOutcome {
        reservation_id: id.to_string(),
        quantity,
        overage: settlement.overage,
        late,
        limits,
        event_id: event_id.to_string(),
        credits_used,
    })
}

pub fn release(tx: &mut impl MeteringTx, cmd: &ReleaseCommand) -> StoreResult<ReleaseOutcome> {
    let (env, now, id) = (cmd.env, cmd.now, cmd.reservation_id.as_str());
    let (r, holds) = lock_reservation(tx, env, id)?;
    let (created_at, user_id) = (r.created_at, r.user_id.clone());
    if r.status != ReservationStatus::Released {
        still_pending(tx, env, &r, now)?;
        let mut posting = credits::Posting::new(&cmd.ids, now);
        credits::release_holds(tx, env, &mut posting, &r, "released")?;
        tx.finish_reservation(env, id, ReservationStatus::Released, None, None)?;
        tx.insert_event(
            env,
            &EventRow {
                release_reason: cmd.reason.as_deref(),
                release_error_code: cmd.error_code.as_deref(),
                response: cmd.response.as_ref(),
                ..reservation_event(&r, "released")
            },
        )?;
    }
    let mut held = held_counters(&holds, &cmd.plans);
    quotas_in_force(tx, env, (&user_id, &cmd.plans), &mut held, now)?;
    Ok(ReleaseOutcome {
        reservation_id: id.to_string(),
        limits: render_held(tx, env, &held, created_at, now)?,
    })
}

pub fn extend(tx: &mut impl MeteringTx, cmd: &ExtendCommand) -> StoreResult<ExtendOutcome> {
    let (env, now, id) = (cmd.env, cmd.now, cmd.reservation_id.as_str());
    let (r, _) = lock_reservation(tx, env, id)?;
    still_pending(tx, env, &r, now)?;
    let expires_at = now
        .checked_add(secs(i64::from(cmd.ttl.get())))
        .map_err(overflow)?;
    tx.set_expiry(env, id, expires_at)?;
    Ok(ExtendOutcome {
        reservation_id: id.to_string(),
        expires_at,
    })
}

/// A reservation as a reader sees it: pending past its expiry reads as expired.
pub fn get_reservation(
    tx: &mut impl MeteringTx,
    env: EnvId,
    id: &str,
    now: Timestamp,
) -> StoreResult<ReservationView> {
    let r = tx.reservation(env, id)?.ok_or(StoreError::NotFound)?;
    let status = match r.status {
        ReservationStatus::Pending if r.expires_at <= now => ReservationStatus::Expired,
        s => s,
    };
    Ok(ReservationView {
        reservation_id: r.reservation_id,
        status,
        event_id: (status == ReservationStatus::Committed).then_some(r.event_id),
        quantity: r.final_quantity.unwrap_or(r.quantity),
        metadata: r.metadata,
        user_id: r.user_id,
        event: r.event,
        created_at: r.created_at,
        expires_at: r.expires_at,
    })
}

/// Expires due reservations in every environment, each by its own clock; forgets idempotency
/// records past twice their retention.
pub fn expire_due(
    tx: &mut impl MeteringTx,
    real_now: Timestamp,
    ids: &IdSeed,
) -> StoreResult<usize> {
    let due = tx.due_reservations(real_now, SWEEP_BATCH_MAX)?;
    let mut expired = 0;
    for (env, id, _) in &due {
        let (r, _) = lock_reservation(tx, *env, id)?;
        // Another node (or a commit) may have settled it since it was listed.
        if r.status == ReservationStatus::Pending {
            expire(tx, *env, &r)?;
            expired += 1;
        }
    }
    let before = real_now
        .checked_sub(secs(2 * IDEMPOTENCY_RETENTION_SECONDS))
        .map_err(overflow)?;
    tx.purge_idempotency(before)?;
    Ok(expired + credits::expire_grants(tx, real_now, ids)?)
}

pub fn track(
    tx: &mut impl MeteringTx,
    cmd: &TrackCommand,
) -> StoreResult<Idempotent<TrackOutcome>> {
    let (user, subjects) = lock_for_write(tx, cmd.env, &cmd.user_id)?;
    let cmd = &*with_user(cmd, user);
    let scope = ("track", cmd.idempotency.as_ref());
    idempotently(tx, (cmd.env, cmd.now), subjects, scope, |tx, st| {
        track_decide(tx, cmd, st)
    })
}

fn track_decide(
    tx: &mut impl MeteringTx,
    cmd: &TrackCommand,
    st: &Standing,
) -> StoreResult<TrackOutcome> {
    let (env, now, at) = (cmd.env, cmd.now, cmd.occurred_at);
    let (event, metadata) = (&cmd.event, &cmd.metadata);
    let resolved = subscription::resolve(&cmd.plans, st.sub.as_ref(), cmd.user_id.as_str(), now);
    let plan_id = resolved.map(|r| r.plan.id.clone());
    let counters = match resolved {
        Some(r) => matching(tx, env, r, &st.subjects, (event, metadata), at, now)?,
        None => Vec::new(),
    };
    let match_status = match (resolved, counters.is_empty()) {
        (None, _) => MatchStatus::NoSubscription,
        (Some(_), true) => MatchStatus::Unmatched,
        (Some(_), false) => MatchStatus::Matched,
    };
    let mut posting = credits::Posting::new(&cmd.ids, now);
    if let (Some(r), true) = (resolved, at == now) {
        let limits = matching_limits(resolved, (event, metadata));
        credits::roll_over(tx, env, &mut posting, (r, &limits), &counters)?;
    }
    let ask = credits::Ask {
        env,
        subjects: &st.subjects,
        user: cmd.user_id.as_str(),
        event: (event, metadata),
        now,
    };
    let quantity = cmd.quantity.get();
    let refs = credits::refs(cmd.user_id.as_str(), None, Some(&cmd.event_id));
    let why = format!("tracked usage {} ({} × {quantity})", cmd.event_id, event);
    // With `enforce`, the plan's share and credits for the rest, or a denial; without it,
    // the plan's room, then credits, then overage on the plan.
    let (plan_quantity, credits_used, reasons) = if cmd.enforce {
        let funded = credits::fund(
            tx,
            &ask,
            (resolved, &cmd.plans),
            &counters,
            (quantity, Some(&mut posting)),
        )?;
        match funded {
            Ok(f) => {
                let used = credits::burn_drawn(tx, env, &mut posting, &f, (refs, &why))?;
                (f.plan, used, Vec::new())
            }
            Err(reasons) => (0, 0, reasons),
        }
    } else {
        let plan_pays = resolved.is_some()
            && (!counters.is_empty() || cmd.plans.unmatched_events == UnmatchedEvents::Allow);
        let fit = credits::plan_room(&counters, quantity, plan_pays);
        let burned = credits::burn_unheld(tx, &ask, &mut posting, quantity - fit, (refs, &why))?;
        (quantity - burned, burned, Vec::new())
    };
    let row = |status, reasons, overage, credits_used| EventRow {
        event_id: &cmd.event_id,
        occurred_at: at,
        user_id: cmd.user_id.as_str(),
        event: cmd.event.as_str(),
        quantity,
        metadata: &cmd.metadata,
        cost_micros: cmd.cost_micros,
        status,
        plan_id: plan_id.as_deref(),
        reservation_id: None,
        reasons,
        release_reason: None,
        release_error_code: None,
        overage,
        credits_used,
        prompt: cmd.prompt.as_ref(),
        response: cmd.response.as_ref(),
    };
    if !reasons.is_empty() {
        if cmd.record_denials {
            tx.insert_event(env, &row("denied", &reasons, 0, 0))?;
        }
        let limits = counters.iter().map(|(c, l)| render(c, *l, at)).collect();
        return Ok(TrackOutcome {
            event_id: None,
            recorded: false,
            allowed: false,
            reasons,
            match_status,
            overage: 0,
            plan_id,
            limits,
            credits_used: 0,
        });
    }
    let mut inputs = Vec::with_capacity(counters.len());
    for (c, l) in &counters {
        inputs.push(settle_input(tx, env, (c, l, 0), at)?);
    }
    let settlement = decision::settle(&inputs, plan_quantity)
        .map_err(|OutOfRange { check }| out_of_range(&counters[check].0))?;
    let mut limits = Vec::with_capacity(counters.len());
    for ((c, l), &units) in counters.iter().zip(&settlement.charged) {
        if let CounterWindow::Fixed {
            end, opening: true, ..
        } = &c.window
        {
            tx.open_counter(env, &c.key, *end)?;
        }
        charge(tx, env, c, units, at)?;
        let oldest = match (&c.window, l.oldest) {
            (CounterWindow::Rolling { .. }, Some(o)) => Some(o.min(at)),
            (CounterWindow::Rolling { .. }, None) if units > 0 => Some(at),
            (_, o) => o,
        };
        let after = Loaded {
            state: CounterState {
                used: l.state.used + units,
                reserved: l.state.reserved,
            },
            oldest,
        };
        limits.push(render(&c.opened(), after, at));
    }
    tx.insert_event(env, &row("tracked", &[], settlement.overage, credits_used))?;
    Ok(TrackOutcome {
        event_id: Some(cmd.event_id.clone()),
        recorded: true,
        allowed: true,
        reasons: Vec::new(),
        match_status,
        overage: settlement.overage,
        plan_id,
        limits,
        credits_used,
    })
}

/// Decides as reserve would, without holding or recording anything.
pub fn check(tx: &mut impl MeteringTx, cmd: &CheckCommand) -> StoreResult<CheckOutcome> {
    let cmd = &*resolved_read(tx, cmd.env, cmd, &cmd.user_id)?;
    let (env, now) = (cmd.env, cmd.now);
    let user = cmd.user_id.as_str();
    let subjects = subjects_of(tx, env, user)?;
    let st = standing(tx, env, subjects, now)?;
    let resolved = subscription::resolve(&cmd.plans, st.sub.as_ref(), user, now);
    let plan_id = resolved.map(|r| r.plan.id.clone());
    let (event, metadata) = (&cmd.event, &cmd.metadata);
    let counters = match resolved {
        Some(r) => matching(tx, env, r, &st.subjects, (event, metadata), now, now)?,
        None => Vec::new(),
    };
    let ask = credits::Ask {
        env,
        subjects: &st.subjects,
        user,
        event: (event, metadata),
        now,
    };
    let quantity = cmd.quantity.get();
    let funded = credits::fund(
        tx,
        &ask,
        (resolved, &cmd.plans),
        &counters,
        (quantity, None),
    )?;
    let limits = counters.iter().map(|(c, l)| render(c, *l, now)).collect();
    Ok(match funded {
        Ok(f) => CheckOutcome {
            allowed: true,
            plan_id,
            reasons: Vec::new(),
            denied_by: Vec::new(),
            limits,
            credits: f.drawn(),
        },
        Err(reasons) => {
            let denied_by = match resolved {
                Some(r) if !counters.is_empty() => decide(r, event, metadata, &counters, quantity)?
                    .denied_by
                    .iter()
                    .map(|&i| counters[i].0.key.limit_id.clone())
                    .collect(),
                _ => Vec::new(),
            };
            CheckOutcome {
                allowed: false,
                plan_id,
                reasons,
                denied_by,
                limits,
                credits: CreditsDrawn::default(),
            }
        }
    })
}

/// Every limit of the user's effective plan (or those whose rules name `event`), now.
pub fn usage(tx: &mut impl MeteringTx, q: &UsageQuery) -> StoreResult<UsageOutcome> {
    let q = &*resolved_read(tx, q.env, q, &q.user_id)?;
    let (env, now) = (q.env, q.now);
    let subjects = subjects_of(tx, env, q.user_id.as_str())?;
    let st = standing(tx, env, subjects, now)?;
    // `subscription` in the answer is the user's own (ended or not); the plan in force may
    // come from their account's, and then the user's own is read apart.
    let own = match st.from_account {
        true => tx.subscription(env, &st.subjects.user)?,
        false => st.sub.clone(),
    };
    let credits = credits::pack_balances(tx, env, &st.subjects, now)?;
    let Some(resolved) = subscription::resolve(&q.plans, st.sub.as_ref(), q.user_id.as_str(), now)
    else {
        return Ok(UsageOutcome {
            user_id: q.user_id.as_str().to_string(),
            plan_id: None,
            subscription: own,
            limits: Vec::new(),
            credits,
        });
    };
    let mut limits = Vec::new();
    for limit in &resolved.plan.limits {
        let named = q
            .event
            .as_ref()
            .is_none_or(|e| limit.rules.iter().any(|r| r.event.matches(e.as_str())));
        if named {
            let c = counter_for(tx, env, limit, resolved, &st.subjects, now)?;
            let l = load(tx, env, &c, now, now)?;
            limits.push(render(&c, l, now));
        }
    }
    let plan_id = Some(resolved.plan.id.clone());
    Ok(UsageOutcome {
        user_id: q.user_id.as_str().to_string(),
        plan_id,
        subscription: own,
        limits,
        credits,
    })
}

pub fn upsert_subscription(
    tx: &mut impl MeteringTx,
    env: EnvId,
    (owner, plans): (&Owner, &PlanDocument),
    request: &UpsertRequest,
    new_id: &str,
    now: Timestamp,
) -> StoreResult<UpsertOutcome> {
    let subject = owner.subject();
    tx.lock_subjects(env, &[&subject])?;
    let current = tx.subscription(env, &subject)?;
    let outcome = subscription::upsert(current.as_ref(), request, new_id, now);
    if outcome.changed {
        let renewed = outcome
            .history
            .iter()
            .any(|h| h.kind == subscription::HistoryKind::Renewed);
        let subs = (current.as_ref(), &outcome.subscription);
        if let Owner::User(user_id) = owner {
            carry_into_new_windows(tx, env, plans, (user_id, &subject), subs, (now, renewed))?;
        }
        tx.write_subscription(env, &subject, &outcome.subscription)?;
    }
    for h in &outcome.history {
        tx.append_history(env, &subject, h)?;
    }
    Ok(outcome)
}

/// A counter is keyed by its window's start, so a subscription change can move a subject to
/// new windows: a calendar window when the subscriber's time zone changes, a `subscription`
/// window when a subscription starts (the default plan counts those per calendar month),
/// ends now, starts over after its end, or has its anchor moved. The window entered then
/// counts at least the usage the window being left counts, and the pending reservations held
/// on the window left move with the subject: they show in `reserved` of the window entered,
/// a release or an expiry returns them there, and a commit charges there exactly what it
/// commits. Only usage is carried, never a hold (a hold carried as usage would charge a
/// reservation that is then released). Upgrading keeps the usage, and no subscription write
/// gives back quota already used, so free → pro → cancel → free cannot refresh a window. A
/// renewal (a later `cycleStart`) is the one change meant to start `subscription` windows
/// afresh. Usage counted only in an earlier window stays there (moving it would need each
/// event's time).
///
/// Only a user's own subscription carries: an account's subscription moves the windows of
/// all its members at once, which this does not follow yet (docs/api.md, "Accounts").
fn carry_into_new_windows(
    tx: &mut impl MeteringTx,
    env: EnvId,
    plans: &PlanDocument,
    (user_id, subject): (&UserId, &str),
    (before, after): (Option<&Subscription>, &Subscription),
    (now, renewed): (Timestamp, bool),
) -> StoreResult<()> {
    let user = user_id.as_str();
    let (Some(old), Some(new)) = (
        subscription::resolve(plans, before, user, now),
        subscription::resolve(plans, Some(after), user, now),
    ) else {
        return Ok(());
    };
    let subjects = Subjects::alone(subject);
    for limit in &new.plan.limits {
        let moves = match limit.window {
            WindowSpec::Calendar { .. } => true,
            WindowSpec::Subscription => !renewed,
            _ => false,
        };
        if !moves || limit.kind == LimitKind::Concurrency {
            continue;
        }
        let from = counter_for(tx, env, limit, old, &subjects, now)?;
        let to = counter_for(tx, env, limit, new, &subjects, now)?;
        if from.key == to.key {
            continue;
        }
        let CounterWindow::Fixed { start, end, .. } = &to.window else {
            continue;
        };
        let left = load(tx, env, &from, now, now)?.state;
        let entered = load(tx, env, &to, now, now)?.state;
        let used = left.used.max(entered.used);
        if sum_in_range(&[used, entered.reserved, left.reserved]).is_none() {
            return Err(StoreError::Invalid {
                field: "planId".into(),
                message: format!(
                    "the change would move usage and holds of limit `{}` into a window \
                     counting past {QUANTITY_MAX} (2^53-1); nothing was applied",
                    limit.id
                ),
            });
        }
        if used > entered.used {
            tx.add_used(env, &to.key, *end, used - entered.used)?;
        }
        if left.reserved > 0 {
            tx.move_holds(env, &from.key, &to.key, (Some(*start), *end))?;
        }
    }
    Ok(())
}

/// The plan in force for an account's members (its active subscription's, else the default
/// plan), and its seat cap.
fn account_plan<'p>(
    plans: &'p PlanDocument,
    sub: Option<&'p Subscription>,
    now: Timestamp,
) -> Option<&'p tollgate_core::plan::Plan> {
    subscription::resolve(plans, sub, "", now).map(|r| r.plan)
}

/// Locks a user and an account for a change of membership.
fn lock_membership(
    tx: &mut impl MeteringTx,
    env: EnvId,
    account: &str,
    user: &str,
) -> StoreResult<()> {
    tx.lock_subjects(env, &[&user_subject(user), &account_subject(account)])
}

/// Adds a user to an account; see [`Store::add_member`].
pub fn add_member(
    tx: &mut impl MeteringTx,
    env: EnvId,
    (account, user): (&AccountId, &UserId),
    plans: &PlanDocument,
    now: Timestamp,
) -> StoreResult<Timestamp> {
    let (account, user) = (account.as_str(), user.as_str());
    lock_membership(tx, env, account, user)?;
    if let Some((current, since)) = tx.membership(env, user)? {
        if current == account {
            return Ok(since);
        }
    }
    let sub = tx.subscription(env, &account_subject(account))?;
    if let Some(max) = account_plan(plans, sub.as_ref(), now).and_then(|p| p.seats) {
        if tx.members(env, account)?.len() >= max as usize {
            return Err(StoreError::SeatLimitReached { max });
        }
    }
    tx.put_member(env, account, user, now)?;
    Ok(now)
}

/// Removes a user from an account; see [`Store::remove_member`].
pub fn remove_member(
    tx: &mut impl MeteringTx,
    env: EnvId,
    (account, user): (&AccountId, &UserId),
) -> StoreResult<()> {
    let (account, user) = (account.as_str(), user.as_str());
    lock_membership(tx, env, account, user)?;
    if tx.delete_member(env, account, user)? {
        Ok(())
    } else {
        Err(StoreError::NotFound)
    }
}

/// An account as `GET /v1/accounts/{accountId}` shows it; see [`Store::account`].
pub fn account_view(
    tx: &mut impl MeteringTx,
    env: EnvId,
    account: &AccountId,
    plans: &PlanDocument,
    now: Timestamp,
) -> StoreResult<AccountView> {
    let members = tx.members(env, account.as_str())?;
    let sub = tx.subscription(env, &account_subject(account.as_str()))?;
    if members.is_empty() && sub.is_none() {
        return Err(StoreError::NotFound);
    }
    let plan = account_plan(plans, sub.as_ref(), now);
    Ok(AccountView {
        members,
        plan_id: plan.map(|p| p.id.clone()),
        seats_max: plan.and_then(|p| p.seats),
        subscription: sub,
    })
}

pub fn cancel_subscription(
    tx: &mut impl MeteringTx,
    env: EnvId,
    owner: &Owner,
    plans: &PlanDocument,
    at: CancelAt,
    reason: Option<String>,
    now: Timestamp,
) -> StoreResult<(Subscription, HistoryEntry)> {
    let subject = owner.subject();
    tx.lock_subjects(env, &[&subject])?;
    let current = tx
        .subscription(env, &subject)?
        .ok_or(StoreError::NotFound)?;
    let billing = plans.plan(&current.plan_id).map_or(
        tollgate_core::window::BillingInterval {
            unit: tollgate_core::window::IntervalUnit::Month,
            count: 1,
        },
        |p| p.billing,
    );
    let (sub, entry) =
        subscription::cancel(&current, billing, at, reason, "api", now).map_err(|e| match e {
            subscription::CancelError::AlreadyCanceled => StoreError::AlreadyCanceled,
            subscription::CancelError::Window(w) => StoreError::Internal(w.to_string()),
        })?;
    if let Owner::User(user_id) = owner {
        let subs = (Some(&current), &sub);
        carry_into_new_windows(tx, env, plans, (user_id, &subject), subs, (now, false))?;
    }
    tx.write_subscription(env, &subject, &sub)?;
    tx.append_history(env, &subject, &entry)?;
    Ok((sub, entry))
}
