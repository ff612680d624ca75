//! The reservation lifecycle: reserve (decide and hold), commit (charge what was used), release,
//! extend, expire, reading one reservation, and the sweep of reservations past their expiry
//! (which also purges old idempotency records and expires due credit grants).

use super::*;

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
        limits.push(render_opened(c, after, now));
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
pub(super) fn expire(tx: &mut impl MeteringTx, env: EnvId, r: &ReservationRow) -> StoreResult<()> {
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
    // The held counters' states (not copies of the counters: `held` keeps them, in order).
    let mut loads = Vec::with_capacity(held.len());
    for (c, _) in &held {
        loads.push(load(tx, env, c, r.created_at, now)?);
    }
    // A reservation the plan paid nothing of (no plan, or no limit and only credits) has no
    // room on the plan for more.
    let plan_pays = r.plan_id.is_some() && !(holds.is_empty() && drawn == r.quantity);
    let fit = credits::plan_room(
        held.iter().map(|(c, _)| c).zip(&loads),
        split.extra,
        plan_pays,
    );
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
    for ((c, own), l) in held.iter().zip(&loads) {
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
    let row = EventRow {
        event_id,
        quantity,
        metadata: &metadata,
        cost_micros: cmd
            .cost_micros
            .or_else(|| cmd.plans.cost_of(&r.event, &metadata, quantity)),
        overage: settlement.overage,
        credits_used,
        response: cmd.response.as_ref(),
        ..reservation_event(&r, "committed")
    };
    tx.insert_event(env, &row)?;
    billers::forward_usage(tx, env, &row)?;
    quotas_in_force(tx, env, (&r.user_id, &cmd.plans), &mut held, now)?;
    let limits = held
        .iter()
        .zip(loads)
        .zip(&settlement.charged)
        .map(|(((c, own), l), &units)| {
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
