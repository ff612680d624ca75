//! Credits, written once for every backend: grants, revocations, expiry, rollover, the ledger,
//! and the draws reserve, commit, release, expiry and track make on them.
//!
//! A grant row says what was granted and never changes. Its balance (`remaining`, `held`) is
//! its ledger: every change appends one entry carrying the balance after it, so the newest
//! entry is the balance and every entry explains itself. Which grants a reservation drew on is
//! kept apart (`CreditHold`), as the limits' holds are.
//!
//! Who decides what: `tollgate_core::credits` says how much of a request the plan covers, the
//! spend order and how a commit splits; this module loads, asks and writes.

use super::reservations::expire;
use super::*;
use tollgate_core::credits::{self as rule, Room};

/// Most grants one sweep expires in one transaction.
pub const GRANT_SWEEP_BATCH_MAX: usize = 1000;

/// The ids of the ledger entries (and rollover grants) one command writes.
pub(super) struct Posting {
    seed: IdSeed,
    next: usize,
    pub(super) at: Timestamp,
}

impl Posting {
    pub(super) fn new(seed: &IdSeed, at: Timestamp) -> Self {
        Posting {
            seed: seed.clone(),
            next: 0,
            at,
        }
    }

    /// The entries an expiry of reservation `id` writes: their ids come from the reservation's
    /// own (it expires once), since expiry happens in commands that carry no seed of their own.
    fn for_expiry(reservation_id: &str, at: Timestamp) -> Self {
        let tail = reservation_id
            .split_once('_')
            .map_or(reservation_id, |(_, t)| t);
        Posting::new(&IdSeed(format!("{tail}x")), at)
    }

    fn entry_id(&mut self) -> String {
        self.next += 1;
        self.seed.ledger(self.next - 1)
    }

    fn grant_id(&mut self) -> String {
        self.next += 1;
        self.seed.grant(self.next - 1)
    }
}

/// What an entry refers to besides its grant.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Refs<'a> {
    user_id: Option<&'a str>,
    reservation_id: Option<&'a str>,
    event_id: Option<&'a str>,
    external_ref: Option<&'a str>,
}

fn broken(what: &str) -> StoreError {
    StoreError::Internal(format!("credit ledger: {what}"))
}

/// Appends one entry of `kind` for `quantity` units to grant `g` whose balance is `bal`, and
/// moves `bal` to the balance after it. `from_held` is the part of a burn that was held. An
/// entry of 0 units is not written.
#[allow(clippy::too_many_arguments)]
fn post(
    tx: &mut impl MeteringTx,
    env: EnvId,
    p: &mut Posting,
    (g, bal): (&GrantRow, &mut Balance),
    (kind, quantity, from_held): (LedgerKind, u64, u64),
    refs: Refs<'_>,
    reason: String,
) -> StoreResult<()> {
    if quantity == 0 {
        return Ok(());
    }
    let (r, h) = (bal.remaining, bal.held);
    let after = match kind {
        LedgerKind::Grant | LedgerKind::Rollover | LedgerKind::Refund => Balance {
            remaining: sum_in_range(&[r, quantity]).ok_or_else(|| broken("past 2^53-1"))?,
            held: h,
        },
        LedgerKind::Hold => Balance {
            remaining: r,
            held: sum_in_range(&[h, quantity]).ok_or_else(|| broken("past 2^53-1"))?,
        },
        LedgerKind::Release => Balance {
            remaining: r,
            held: h
                .checked_sub(quantity)
                .ok_or_else(|| broken("release of more than held"))?,
        },
        LedgerKind::Burn | LedgerKind::Expire | LedgerKind::Revoke => Balance {
            remaining: r
                .checked_sub(quantity)
                .ok_or_else(|| broken("below zero"))?,
            held: h
                .checked_sub(from_held)
                .ok_or_else(|| broken("burn of more than held"))?,
        },
    };
    if after.held > after.remaining {
        return Err(broken("more held than remains"));
    }
    tx.append_ledger(
        env,
        &LedgerEntry {
            seq: 0,
            entry_id: p.entry_id(),
            at: p.at,
            kind,
            grant_id: g.grant_id.clone(),
            subject: g.subject.clone(),
            user_id: refs.user_id.map(str::to_string),
            quantity,
            after,
            reservation_id: refs.reservation_id.map(str::to_string),
            event_id: refs.event_id.map(str::to_string),
            external_ref: refs
                .external_ref
                .or(g.external_ref.as_deref())
                .map(str::to_string),
            reason,
        },
    )?;
    *bal = after;
    Ok(())
}

