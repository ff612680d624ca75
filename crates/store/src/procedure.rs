//! The metering procedures, written once for every backend, and what they share.
//!
//! Each capability has its own submodule, and every procedure is re-exported here: the
//! reservation lifecycle (reserve, commit, release, extend, expire) in `reservations`; track,
//! check and usage in `track`; subscription and account writes in `subscriptions`; identify in
//! `identify`; a user's traits and their erasure in `persons`; grants, the ledger and the
//! draws on them in [`credits`]. [`MeteringTx`] and the
//! rows it reads and writes are in `tx`. This module holds what the procedures share: a
//! user's subjects and standing, counters (loading, rendering, deciding, charging),
//! idempotent replay, and locking a write's subjects.
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

pub mod billers;
pub mod credits;
mod identify;
mod persons;
mod reservations;
mod subscriptions;
mod track;
mod tx;

pub use identify::identify;
pub use persons::erase_user;
pub use reservations::{commit, expire_due, extend, get_reservation, release, reserve};
pub use subscriptions::{
    account_view, add_member, cancel_subscription, remove_member, upsert_subscription,
};
pub use track::{account_usage, check, track, usage};
pub use tx::{
    BillerSnapshotRow, CounterKey, CreditHold, EventRow, HoldRow, IdempotencyRow, MeteringTx,
    ReservationRow, WindowKind,
};

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
    render_as(c, l, at, false)
}

/// The counter as shown once this use has opened its window (a first_use window it opens
/// shows its bounds), without copying the counter.
fn render_opened(c: &Counter, l: Loaded, at: Timestamp) -> LimitState {
    render_as(c, l, at, true)
}

fn render_as(c: &Counter, l: Loaded, at: Timestamp, opened: bool) -> LimitState {
    let (window_start, resets_at) = match &c.window {
        CounterWindow::Fixed { opening: true, .. } if !opened => (None, None),
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
