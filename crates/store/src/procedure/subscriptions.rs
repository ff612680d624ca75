//! Subscription and account writes: upsert and cancel a subscription (carrying usage into
//! the windows a change moves a subject to), add and remove an account's members, and read
//! an account (its members, plan and seats).

use super::*;

pub fn upsert_subscription(
    tx: &mut impl MeteringTx,
    env: EnvId,
    (owner, plans): (&Owner, &PlanDocument),
    request: &UpsertRequest,
    new_id: &str,
    now: Timestamp,
) -> StoreResult<UpsertOutcome> {
    check_seats(owner, request.seats)?;
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

/// Seats cap an account's members, so only an account's subscription has them, and a cap of
/// 0 would lock every member out of joining (a plan refuses `seats: 0` for the same reason).
/// Checked here, not only in the API, because a biller's webhook upserts through here too.
fn check_seats(owner: &Owner, seats: Option<Option<u32>>) -> StoreResult<()> {
    let refuse = |message: &str| {
        Err(StoreError::Invalid {
            field: "seats".into(),
            message: message.into(),
        })
    };
    match (owner, seats) {
        (Owner::User(_), Some(Some(_))) => {
            refuse("seats cap the members of an account; a user's subscription has none")
        }
        (_, Some(Some(0))) => refuse("must be from 1 to 4294967295"),
        _ => Ok(()),
    }
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
/// plan), and the subscription that put it there; its seat cap is [`subscription::Resolved::seats`]
/// (the active subscription's `seats`, else the plan's).
fn account_plan<'p>(
    plans: &'p PlanDocument,
    sub: Option<&'p Subscription>,
    now: Timestamp,
) -> Option<subscription::Resolved<'p>> {
    subscription::resolve(plans, sub, "", now)
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
    // `>=`, not `==`: seats lowered below the members there are remove nobody, and refuse
    // every add until enough members have left.
    if let Some(max) = account_plan(plans, sub.as_ref(), now).and_then(|r| r.seats()) {
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
    let resolved = account_plan(plans, sub.as_ref(), now);
    let plan_id = resolved.map(|r| r.plan.id.clone());
    let seats_max = resolved.and_then(|r| r.seats());
    Ok(AccountView {
        members,
        plan_id,
        seats_max,
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
    cancel_from(tx, (env, owner, plans), at, (reason, "api"), now)
}

/// Cancels a subject's subscription, recording `source` (`api`, `stripe`, `polar`) in its
/// history; `NotFound` without one, `AlreadyCanceled` after its end.
pub(crate) fn cancel_from(
    tx: &mut impl MeteringTx,
    (env, owner, plans): (EnvId, &Owner, &PlanDocument),
    at: CancelAt,
    (reason, source): (Option<String>, &str),
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
        subscription::cancel(&current, billing, at, reason, source, now).map_err(|e| match e {
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