fn expired(g: &GrantRow, now: Timestamp) -> bool {
    g.expires_at.is_some_and(|e| e <= now)
}

fn fmt_at(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The subjects whose grants a user spends: their own and their account's.
fn credit_subjects(subjects: &Subjects) -> Vec<&str> {
    let mut out = vec![subjects.user.as_str()];
    out.extend(subjects.account.as_deref());
    out
}

/// A grant a request may draw on, with the units it can give.
#[derive(Debug, Clone)]
pub(super) struct Spendable {
    grant: Grant,
    available: u64,
}

/// The unexpired grants of the asker's subjects that match the event, with units available,
/// in spend order. A write (`lazy`) first returns what the user's own overdue reservations
/// hold and expires what expired grants still have unheld; a read counts overdue holds as
/// returned without writing anything.
fn spendable(
    tx: &mut impl MeteringTx,
    ask: &Ask<'_>,
    lazy: Option<&mut Posting>,
) -> StoreResult<Vec<Spendable>> {
    let (env, now) = (ask.env, ask.now);
    let (event, metadata) = ask.event;
    let writing = lazy.is_some();
    if writing {
        let mut overdue = tx.overdue_credit_reservations(env, ask.user, now)?;
        overdue.sort_unstable();
        overdue.dedup();
        for id in overdue {
            if let Some(r) = tx.reservation(env, &id)? {
                if r.status == ReservationStatus::Pending {
                    expire(tx, env, &r)?;
                }
            }
        }
    }
    let grants = tx.live_grants(env, &credit_subjects(ask.subjects))?;
    let mut out = Vec::new();
    let mut lazy = lazy;
    for mut grant in grants {
        if expired(&grant.row, now) {
            if let Some(p) = lazy.as_deref_mut() {
                expire_unheld(tx, env, p, &mut grant)?;
            }
            continue;
        }
        if !grant.row.rules.iter().any(|r| r.matches(event, metadata)) {
            continue;
        }
        let overdue = match writing {
            true => 0,
            false => tx_overdue(tx, env, &grant, now)?,
        };
        let held = grant.balance.held.saturating_sub(overdue);
        let available = grant.balance.remaining.saturating_sub(held);
        if available > 0 {
            out.push(Spendable { grant, available });
        }
    }
    out.sort_by(|a, b| rule::spend_order(spend_key(a), spend_key(b)));
    Ok(out)
}

fn spend_key(s: &Spendable) -> (i32, Option<Timestamp>, Timestamp, &str) {
    let g = &s.grant.row;
    (g.priority, g.expires_at, g.created_at, g.grant_id.as_str())
}

/// Units of a grant held by overdue reservations (0 without a look when nothing is held).
fn tx_overdue(tx: &mut impl MeteringTx, env: EnvId, g: &Grant, now: Timestamp) -> StoreResult<u64> {
    if g.balance.held == 0 {
        return Ok(0);
    }
    tx.overdue_held(env, &g.row.grant_id, now)
}

/// Expires what an expired grant still has unheld.
fn expire_unheld(
    tx: &mut impl MeteringTx,
    env: EnvId,
    p: &mut Posting,
    g: &mut Grant,
) -> StoreResult<()> {
    let unheld = g.balance.remaining - g.balance.held;
    let at = g.row.expires_at.map_or_else(String::new, fmt_at);
    post(
        tx,
        env,
        p,
        (&g.row, &mut g.balance),
        (LedgerKind::Expire, unheld, 0),
        Refs::default(),
        format!("expired at {at}: {unheld} unused"),
    )
}

/// After units of grant `g` came back (a release, a refund), a grant that has expired or was
/// revoked loses them at once.
fn close_returned(
    tx: &mut impl MeteringTx,
    env: EnvId,
    p: &mut Posting,
    (g, bal): (&GrantRow, &mut Balance),
    refs: Refs<'_>,
) -> StoreResult<()> {
    let unheld = bal.remaining - bal.held;
    if unheld == 0 {
        return Ok(());
    }
    if tx.is_revoked(env, &g.grant_id)? {
        let reason = format!("revoked: {unheld} returned after the grant was revoked");
        return post(
            tx,
            env,
            p,
            (g, bal),
            (LedgerKind::Revoke, unheld, 0),
            refs,
            reason,
        );
    }
    if expired(g, p.at) {
        let at = g.expires_at.map_or_else(String::new, fmt_at);
        let reason = format!("expired at {at}: {unheld} returned after the grant expired");
        return post(
            tx,
            env,
            p,
            (g, bal),
            (LedgerKind::Expire, unheld, 0),
            refs,
            reason,
        );
    }
    Ok(())
}

/// How a request would be paid for: the plan's share and its holds on each counter, and the
/// credits drawn for the rest.
pub(super) struct Funding {
    pub(super) decision: decision::ReserveDecision,
    /// Units of the request the plan covers.
    pub(super) plan: u64,
    pub(super) credits: Vec<(Spendable, u64)>,
}

impl Funding {
    pub(super) fn drawn(&self) -> CreditsDrawn {
        let grants: Vec<(String, u64)> = self
            .credits
            .iter()
            .map(|(s, units)| (s.grant.row.grant_id.clone(), *units))
            .collect();
        CreditsDrawn {
            held: grants.iter().map(|(_, u)| u).sum(),
            grants,
        }
    }
}

/// The rooms of a request's hard consumable limits, from their loaded states.
fn rooms<'c>(counters: impl IntoIterator<Item = (&'c Counter, &'c Loaded)>) -> Vec<Room> {
    counters
        .into_iter()
        .filter(|(c, _)| c.kind == LimitKind::Consumable && c.enforcement == Enforcement::Hard)
        .map(|(c, l)| Room {
            multiplier: c.multiplier,
            quota: c.quota,
            used: l.state.used,
            reserved: l.state.reserved,
        })
        .collect()
}

/// What a request asks of credits: who, for which event, when, and whether it may write
/// (a reserve, a track) or only read (a check).
pub(super) struct Ask<'a> {
    pub(super) env: EnvId,
    pub(super) subjects: &'a Subjects,
    pub(super) user: &'a str,
    pub(super) event: (&'a EventName, &'a Metadata),
    pub(super) now: Timestamp,
}

/// Decides how a request of `quantity` is paid for: by the plan alone when every matching
/// limit admits it (credits are not read); else, unless a concurrency limit refuses, by the
/// plan's share and credits for the rest, if they cover it. Denied as the plan alone denies
/// when they do not. `resolved` is None without a plan; `counters` are the matching limits'.
pub(super) fn fund(
    tx: &mut impl MeteringTx,
    ask: &Ask<'_>,
    (resolved, plans): (Option<Resolved<'_>>, &PlanDocument),
    counters: &[(Counter, Loaded)],
    (quantity, lazy): (u64, Option<&mut Posting>),
) -> StoreResult<Result<Funding, Vec<DenyReason>>> {
    let (event, metadata) = ask.event;
    let unmatched_allowed = plans.unmatched_events == UnmatchedEvents::Allow;
    let whole = match resolved {
        Some(r) if !counters.is_empty() || unmatched_allowed => {
            Some(decide(r, event, metadata, counters, quantity)?)
        }
        _ => None,
    };
    let denial = match &whole {
        Some(d) if d.allowed => {
            return Ok(Ok(Funding {
                decision: d.clone(),
                plan: quantity,
                credits: Vec::new(),
            }))
        }
        Some(d) if d.reasons.contains(&DenyReason::ConcurrencyLimitReached) => {
            return Ok(Err(d.reasons.clone()))
        }
        Some(d) => d.reasons.clone(),
        None if resolved.is_none() => vec![DenyReason::NoSubscription],
        None => vec![DenyReason::UnmatchedEvent],
    };
    let plan = match (resolved, counters.is_empty()) {
        (Some(_), false) => {
            rule::plan_share(&rooms(counters.iter().map(|(c, l)| (c, l))), quantity)
        }
        _ => 0,
    };
    let grants = spendable(tx, ask, lazy)?;
    let available: Vec<u64> = grants.iter().map(|s| s.available).collect();
    let Some(takes) = rule::draw(&available, quantity - plan) else {
        return Ok(Err(denial));
    };
    let decision = match resolved {
        Some(r) => decide(r, event, metadata, counters, plan)?,
        None => decision::ReserveDecision {
            allowed: true,
            holds: Vec::new(),
            denied_by: Vec::new(),
            reasons: Vec::new(),
        },
    };
    if !decision.allowed {
        return Err(StoreError::Internal(
            "the plan's share of a request was refused".into(),
        ));
    }
    let credits = grants
        .into_iter()
        .zip(takes)
        .filter(|(_, take)| *take > 0)
        .collect();
    Ok(Ok(Funding {
        decision,
        plan,
        credits,
    }))
}

/// Holds a reservation's credits (`hold` entries).
pub(super) fn hold(
    tx: &mut impl MeteringTx,
    env: EnvId,
    p: &mut Posting,
    funding: &Funding,
    r: &ReservationRow,
) -> StoreResult<()> {
    for (s, units) in &funding.credits {
        let mut bal = s.grant.balance;
        let reason = format!(
            "held {units} for reservation {} ({} × {}: {} from the plan, {} from credits)",
            r.reservation_id,
            r.event,
            r.quantity,
            funding.plan,
            r.quantity - funding.plan
        );
        let refs = Refs {
            user_id: Some(&r.user_id),
            reservation_id: Some(&r.reservation_id),
            ..Refs::default()
        };
        post(
            tx,
            env,
            p,
            (&s.grant.row, &mut bal),
            (LedgerKind::Hold, *units, 0),
            refs,
            reason,
        )?;
        tx.insert_credit_hold(
            env,
            (&r.reservation_id, &r.user_id),
            &CreditHold {
                grant_id: s.grant.row.grant_id.clone(),
                subject: s.grant.row.subject.clone(),
                units: *units,
                active: true,
            },
        )?;
    }
    Ok(())
}

/// Burns credits that were not held (a track, or a commit of more than was reserved): up to
/// `want` units from the grants in spend order. Returns the units burned.
pub(super) fn burn_unheld(
    tx: &mut impl MeteringTx,
    ask: &Ask<'_>,
    p: &mut Posting,
    want: u64,
    (refs, why): (Refs<'_>, &str),
) -> StoreResult<u64> {
    if want == 0 {
        return Ok(0);
    }
    let grants = spendable(tx, ask, Some(&mut *p))?;
    let mut left = want;
    for s in grants {
        if left == 0 {
            break;
        }
        let take = s.available.min(left);
        let mut bal = s.grant.balance;
        let reason = format!("burned {take} for {why}");
        post(
            tx,
            ask.env,
            p,
            (&s.grant.row, &mut bal),
            (LedgerKind::Burn, take, 0),
            refs,
            reason,
        )?;
        left -= take;
    }
    Ok(want - left)
}

/// Burns what a funding drew, without holding it first (an enforced track). Returns the units.
pub(super) fn burn_drawn(
    tx: &mut impl MeteringTx,
    env: EnvId,
    p: &mut Posting,
    funding: &Funding,
    (refs, why): (Refs<'_>, &str),
) -> StoreResult<u64> {
    let mut total = 0;
    for (s, units) in &funding.credits {
        let mut bal = s.grant.balance;
        let reason = format!("burned {units} for {why}");
        let entry = (LedgerKind::Burn, *units, 0);
        post(tx, env, p, (&s.grant.row, &mut bal), entry, refs, reason)?;
        total += units;
    }
    Ok(total)
}

/// Returns a reservation's active credit holds (`release` entries), when it is released or
/// expires.
pub(super) fn release_holds(
    tx: &mut impl MeteringTx,
    env: EnvId,
    p: &mut Posting,
    r: &ReservationRow,
    why: &str,
) -> StoreResult<()> {
    let holds = tx.credit_holds(env, &r.reservation_id)?;
    if !holds.iter().any(|h| h.active) {
        return Ok(());
    }
    let refs = Refs {
        user_id: Some(&r.user_id),
        reservation_id: Some(&r.reservation_id),
        ..Refs::default()
    };
    for h in holds.iter().filter(|h| h.active) {
        let g = tx
            .grant(env, &h.grant_id)?
            .ok_or_else(|| broken("no grant"))?;
        let mut bal = tx.balance(env, &h.grant_id)?;
        let reason = format!(
            "released {}: reservation {} {why}",
            h.units, r.reservation_id
        );
        post(
            tx,
            env,
            p,
            (&g, &mut bal),
            (LedgerKind::Release, h.units, 0),
            refs,
            reason,
        )?;
        close_returned(tx, env, p, (&g, &mut bal), refs)?;
    }
    tx.end_credit_holds(env, &r.reservation_id)
}

/// The credit side of expiring reservation `r` (see `expire`).
pub(super) fn on_expiry(
    tx: &mut impl MeteringTx,
    env: EnvId,
    r: &ReservationRow,
) -> StoreResult<()> {
    let mut p = Posting::for_expiry(&r.reservation_id, r.expires_at);
    let why = format!("expired at {}", fmt_at(r.expires_at));
    release_holds(tx, env, &mut p, r, &why)
}

/// What a reservation drew on credits: the units held then (ended or not), and its holds.
pub(super) fn drawn_by(
    tx: &mut impl MeteringTx,
    env: EnvId,
    reservation_id: &str,
) -> StoreResult<(u64, Vec<CreditHold>)> {
    let holds = tx.credit_holds(env, reservation_id)?;
    Ok((holds.iter().map(|h| h.units).sum(), holds))
}

/// Burns a committed reservation's credit hold, then refunds what the final quantity did not
/// use (the grants drawn last get it back first). Returns the credits it used.
pub(super) fn settle_holds(
    tx: &mut impl MeteringTx,
    env: EnvId,
    p: &mut Posting,
    (r, holds): (&ReservationRow, &[CreditHold]),
    (refunded, final_quantity, event_id): (u64, u64, &str),
) -> StoreResult<()> {
    if !holds.iter().any(|h| h.active) {
        return Ok(());
    }
    let refs = Refs {
        user_id: Some(&r.user_id),
        reservation_id: Some(&r.reservation_id),
        event_id: Some(event_id),
        ..Refs::default()
    };
    let mut balances = Vec::with_capacity(holds.len());
    for h in holds.iter().filter(|h| h.active) {
        let g = tx
            .grant(env, &h.grant_id)?
            .ok_or_else(|| broken("no grant"))?;
        let mut bal = tx.balance(env, &h.grant_id)?;
        let reason = format!(
            "burned {}: reservation {} committed with {final_quantity} of {} reserved",
            h.units, r.reservation_id, r.quantity
        );
        post(
            tx,
            env,
            p,
            (&g, &mut bal),
            (LedgerKind::Burn, h.units, h.units),
            refs,
            reason,
        )?;
        balances.push((g, bal, h.units));
    }
    let mut left = refunded;
    for (g, bal, units) in balances.iter_mut().rev() {
        let back = (*units).min(left);
        left -= back;
        let reason = format!(
            "refunded {back}: reservation {} committed {final_quantity} of {} reserved",
            r.reservation_id, r.quantity
        );
        post(
            tx,
            env,
            p,
            (g, bal),
            (LedgerKind::Refund, back, 0),
            refs,
            reason,
        )?;
        if back > 0 {
            close_returned(tx, env, p, (g, bal), refs)?;
        }
    }
    tx.end_credit_holds(env, &r.reservation_id)
}

/// How much more than a reservation held the plan can take: the most of `extra` its hard
/// consumable limits still have room for (every bit of it when none is hard, nothing when the
/// request had no plan limit at all and was paid by credits).
pub(super) fn plan_room<'c>(
    counters: impl IntoIterator<Item = (&'c Counter, &'c Loaded)>,
    extra: u64,
    plan_pays: bool,
) -> u64 {
    if !plan_pays {
        return 0;
    }
    rule::plan_share(&rooms(counters), extra)
}

pub(super) fn refs<'a>(
    user_id: &'a str,
    reservation_id: Option<&'a str>,
    event_id: Option<&'a str>,
) -> Refs<'a> {
    Refs {
        user_id: Some(user_id),
        reservation_id,
        event_id,
        external_ref: None,
    }
}

/// Rolls the unused quota of the window before `c`'s into a grant, once per window: for each
/// limit of the request that declares `rollover`, in a window the subject used.
pub(super) fn roll_over(
    tx: &mut impl MeteringTx,
    env: EnvId,
    p: &mut Posting,
    (resolved, limits): (Resolved<'_>, &[&Limit]),
    counters: &[(Counter, Loaded)],
) -> StoreResult<()> {
    for (limit, (c, _)) in limits.iter().zip(counters) {
        let (
            Some(max),
            CounterWindow::Fixed {
                start,
                end: Some(end),
                ..
            },
        ) = (limit.rollover, &c.window)
        else {
            continue;
        };
        let before = start
            .checked_sub(SignedDuration::from_millis(1))
            .map_err(overflow)?;
        let prev = subscription::limit_window(&limit.window, resolved, None, before)
            .map_err(|e| StoreError::Internal(format!("rollover window: {e}")))?;
        let key = CounterKey {
            window_key: prev.start.as_millisecond(),
            ..c.key.clone()
        };
        if prev.end != Some(*start) || tx.rolled_over(env, &key)? {
            continue;
        }
        let used = tx.used(env, &key)?;
        let unused = c.quota.saturating_sub(used).min(max);
        if used == 0 || unused == 0 {
            tx.mark_rollover(env, &key, None)?;
            continue;
        }
        let row = GrantRow {
            grant_id: p.grant_id(),
            subject: c.key.subject.clone(),
            pack_id: None,
            item_id: limit.id.clone(),
            unit: limit.unit.clone(),
            quantity: unused,
            priority: 0,
            rules: limit.rules.clone(),
            expires_at: Some(*end),
            source: GrantSource::Rollover,
            external_ref: None,
            note: None,
            created_at: p.at,
        };
        tx.insert_grant(env, &row)?;
        tx.queue_expiry(env, &row, *end)?;
        let reason = format!(
            "rolled over {unused} unused of {} ({used} of {} used from {} to {}), until {}",
            limit.id,
            c.quota,
            fmt_at(prev.start),
            fmt_at(*start),
            fmt_at(*end)
        );
        let mut bal = Balance::default();
        post(
            tx,
            env,
            p,
            (&row, &mut bal),
            (LedgerKind::Rollover, unused, 0),
            Refs::default(),
            reason,
        )?;
        tx.mark_rollover(env, &key, Some(&row.grant_id))?;
    }
    Ok(())
}

/// Grants a pack (see [`Store::grant_credits`]).
pub fn grant(tx: &mut impl MeteringTx, cmd: &GrantCommand) -> StoreResult<GrantOutcome> {
    let (env, subject) = (cmd.env, cmd.owner.subject());
    tx.lock_subjects(env, &[&subject])?;
    if let Some(reference) = &cmd.external_ref {
        let first = tx.grants_by_ref(env, reference)?;
        if !first.is_empty() {
            let same = first
                .iter()
                .all(|g| g.subject == subject && g.pack_id.as_deref() == Some(&cmd.pack_id));
            if !same {
                return Err(StoreError::IdempotencyConflict);
            }
            let grants = first
                .into_iter()
                .map(|row| {
                    let balance = tx.balance(env, &row.grant_id)?;
                    Ok(Grant { row, balance })
                })
                .collect::<StoreResult<_>>()?;
            return Ok(GrantOutcome {
                created: false,
                grants,
            });
        }
    }
    let mut p = Posting::new(&cmd.ids, cmd.now);
    let mut grants = Vec::with_capacity(cmd.items.len());
    for item in &cmd.items {
        let row = GrantRow {
            grant_id: item.grant_id.clone(),
            subject: subject.clone(),
            pack_id: Some(cmd.pack_id.clone()),
            item_id: item.item_id.clone(),
            unit: item.unit.clone(),
            quantity: item.quantity,
            priority: cmd.priority,
            rules: item.rules.clone(),
            expires_at: cmd.expires_at,
            source: cmd.source,
            external_ref: cmd.external_ref.clone(),
            note: cmd.note.clone(),
            created_at: cmd.now,
        };
        tx.insert_grant(env, &row)?;
        if let Some(at) = cmd.expires_at {
            tx.queue_expiry(env, &row, at)?;
        }
        let until = cmd.expires_at.map_or_else(
            || "never expires".to_string(),
            |e| format!("expires {}", fmt_at(e)),
        );
        let mut reason = format!(
            "granted {} {} ({} of pack {} × {}, {}; {until})",
            item.quantity,
            item.unit,
            item.item_id,
            cmd.pack_id,
            cmd.packs,
            cmd.source.as_str()
        );
        if let Some(note) = &cmd.note {
            reason.push_str(": ");
            reason.push_str(note);
        }
        let mut balance = Balance::default();
        post(
            tx,
            env,
            &mut p,
            (&row, &mut balance),
            (LedgerKind::Grant, item.quantity, 0),
            Refs::default(),
            reason,
        )?;
        grants.push(Grant { row, balance });
    }
    Ok(GrantOutcome {
        created: true,
        grants,
    })
}

/// Revokes what is left unheld of a grant or of every grant of a reference; a part held now is
/// revoked when it returns (see [`Store::revoke_credits`]).
pub fn revoke(tx: &mut impl MeteringTx, cmd: &RevokeCommand) -> StoreResult<RevokeOutcome> {
    let env = cmd.env;
    let rows = match &cmd.target {
        RevokeTarget::Grant(id) => tx.grant(env, id)?.into_iter().collect(),
        RevokeTarget::ExternalRef(r) => tx.grants_by_ref(env, r)?,
    };
    if rows.is_empty() {
        return Err(StoreError::NotFound);
    }
    let mut subjects: Vec<&str> = rows.iter().map(|g| g.subject.as_str()).collect();
    subjects.sort_unstable();
    subjects.dedup();
    tx.lock_subjects(env, &subjects)?;
    let mut p = Posting::new(&cmd.ids, cmd.now);
    let mut revoked = Vec::with_capacity(rows.len());
    for g in &rows {
        let mut bal = tx.balance(env, &g.grant_id)?;
        let unheld = bal.remaining - bal.held;
        if !tx.is_revoked(env, &g.grant_id)? {
            tx.revoke_mark(env, &g.grant_id, cmd.now)?;
        }
        let reason = match &cmd.reason {
            Some(why) => format!("revoked {unheld}: {why}"),
            None => format!("revoked {unheld}"),
        };
        post(
            tx,
            env,
            &mut p,
            (g, &mut bal),
            (LedgerKind::Revoke, unheld, 0),
            Refs::default(),
            reason,
        )?;
        revoked.push((g.grant_id.clone(), unheld));
    }
    Ok(RevokeOutcome { revoked })
}

/// The unexpired grants of `subjects` with something left, soonest expiry first, with their
/// ledger balances (a hold of an overdue reservation shows until its `release` is written, by
/// the sweeper or the user's next write; decisions count it as returned at once).
fn standing_grants(
    tx: &mut impl MeteringTx,
    env: EnvId,
    subjects: &[&str],
    now: Timestamp,
) -> StoreResult<Vec<Grant>> {
    let mut out = Vec::new();
    for g in tx.live_grants(env, subjects)? {
        if !expired(&g.row, now) {
            out.push(g);
        }
    }
    out.sort_by(|a, b| {
        let key = |g: &Grant| {
            (
                g.row.expires_at.is_none(),
                g.row.expires_at,
                g.row.created_at,
                g.row.grant_id.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    Ok(out)
}

/// Sums grants per pack item (rollover grants per limit), sorted by pack then item.
fn per_pack(grants: &[Grant]) -> Vec<PackBalance> {
    let mut packs: Vec<PackBalance> = Vec::new();
    for g in grants {
        let (row, bal) = (&g.row, g.balance);
        let available = bal.remaining.saturating_sub(bal.held);
        match packs
            .iter_mut()
            .find(|p| p.pack_id == row.pack_id && p.item_id == row.item_id && p.unit == row.unit)
        {
            Some(p) => {
                p.available = p.available.saturating_add(available);
                p.held = p.held.saturating_add(bal.held);
            }
            None => packs.push(PackBalance {
                pack_id: row.pack_id.clone(),
                item_id: row.item_id.clone(),
                unit: row.unit.clone(),
                available,
                held: bal.held,
            }),
        }
    }
    packs.sort_by(|a, b| (&a.pack_id, &a.item_id).cmp(&(&b.pack_id, &b.item_id)));
    packs
}

/// The credit subjects of an owner: a user's own and their account's; an account's own.
fn owner_subjects(tx: &mut impl MeteringTx, env: EnvId, owner: &Owner) -> StoreResult<Vec<String>> {
    Ok(match owner {
        Owner::User(u) => {
            let user = alias_of(tx, env, u)?;
            let user = user.as_ref().unwrap_or(u);
            let subjects = subjects_of(tx, env, user.as_str())?;
            credit_subjects(&subjects)
                .into_iter()
                .map(str::to_string)
                .collect()
        }
        Owner::Account(_) => vec![owner.subject()],
    })
}

/// The per-pack balances a usage answer shows for a user.
pub(super) fn pack_balances(
    tx: &mut impl MeteringTx,
    env: EnvId,
    subjects: &Subjects,
    now: Timestamp,
) -> StoreResult<Vec<PackBalance>> {
    let grants = standing_grants(tx, env, &credit_subjects(subjects), now)?;
    Ok(per_pack(&grants))
}

/// `GET /v1/users/{id}/credits` and `GET /v1/accounts/{id}/credits`.
pub fn credits(tx: &mut impl MeteringTx, q: &CreditsQuery) -> StoreResult<CreditsOutcome> {
    let subjects = owner_subjects(tx, q.env, &q.owner)?;
    let refs: Vec<&str> = subjects.iter().map(String::as_str).collect();
    let grants = standing_grants(tx, q.env, &refs, q.now)?;
    Ok(CreditsOutcome {
        packs: per_pack(&grants),
        grants,
    })
}

/// `GET /v1/users/{id}/credits/ledger`: a user's grants' entries and those their requests
/// made on their account's grants; an account's grants' entries.
pub fn ledger(tx: &mut impl MeteringTx, q: &LedgerQuery) -> StoreResult<Vec<LedgerEntry>> {
    let subject = q.owner.subject();
    let user = match &q.owner {
        Owner::User(u) => Some(u.as_str()),
        Owner::Account(_) => None,
    };
    tx.ledger_page(q.env, (&subject, user), q.limit, q.before)
}

/// Expires what expired grants still have unheld, in every environment; returns how many.
pub(super) fn expire_grants(
    tx: &mut impl MeteringTx,
    real_now: Timestamp,
    ids: &IdSeed,
) -> StoreResult<usize> {
    let due = tx.expired_grants(real_now, GRANT_SWEEP_BATCH_MAX)?;
    let mut p = Posting::new(ids, real_now);
    let mut envs: Vec<EnvId> = due.iter().map(|(env, _, _)| *env).collect();
    envs.sort_unstable();
    envs.dedup();
    for env in envs {
        // Each environment's subjects in one call (see `lock_for_write`).
        let mut subjects: Vec<&str> = due
            .iter()
            .filter(|(e, _, _)| *e == env)
            .map(|(_, _, s)| s.as_str())
            .collect();
        subjects.sort_unstable();
        subjects.dedup();
        tx.lock_subjects(env, &subjects)?;
    }
    for (env, grant_id, _) in &due {
        let Some(row) = tx.grant(*env, grant_id)? else {
            continue;
        };
        p.at = row.expires_at.unwrap_or(real_now);
        let balance = tx.balance(*env, grant_id)?;
        let mut g = Grant { row, balance };
        // Read again under the lock: another node (or the owner's request) may have expired
        // it meanwhile. A part held now expires when it comes back (`close_returned`).
        if g.balance.remaining > g.balance.held {
            expire_unheld(tx, *env, &mut p, &mut g)?;
        }
        tx.dequeue_expiry(*env, grant_id)?;
    }
    Ok(due.len())
}
